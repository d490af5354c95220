# escalation — `make run` and `make test` are the two commands a newcomer needs.
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml | sha1sum | cut -c1-12)
# Where Debian installs PostgreSQL's server binaries; a fresh machine may lack them.
PG_INITDB := $(firstword $(wildcard /usr/lib/postgresql/*/bin/initdb))
PYTEST_ARGS ?=

.PHONY: help run demo test bench chaos lint typecheck check-proto proto proto-baseline schema fmt clean system-deps venv lock

help: ## show this help
	@awk 'BEGIN {FS = ":.*## "} /^[a-zA-Z_-]+:.*## / {printf "  \033[1m%-12s\033[0m %s\n", $$1, $$2}' $(MAKEFILE_LIST)

$(STAMP): pyproject.toml
	@echo "==> creating $(VENV) and installing dependencies"
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@$(BIN)/python -m pip install --disable-pip-version-check -q --upgrade pip
	@$(BIN)/python -m pip install --disable-pip-version-check -q -e '.[dev]'
	@rm -f $(VENV)/.installed-* && touch $@

venv: $(STAMP) ## create the virtualenv and install dependencies

system-deps: ## install Debian's postgresql and prometheus (promtool) when their binaries are missing
	@if [ -z "$(PG_INITDB)" ] && [ -z "$$ESCALATION_PG_BIN" ] && ! command -v initdb >/dev/null; then \
	  echo "==> PostgreSQL server binaries are missing: installing Debian's postgresql"; \
	  if [ "$$(id -u)" = 0 ]; then SUDO=; elif command -v sudo >/dev/null; then SUDO=sudo; else \
	    echo "error: run as root or install the 'postgresql' package yourself" >&2; exit 1; fi; \
	  if [ ! -e /etc/postgresql-common/createcluster.conf ]; then \
	    $$SUDO mkdir -p /etc/postgresql-common && \
	    echo "create_main_cluster = false" | $$SUDO tee /etc/postgresql-common/createcluster.conf >/dev/null; fi; \
	  $$SUDO apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq -o Dpkg::Options::=--force-confold postgresql >/dev/null; \
	fi
	@# The alert rule, scrape config and dashboard tests run promtool and a real Prometheus (no recommends:
	@# they would add the node exporter).
	@if ! command -v promtool >/dev/null || ! command -v prometheus >/dev/null; then \
	  echo "==> promtool/prometheus are missing: installing Debian's prometheus"; \
	  if [ "$$(id -u)" = 0 ]; then SUDO=; elif command -v sudo >/dev/null; then SUDO=sudo; else \
	    echo "error: run as root or install the 'prometheus' package yourself" >&2; exit 1; fi; \
	  $$SUDO apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq --no-install-recommends \
	    -o Dpkg::Options::=--force-confold prometheus >/dev/null; \
	fi

run: system-deps venv ## run everything locally (embedded PostgreSQL + broker), print how to call it
	@exec $(BIN)/escalation dev

demo: system-deps venv ## `make run` plus a platform agent opening sessions; prints how to open the workbench (docs/clients.md)
	@ESCALATION_DEV_OVERRIDE_REPLY_TIMEOUT_SECONDS=$${ESCALATION_DEV_OVERRIDE_REPLY_TIMEOUT_SECONDS:-60} \
	  ESCALATION_REMIND_BEFORE_SECONDS=$${ESCALATION_REMIND_BEFORE_SECONDS:-20} exec $(BIN)/escalation dev --demo

test: system-deps venv lint typecheck ## lint, type-check and run the whole test suite
	@echo "==> pytest"
	@$(BIN)/pytest $(PYTEST_ARGS); rc=$$?; \
	  if [ $$rc -eq 5 ]; then echo "pytest collected no tests" >&2; fi; exit $$rc

bench: system-deps venv ## measure the SPEC §5 targets on this machine (several minutes; --quick: BENCH_ARGS=--quick)
	@$(BIN)/python -m tests.bench $(BENCH_ARGS)

chaos: system-deps venv ## long failure runs: broker frozen 5 min, PostgreSQL restarted, workers and relays killed, 50,000-call wire fuzz
	@ESCALATION_TEST_BROKER_OUTAGE_SECONDS=300 ESCALATION_CHAOS_ROUNDS=$${ESCALATION_CHAOS_ROUNDS:-10} \
	  $(BIN)/pytest tests/e2e/test_workers_as_processes.py tests/chaos -p no:cacheprovider -s
	@# The wire fuzz with more calls than make test's 3,000 (a fresh random seed each run; it prints it on failure).
	@ESCALATION_TEST_FUZZ_CALLS=$${ESCALATION_TEST_FUZZ_CALLS:-50000} $(BIN)/pytest tests/integration/test_fuzz_all_methods.py \
	  -p no:cacheprovider -o timeout=1800

lint: venv ## ruff (lint + format check) and lint-imports (the layers import downwards only)
	@echo "==> ruff"
	@$(BIN)/ruff check escalation workers tests
	@$(BIN)/ruff format --check --quiet escalation workers tests
	@echo "==> lint-imports"
	@$(BIN)/lint-imports --no-cache

typecheck: venv ## mypy --strict on our code
	@echo "==> mypy --strict"
	@$(BIN)/mypy

fmt: venv ## format and auto-fix
	@$(BIN)/ruff format escalation workers tests
	@$(BIN)/ruff check --fix escalation workers tests

proto: venv ## regenerate escalation/v1 from proto/escalation/v1
	@$(BIN)/python -m escalation.devenv.protogen

check-proto: venv ## fail if the generated code drifted from the protos
	@$(BIN)/python -m escalation.devenv.protogen --check

schema: system-deps venv ## rewrite escalation/store/schema.sql from the migrations
	@$(BIN)/python -m escalation.devenv.schema

lock: venv ## rewrite deploy/requirements.lock (exact versions + hashes, what the image installs) from pyproject.toml
	@$(BIN)/uv pip compile pyproject.toml --quiet --generate-hashes --universal --python-version 3.11 \
	  --custom-compile-command "make lock" -o deploy/requirements.lock

clean: ## remove the virtualenv and caches (keeps .data/)
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache build *.egg-info

proto-baseline: venv ## at each release: record the protos as released, the baseline `buf breaking` checks against
	@$(BIN)/buf build proto --exclude-source-info -o proto/baseline.binpb
	@echo "wrote proto/baseline.binpb: commit it with the release"
