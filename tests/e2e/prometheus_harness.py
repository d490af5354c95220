"""promtool, a real Prometheus server, and a PromQL reader, for the tests of deploy/prometheus and deploy/grafana.

The binaries come from Debian's `prometheus` package, which `make system-deps` installs; without them
the tests fail (never skip) with that hint. PromQL is parsed by promql-parser (PyPI); the reader here only
walks its tree for the series selectors (metric name, label matchers, the function directly around them)
so the tests can check every name against a live /metrics.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import grpc
import promql_parser
import pytest
from prometheus_client.parser import text_string_to_metric_families

from escalation.devenv.ports import free_port
from tests.e2e.harness import Process, clean_env, started

REPO = Path(__file__).resolve().parents[2]
ALERTS = REPO / "deploy/prometheus/alerts.yml"
ALERTS_TEST = REPO / "deploy/prometheus/alerts_test.yml"
SCRAPE_CONFIG = REPO / "deploy/prometheus/prometheus.yml"
DASHBOARD = REPO / "deploy/grafana/escalation.json"

READY_TIMEOUT = 30.0
STOP_TIMEOUT = 10.0


def binary(name: str) -> str:
    """The path of promtool or prometheus; a missing one fails the test (``make test`` installs it)."""
    found = shutil.which(name)
    if found is None:
        pytest.fail(f"`{name}` is not installed: run `make system-deps` (it installs Debian's `prometheus`)")
    return found


def promtool(*args: str, stdin: str | None = None, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        (binary("promtool"), *args),
        input=stdin,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        cwd=REPO,
    )


# --- PromQL ----------------------------------------------------------------------------------------

# Grafana's interval variables only ever stand for a duration.
_GRAFANA_INTERVAL = re.compile(r"\$__(?:rate_interval|interval|range)\b|\$\{__(?:rate_interval|interval|range)\}")
COUNTER_FUNCTIONS = frozenset({"rate", "irate", "increase", "resets"})
# A counter may be read raw only to ask whether it exists.
_RAW_COUNTER_OK = frozenset({"absent", "absent_over_time", "present_over_time"})


@dataclass(frozen=True)
class Matcher:
    label: str
    op: str  # =, !=, =~, !~
    value: str


@dataclass(frozen=True)
class Selector:
    metric: str
    matchers: tuple[Matcher, ...] = ()
    within: str | None = None  # the function or aggregation directly around the selector


def grafana_to_promql(expr: str) -> str:
    return _GRAFANA_INTERVAL.sub("5m", expr)


# promql_parser.MatchOp is not hashable: keyed by its printed name.
_MATCH_OPS = {"MatchOp.Equal": "=", "MatchOp.NotEqual": "!=", "MatchOp.Re": "=~", "MatchOp.NotRe": "!~"}


def _selector(node: promql_parser.VectorSelector, within: str | None, expr: str) -> Selector:
    if node.matchers.or_matchers:
        raise ValueError(f"`or` inside a selector's braces is not used here: {expr!r}")
    matchers = tuple(Matcher(m.name, _MATCH_OPS[str(m.op)], m.value) for m in node.matchers.matchers)
    metric = node.name
    if metric is None:
        names = [m.value for m in matchers if m.label == "__name__" and m.op == "="]
        if len(names) != 1:
            raise ValueError(f"a selector without one exact metric name in {expr!r}")
        metric = names[0]
    return Selector(metric, tuple(m for m in matchers if m.label != "__name__"), within)


def _walk(node: Any, within: str | None, expr: str, found: list[Selector]) -> None:
    """Appends the selectors under ``node``, left to right; ``within`` is the call or aggregation around it."""
    if isinstance(node, promql_parser.VectorSelector):
        found.append(_selector(node, within, expr))
    elif isinstance(node, promql_parser.MatrixSelector):
        _walk(node.vector_selector, within, expr, found)
    elif isinstance(node, promql_parser.Call):
        for arg in node.args:
            _walk(arg, node.func.name, expr, found)
    elif isinstance(node, promql_parser.AggregateExpr):
        if node.param is not None:
            _walk(node.param, str(node.op), expr, found)
        _walk(node.expr, str(node.op), expr, found)
    elif isinstance(node, promql_parser.BinaryExpr):
        _walk(node.lhs, within, expr, found)
        _walk(node.rhs, within, expr, found)
    elif isinstance(node, promql_parser.ParenExpr):
        _walk(node.expr, None, expr, found)  # "(a)" is not an argument of the function around it
    elif isinstance(node, (promql_parser.UnaryExpr, promql_parser.SubqueryExpr)):
        _walk(node.expr, within, expr, found)


def selectors(expr: str) -> list[Selector]:
    """Every series selector in ``expr`` (Grafana interval variables allowed), left to right.

    Parsed by promql-parser (the Rust parser of GreptimeDB, following Prometheus's grammar); a syntax
    error or an unknown function raises ValueError naming it.
    """
    found: list[Selector] = []
    _walk(promql_parser.parse(grafana_to_promql(expr)), None, expr, found)
    return found


def dashboard_exprs(dashboard: Mapping[str, Any]) -> list[tuple[str, str]]:
    """(panel title, expr) for every query of every panel, rows' nested panels included."""
    found: list[tuple[str, str]] = []

    def walk(panels: Sequence[Mapping[str, Any]]) -> None:
        for panel in panels:
            found.extend((panel.get("title", "?"), t["expr"]) for t in panel.get("targets", []) if "expr" in t)
            walk(panel.get("panels", []))

    walk(dashboard.get("panels", []))
    return found


def unit_test_series(text: str) -> list[Selector]:
    """The metric and labels of every ``series:`` of a promtool unit-test file."""
    return [s for raw in re.findall(r"^\s*- series: '([^']*)'", text, re.M) for s in selectors(raw)]


# --- /metrics ---------------------------------------------------------------------------------------

# Labels Prometheus adds to every scraped series: never in /metrics itself.
TARGET_LABELS = frozenset({"job", "instance"})
STATUS_CODES = frozenset(code.name for code in grpc.StatusCode)


@dataclass
class Sample:
    kind: str  # counter, gauge, histogram, summary, …
    role: str  # "" for the value itself, else bucket, count, sum, created, total
    labels: dict[str, set[str]] = field(default_factory=dict)


def samples(*expositions: str) -> dict[str, Sample]:
    """Every sample name in the given /metrics texts, with its family's type and the label values seen."""
    found: dict[str, Sample] = {}
    for text in expositions:
        for family in text_string_to_metric_families(text):
            for s in family.samples:
                suffix = s.name.removeprefix(family.name).lstrip("_")
                sample = found.setdefault(s.name, Sample(family.type, suffix))
                for label, value in s.labels.items():
                    sample.labels.setdefault(label, set()).add(value)
    return found


def _counts_up(sample: Sample) -> bool:
    return (sample.kind == "counter" and sample.role == "total") or (
        sample.kind in ("histogram", "summary") and sample.role in ("bucket", "count", "sum")
    )


def problems(
    where: str, selector: Selector, scraped: Mapping[str, Sample], *, values: bool = True, usage: bool = True
) -> list[str]:
    """What is wrong with ``selector`` given a live scrape: unknown metric, label or value, or a misused type.

    ``values``: equality matchers must name a value seen in the scrape (the test drove the traffic that
    makes it appear). Regex matchers on grpc_code must list real status codes. ``usage``: counters only
    through rate()/increase(), gauges never (off for a bare series, as in a unit test's input).
    """
    sample = scraped.get(selector.metric)
    if sample is None:
        return [f"{where}: {selector.metric} is not in /metrics"]
    found: list[str] = []
    if sample.role == "created":
        found.append(f"{where}: {selector.metric} is a _created timestamp, not a value")
    if usage and selector.within in COUNTER_FUNCTIONS and not _counts_up(sample):
        found.append(f"{where}: {selector.within}() of {selector.metric}, a {sample.kind}")
    if usage and _counts_up(sample) and selector.within not in COUNTER_FUNCTIONS | _RAW_COUNTER_OK:
        found.append(f"{where}: {selector.metric} ({sample.kind}) read raw, not through rate()/increase()")
    for m in selector.matchers:
        if m.label in TARGET_LABELS:
            continue
        if m.label not in sample.labels:
            found.append(f"{where}: {selector.metric} has no label {m.label!r} (it has {sorted(sample.labels)})")
        elif m.label == "grpc_code":
            unknown = set(m.value.split("|")) - STATUS_CODES
            if unknown:
                found.append(f"{where}: grpc_code {sorted(unknown)} are not gRPC status codes")
        elif values and m.op == "=" and m.value not in sample.labels[m.label]:
            found.append(
                f"{where}: {selector.metric}{{{m.label}={m.value!r}}} not seen (saw {sorted(sample.labels[m.label])})"
            )
    return found


def fetch(url: str, timeout: float = 5) -> str:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(url, timeout=timeout) as response:
        body: bytes = response.read()
    return body.decode()


# --- a Prometheus server ------------------------------------------------------------------------------


@dataclass
class Prometheus:
    url: str
    process: Process

    def log(self) -> str:
        return self.process.output()

    def api(self, path: str, **params: str) -> Any:
        """The ``data`` of an HTTP API answer; an error answer raises AssertionError with Prometheus's message."""
        url = f"{self.url}/api/v1/{path}"
        if params:
            url += "?" + urllib.parse.urlencode(params)
        try:
            answer = json.loads(fetch(url))
        except urllib.error.HTTPError as exc:
            answer = json.loads(exc.read().decode() or "{}")
        assert answer.get("status") == "success", f"{path} {params}: {answer}"
        return answer["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        data = self.api("query", query=expr)
        result: list[dict[str, Any]] = data["result"] if data["resultType"] == "vector" else []
        return result

    def rules(self) -> list[dict[str, Any]]:
        return [rule for group in self.api("rules")["groups"] for rule in group["rules"]]


def write_config(
    path: Path, scrape: Mapping[str, Sequence[str]], rule_files: Sequence[Path], interval: str = "1s"
) -> None:
    # JSON is YAML: no YAML library needed.
    config = {
        "global": {"scrape_interval": interval, "scrape_timeout": interval, "evaluation_interval": interval},
        "rule_files": [str(p) for p in rule_files],
        "scrape_configs": [
            {"job_name": job, "static_configs": [{"targets": list(targets)}]} for job, targets in scrape.items()
        ],
    }
    path.write_text(json.dumps(config, indent=2))


@contextmanager
def prometheus(
    workdir: Path, scrape: Mapping[str, Sequence[str]] | None = None, rule_files: Sequence[Path] = ()
) -> Iterator[Prometheus]:
    """A Prometheus on a free port, data in ``workdir``, scraping and evaluating every second; stopped on exit."""
    workdir.mkdir(parents=True, exist_ok=True)
    config = workdir / "prometheus.json"
    write_config(config, scrape or {}, rule_files)
    address = f"127.0.0.1:{free_port()}"
    argv = (
        binary("prometheus"),
        f"--config.file={config}",
        f"--storage.tsdb.path={workdir / 'data'}",
        f"--web.listen-address={address}",
        "--log.level=warn",
    )
    with started(argv, clean_env(), workdir, "prometheus", stop_timeout=STOP_TIMEOUT) as process:
        server = Prometheus(f"http://{address}", process)
        _wait_ready(server)
        yield server


def _wait_ready(server: Prometheus) -> None:
    deadline = time.monotonic() + READY_TIMEOUT
    while True:
        if not server.process.alive:
            pytest.fail(f"prometheus exited with status {server.process.proc.returncode}\n{server.log()}")
        try:
            fetch(f"{server.url}/-/ready", timeout=1)
        except OSError:
            pass
        else:
            return
        if time.monotonic() >= deadline:
            pytest.fail(f"prometheus not ready within {READY_TIMEOUT:.0f} s\n{server.log()}")
        time.sleep(0.1)


T = TypeVar("T")


def wait_until(check: Callable[[], T], within: float, what: str, explain: Callable[[], str] | None = None) -> T:
    """Calls ``check()`` until it returns something truthy (returned); fails with ``explain()`` after ``within``."""
    deadline = time.monotonic() + within
    while not (result := check()):
        if time.monotonic() >= deadline:
            pytest.fail(f"{what}: not within {within:.0f} s\n{explain() if explain else ''}")
        time.sleep(0.2)
    return result
