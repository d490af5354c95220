"""deploy/prometheus and deploy/grafana checked by promtool, a real Prometheus and live /metrics (SPEC §3).

promtool and prometheus come from Debian's `prometheus` package (`make system-deps`); when they are
missing these tests fail, they never skip. Every metric, label and label value the dashboard and the alert
rules name must be in the /metrics of the running processes after one session was answered and
escalated and another timed out; each /metrics passes `promtool check metrics`; a real Prometheus
scraping `escalation serve` reads back the sessions the test opened and evaluates every rule and panel.
"""

from __future__ import annotations

import asyncio
import functools
import json
import re
import uuid
from pathlib import Path
from typing import Any

import grpc
import pytest

from escalation.v1 import common_pb2, merchant_pb2, merchant_pb2_grpc, platform_pb2, platform_pb2_grpc
from tests.e2e import replicas
from tests.e2e.prometheus_harness import (
    ALERTS,
    ALERTS_TEST,
    DASHBOARD,
    SCRAPE_CONFIG,
    Matcher,
    Selector,
    dashboard_exprs,
    fetch,
    grafana_to_promql,
    problems,
    prometheus,
    promtool,
    samples,
    selectors,
    unit_test_series,
    wait_until,
)
from tests.e2e.workers_harness import KafkaTarget, metrics, wait_for, wait_started, worker
from tests.integration.grpc_harness import bearer
from tests.integration.sessions_harness import PLATFORM, make_shop, open_request, text

pytestmark = pytest.mark.e2e

MAIN = bearer("merchant", "shop-a-main", "shop-a")
# The unanswered session times out after this; the answered one is replied to well within it.
REPLY_TIMEOUT = "3"
FAST = {
    "ESCALATION_REMIND_BEFORE_SECONDS": "1",
    "ESCALATION_DEADLINE_POLL_SECONDS": "0.5",
    "ESCALATION_OUTBOX_POLL_SECONDS": "0.5",
    "ESCALATION_DEV_OVERRIDE_REPLY_TIMEOUT_SECONDS": REPLY_TIMEOUT,
}
# The five alerts, the two that watch for a missing worker (without which two of them are mute),
# parked outbox rows (issue 9 §5) and the gRPC certificate's expiry (issue 11).
ALERT_NAMES = {
    "EscalationOutboxParked",
    "EscalationOutboxBacklogAge",
    "EscalationDeadlineLatenessHigh",
    "EscalationTimeoutShareHigh",
    "EscalationGrpcServerErrors",
    "EscalationNoMerchantStreams",
    "EscalationOutboxRelayAbsent",
    "EscalationDeadlineWorkerAbsent",
    "EscalationTlsCertificateExpiresSoon",
}


def _dashboard() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return loaded


# --- promtool on the files ----------------------------------------------------------------------------


def test_alert_rules_pass_promtool_check_rules() -> None:
    result = promtool("check", "rules", str(ALERTS))
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(ALERT_NAMES) + 1} rules found" in result.stdout, result.stdout


def test_alert_rule_unit_tests_pass_promtool_test_rules() -> None:
    result = promtool("test", "rules", str(ALERTS_TEST))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout, result.stdout


def test_every_alert_has_a_unit_test_where_it_fires_and_one_where_it_does_not() -> None:
    content = ALERTS_TEST.read_text()
    cases = re.findall(r"^\s+alertname: (\w+)\n\s+exp_alerts:(.*)$", content, re.M)
    assert len(cases) == content.count("alertname:"), "each alertname must be followed by its exp_alerts"
    fires = {name for name, rest in cases if rest.strip() != "[]"}
    stays_quiet = {name for name, rest in cases if rest.strip() == "[]"}
    assert fires == ALERT_NAMES, sorted(ALERT_NAMES ^ fires)
    assert stays_quiet == ALERT_NAMES, sorted(ALERT_NAMES ^ stays_quiet)


def test_scrape_config_passes_promtool_check_config_and_scrapes_serve_and_every_worker() -> None:
    result = promtool("check", "config", str(SCRAPE_CONFIG))
    assert result.returncode == 0, result.stdout + result.stderr
    jobs = re.findall(r"^\s+- job_name: (\S+)$", SCRAPE_CONFIG.read_text(), re.M)
    assert jobs == [
        "escalation-serve",
        "escalation-worker-deadlines",
        "escalation-worker-outbox",
        "escalation-worker-warnings",
    ]
    # The "…Absent" alerts name these jobs.
    assert all(f'job="{job}"' in ALERTS.read_text() for job in jobs[1:3])


# --- the PromQL reader ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("expr", "expected"),
    [
        (
            'histogram_quantile(0.99, sum by (le) (rate(a_seconds_bucket{x="1", y=~"b|c"}[5m])))',
            [Selector("a_seconds_bucket", (Matcher("x", "=", "1"), Matcher("y", "=~", "b|c")), "rate")],
        ),
        (
            "sum(rate(a_total[$__rate_interval])) by (job) / on (job) group_left (instance) max(b) > bool 0.5",
            [Selector("a_total", (), "rate"), Selector("b", (), "max")],
        ),
        ("a == 0 and b offset 1h30m unless ignoring(x) c", [Selector("a"), Selector("b"), Selector("c")]),
        ('{__name__="a", l!="v"}', [Selector("a", (Matcher("l", "!=", "v"),))]),
        ('label_replace(a, "dst", "$1", "src", "(.*)") * inf', [Selector("a", (), "label_replace")]),
        (
            'count_values("version", a) or absent(b{job="x"})',
            [Selector("a", (), "count_values"), Selector("b", (Matcher("job", "=", "x"),), "absent")],
        ),
        # `@` binds to a selector or subquery only: Prometheus refuses "sum(…) @ end()".
        ("sum without (instance) (deriv(a[5m:1m] @ end()))", [Selector("a", (), "deriv")]),
        ("60 * 1e3 - (2)", []),
    ],
)
def test_selectors_finds_each_metric_its_matchers_and_the_function_around_it(
    expr: str, expected: list[Selector]
) -> None:
    assert selectors(expr) == expected


def test_selectors_refuses_an_unknown_function() -> None:
    with pytest.raises(ValueError, match="ratee"):
        selectors("sum(ratee(a_total[5m]))")


# Each one is refused by `promtool check rules` too.
@pytest.mark.parametrize(
    ("expr", "reason"),
    [
        ("sum(a) @ end()", "@ modifier"),
        ("rate(a)", "expected type matrix"),
        ("a{x=1}", "inside braces"),
        ("sum by (le (a)", "parenthesis"),
        ("a offset", "expected duration"),
    ],
)
def test_selectors_refuses_what_prometheus_refuses(expr: str, reason: str) -> None:
    with pytest.raises(ValueError, match=reason):
        selectors(expr)


# --- the dashboard --------------------------------------------------------------------------------------


def test_dashboard_is_grafana_json_on_a_prometheus_datasource_variable() -> None:
    dashboard = _dashboard()
    assert 36 <= dashboard["schemaVersion"] <= 41
    assert dashboard["uid"]
    assert dashboard["title"]
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    for panel in dashboard["panels"]:
        assert {"h", "w", "x", "y"} <= panel["gridPos"].keys(), panel["title"]
        assert panel["gridPos"]["x"] + panel["gridPos"]["w"] <= 24, panel["title"]
        if panel["type"] == "row":
            continue
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert target["datasource"] == panel["datasource"], panel["title"]
            assert target["expr"].strip(), panel["title"]
        ref_ids = [t["refId"] for t in panel["targets"]]
        assert len(ref_ids) == len(set(ref_ids)), panel["title"]


@pytest.mark.parametrize(
    ("title", "metric"),
    [
        ("Sessions open", "escalation_sessions_open"),
        ("Sessions opened by category (/min)", "escalation_sessions_opened_total"),
        ("Sessions ended by reason (/min)", "escalation_sessions_closed_total"),
        ("First reply (quantiles)", "escalation_first_reply_seconds_bucket"),
        ("Timeout share", "escalation_sessions_closed_total"),
        ("Outbox lag", "escalation_outbox_pending"),
        ("Outbox lag", "escalation_outbox_oldest_age_seconds"),
        ("Outbox lag", "escalation_outbox_parked"),
        ("Deadline lateness (quantiles)", "escalation_deadline_lateness_seconds_bucket"),
        ("Merchant streams connected", "escalation_merchant_streams_connected"),
        ("gRPC server error rate", "grpc_server_handled_total"),
    ],
)
def test_dashboard_has_the_panel(title: str, metric: str) -> None:
    used = {s.metric for panel, expr in dashboard_exprs(_dashboard()) if panel == title for s in selectors(expr)}
    assert metric in used, f"panel {title!r} does not read {metric}: {sorted(used)}"


# --- the rules as a real Prometheus loads them ------------------------------------------------------


@pytest.fixture(scope="module")
def loaded_rules(tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, Any]]:
    """alerts.yml as Prometheus parsed it (/api/v1/rules), once every rule has been evaluated."""
    with prometheus(tmp_path_factory.mktemp("rules"), rule_files=[ALERTS]) as server:

        def evaluated() -> list[dict[str, Any]]:
            rules = server.rules()
            done = rules and all(not r["lastEvaluation"].startswith("0001-") for r in rules)
            return rules if done else []

        return wait_until(evaluated, 20, "every rule evaluated once", server.log)


def test_every_alert_loads_and_carries_severity_summary_description_and_runbook(
    loaded_rules: list[dict[str, Any]],
) -> None:
    assert {r["name"] for r in loaded_rules} == ALERT_NAMES
    for rule in loaded_rules:
        assert rule["type"] == "alerting", rule["name"]
        assert rule["health"] == "ok", rule
        assert rule["labels"].get("severity") in ("warning", "critical"), rule["name"]
        assert {"summary", "description", "runbook"} <= rule["annotations"].keys(), rule["name"]
        assert rule["duration"] >= 300, f"{rule['name']}: `for` under 5 m pages on blips"


# --- live /metrics --------------------------------------------------------------------------------------


def _refund_request() -> platform_pb2.OpenSessionRequest:
    request = open_request()
    request.category = common_pb2.CATEGORY_REFUND
    return request


async def _answer_escalate_and_let_one_time_out(grpc_addr: str) -> None:
    """One OpenSession + Reply + CloseSession(ESCALATED), and one session left to time out."""
    async with grpc.aio.insecure_channel(grpc_addr) as channel:
        await make_shop(channel)
        platform = platform_pb2_grpc.PlatformServiceStub(channel)
        merchant = merchant_pb2_grpc.MerchantServiceStub(channel)
        session = (await platform.OpenSession(_refund_request(), metadata=PLATFORM)).session
        await merchant.Reply(
            merchant_pb2.ReplyRequest(session_id=session.session_id, content=text("Yes, it ships today.")),
            metadata=MAIN,
        )
        await platform.CloseSession(
            platform_pb2.CloseSessionRequest(
                session_id=session.session_id, outcome=platform_pb2.CloseSessionRequest.OUTCOME_ESCALATED
            ),
            metadata=PLATFORM,
        )
        await platform.OpenSession(open_request(), metadata=PLATFORM)


async def test_every_metric_the_dashboard_and_alerts_read_is_in_live_metrics_that_pass_promtool(
    database_url: str, kafka_bootstrap: str, tmp_path: Path, loaded_rules: list[dict[str, Any]]
) -> None:
    kafka = KafkaTarget(kafka_bootstrap, prefix=f"obs-{uuid.uuid4().hex[:10]}.")
    with (
        replicas.serving(database_url, tmp_path / "serve", count=1, **FAST) as (serve,),
        worker("deadlines", database_url, tmp_path, "deadlines", env=FAST) as deadlines,
        worker("outbox", database_url, tmp_path, "outbox", kafka=kafka, env=FAST) as outbox,
    ):
        await asyncio.gather(replicas.wait_serving(serve), wait_started(deadlines), wait_started(outbox))
        await _answer_escalate_and_let_one_time_out(serve.grpc_addr)

        async def timed_out_and_both_tickets_published() -> bool:
            return (await metrics(deadlines)).get("escalation_sessions_closed_total", 0) >= 1 and (
                await metrics(outbox)
            ).get("escalation_tickets_published_total", 0) >= 2

        async def explain() -> str:
            return f"{serve.output()}\n{deadlines.output()}\n{outbox.output()}"

        await wait_for(timed_out_and_both_tickets_published, 30, "a timeout and two tickets on Kafka", explain)
        addrs = {"serve": serve.metrics_addr, "deadlines": deadlines.metrics_addr, "outbox": outbox.metrics_addr}
        texts = {name: await asyncio.to_thread(fetch, f"http://{addr}/metrics") for name, addr in addrs.items()}

    for name, exposition in texts.items():
        result = await asyncio.to_thread(promtool, "check", "metrics", stdin=exposition)
        print(f"promtool check metrics ({name}): status {result.returncode}, output {result.stdout + result.stderr!r}")
        assert (result.returncode, result.stdout + result.stderr) == (0, ""), f"{name}: {result.stdout}{result.stderr}"

    scraped = samples(*texts.values())
    found = [
        problem
        for panel, expr in dashboard_exprs(_dashboard())
        for selector in selectors(expr)
        for problem in problems(f"dashboard panel {panel!r}", selector, scraped)
    ]
    found += [
        problem
        for rule in loaded_rules
        for selector in selectors(rule["query"])
        for problem in problems(f"alert {rule['name']}", selector, scraped)
    ]
    # The unit tests' made-up series must still be real metrics with real labels (values are made up).
    found += [
        problem
        for selector in unit_test_series(ALERTS_TEST.read_text())
        for problem in problems("alerts_test.yml", selector, scraped, values=False, usage=False)
    ]
    assert not found, "\n".join(found)


# --- a real Prometheus scraping serve ----------------------------------------------------------------


async def test_prometheus_scraping_serve_reads_back_the_sessions_the_test_opened_and_evaluates_everything(
    database_url: str, tmp_path: Path
) -> None:
    with (
        replicas.serving(database_url, tmp_path / "serve", count=1) as (serve,),
        prometheus(tmp_path / "prometheus", {"escalation-serve": [serve.metrics_addr]}, [ALERTS]) as server,
    ):
        await replicas.wait_serving(serve)

        def value(expr: str) -> float | None:
            result = server.query(expr)
            return float(result[0]["value"][1]) if result else None

        def read_back(opened: int) -> bool:
            return (
                value('sum(escalation_sessions_opened_total{category="REFUND"})') == opened
                and value('sum(grpc_server_handled_total{grpc_method="OpenSession",grpc_code="OK"})') == opened
            )

        def explain() -> str:
            return f"{server.api('targets')}\n{server.log()}\n{serve.output()}"

        opened = 0
        async with grpc.aio.insecure_channel(serve.grpc_addr) as channel:
            await make_shop(channel)
            platform = platform_pb2_grpc.PlatformServiceStub(channel)
            # Twice: a labelled series appears at its first increment, which rate()/increase() cannot see
            # (no earlier sample); the second batch is what the alerts' increase() can see.
            for batch in (1, 2):
                for _ in range(batch):
                    await platform.OpenSession(_refund_request(), metadata=PLATFORM)
                opened += batch

                await asyncio.to_thread(
                    wait_until, functools.partial(read_back, opened), 20, f"Prometheus reading {opened}", explain
                )
        targets = (await asyncio.to_thread(server.api, "targets"))["activeTargets"]
        assert [(t["labels"]["job"], t["health"]) for t in targets] == [("escalation-serve", "up")], targets

        def rules_evaluated_on_data() -> list[dict[str, Any]]:
            rules = server.rules()
            return rules if all(not r["lastEvaluation"].startswith("0001-") for r in rules) else []

        rules = await asyncio.to_thread(wait_until, rules_evaluated_on_data, 10, "rules evaluated", server.log)
        assert {r["name"] for r in rules} == ALERT_NAMES
        assert [(r["name"], r["health"], r.get("lastError", "")) for r in rules if r["health"] != "ok"] == []
        # Every panel's query is valid PromQL to Prometheus itself (Grafana's $__rate_interval as 5m).
        for panel, expr in dashboard_exprs(_dashboard()):
            try:
                await asyncio.to_thread(server.api, "query", query=grafana_to_promql(expr))
            except AssertionError as exc:
                pytest.fail(f"panel {panel!r}: {exc}")
        increase = await asyncio.to_thread(value, "sum(increase(escalation_sessions_opened_total[1m]))")
        assert increase is not None, "increase(), as the alerts use it, sees the second batch"
        assert increase > 0, "increase(), as the alerts use it, sees the second batch"
        assert serve.terminate() == 0, serve.output()
