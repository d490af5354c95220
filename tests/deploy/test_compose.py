"""deploy/compose.yaml checked offline (no docker binary here): parsed as YAML (merge keys resolved, as
compose does) and checked for what matters — secrets only by required interpolation (`${NAME:?…}`),
published ports on loopback, a gRPC balancer in front of both serve replicas, Grafana provisioned with
the dashboard, healthchecks everywhere, and every file it mounts present."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest

from tests.deploy.harness import DEPLOY, load

COMPOSE = DEPLOY / "compose.yaml"
NGINX = DEPLOY / "nginx" / "nginx.conf"
SECRETS = ("ESCALATION_JWT_SECRET", "POSTGRES_PASSWORD", "GRAFANA_ADMIN_PASSWORD")
_REF = re.compile(r"\$\{(?P<name>\w+)(?P<op>:\?|:-|\?|-)?(?P<arg>[^}]*)\}")


def _services() -> dict[str, dict[str, Any]]:
    services: dict[str, dict[str, Any]] = load(COMPOSE)["services"]
    return services


def _escalation_services() -> dict[str, dict[str, Any]]:
    return {name: s for name, s in _services().items() if s.get("image") == "escalation:dev"}


def interpolate(text: str, env: dict[str, str]) -> str:
    """Compose's ${…} substitution for the forms this file uses; ``:?`` unset or empty raises ValueError."""

    def one(match: re.Match[str]) -> str:
        value = env.get(match["name"], "")
        if match["op"] == ":?" and not value:
            raise ValueError(f"{match['name']}: {match['arg']}")
        if match["op"] == ":-" and not value:
            return match["arg"]
        return value

    return _REF.sub(one, text)


def test_it_refuses_to_start_without_each_secret() -> None:
    # Compose interpolates values, not comments.
    text = "\n".join(line for line in COMPOSE.read_text().splitlines() if not line.lstrip().startswith("#"))
    complete = {name: "s3cret-value-for-the-test-only-0123456789" for name in SECRETS}
    assert "s3cret-value" in interpolate(text, complete)
    for missing in SECRETS:
        with pytest.raises(ValueError, match=missing) as refused:
            interpolate(text, {k: v for k, v in complete.items() if k != missing})
        assert "deploy/.env" in str(refused.value)  # the message says where to put it
    assert set(SECRETS) <= {line.split("=")[0] for line in (DEPLOY / "env.example").read_text().splitlines()}


@pytest.mark.parametrize("name", sorted(_services()))
def test_secrets_reach_the_services_only_by_required_interpolation(name: str) -> None:
    environment = _services()[name].get("environment", {})
    for key, value in environment.items():
        refs = {m["name"]: m["op"] for m in _REF.finditer(str(value))}
        if re.search(r"SECRET|PASSWORD", key):
            assert refs, (key, value)
            assert all(op == ":?" for op in refs.values()), (key, value)
        if "://" in str(value) and "@" in str(value):  # a URL with credentials: the password is a ref
            assert refs.get("POSTGRES_PASSWORD") == ":?", (key, value)


@pytest.mark.parametrize("name", sorted(_services()))
def test_published_ports_bind_loopback_by_default(name: str) -> None:
    for port in _services()[name].get("ports", []):
        assert str(port).startswith("${ESCALATION_PUBLISH_ADDR:-127.0.0.1}:"), port


def test_the_serve_replicas_are_reached_through_the_grpc_balancer_only() -> None:
    services = _services()
    replicas = sorted(n for n, s in _escalation_services().items() if s.get("command") == ["serve"])
    assert replicas == ["serve-1", "serve-2"]
    for name in replicas:
        assert "ports" not in services[name], name
    balancer = services["grpc-lb"]
    assert balancer["ports"] == ["${ESCALATION_PUBLISH_ADDR:-127.0.0.1}:50051:50051"]
    assert "./nginx/nginx.conf:/etc/nginx/nginx.conf:ro" in balancer["volumes"]
    assert balancer["depends_on"] == {name: {"condition": "service_healthy"} for name in replicas}

    conf = NGINX.read_text()
    (upstream,) = re.findall(r"upstream (\w+) \{(.*?)\}", conf, flags=re.DOTALL)
    servers = re.findall(r"^\s*server (\S+)", upstream[1], flags=re.MULTILINE)
    assert servers == [f"{name}:50051" for name in replicas]
    assert f"grpc_pass grpc://{upstream[0]};" in conf
    assert re.search(r"listen 50051;\s*http2 on;", conf)
    # Streams send heartbeats every 15 s by default: far inside the read timeout.
    assert re.search(r"grpc_read_timeout (\d+)h;", conf)


def test_grafana_is_provisioned_with_the_dashboard_on_prometheus() -> None:
    grafana = _services()["grafana"]
    mounts = {v.split(":")[0]: v.split(":")[1] for v in grafana["volumes"]}
    assert mounts["./grafana/provisioning"] == "/etc/grafana/provisioning"
    provider = load(DEPLOY / "grafana" / "provisioning" / "dashboards" / "escalation.yaml")["providers"][0]
    dashboard_dir = provider["options"]["path"]
    assert mounts["./grafana/escalation.json"] == f"{dashboard_dir}/escalation.json"
    json.loads((DEPLOY / "grafana" / "escalation.json").read_text())
    (source,) = load(DEPLOY / "grafana" / "provisioning" / "datasources" / "prometheus.yaml")["datasources"]
    assert source["type"] == "prometheus"
    assert source["isDefault"] is True
    assert source["url"] == "http://prometheus:9090"
    assert "prometheus" in _services()


@pytest.mark.parametrize("name", sorted(_services()))
def test_every_long_running_service_has_a_healthcheck(name: str) -> None:
    service = _services()[name]
    healthcheck = service.get("healthcheck", {})
    if service.get("restart") == "no":  # one-shot (migrate)
        return
    assert healthcheck.get("test"), name
    assert not healthcheck.get("disable"), name
    if name in _escalation_services():
        assert any("/readyz" in part for part in healthcheck["test"]), healthcheck


@pytest.mark.parametrize("name", sorted(_escalation_services()))
def test_escalation_processes_start_after_migrations_and_run_locked_down(name: str) -> None:
    service = _services()[name]
    if service["command"] != ["migrate"]:
        assert service["depends_on"]["migrate"] == {"condition": "service_completed_successfully"}
    assert service["read_only"] is True
    assert service["cap_drop"] == ["ALL"]
    assert "no-new-privileges:true" in service["security_opt"]


def test_dependencies_on_health_name_services_that_have_a_healthcheck() -> None:
    services = _services()
    for name, service in services.items():
        for dependency, condition in (service.get("depends_on") or {}).items():
            assert dependency in services, (name, dependency)
            if condition["condition"] == "service_healthy":
                assert "test" in services[dependency].get("healthcheck", {}), (name, dependency)


def test_every_mounted_file_exists() -> None:
    for name, service in _services().items():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("."):
                assert (DEPLOY / source).exists(), (name, source)
    assert (DEPLOY / load(COMPOSE)["x-escalation"]["build"]["dockerfile"].removeprefix("deploy/")).exists()
