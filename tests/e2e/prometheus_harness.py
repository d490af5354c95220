"""promtool, a real Prometheus server, and a PromQL reader, for the tests of deploy/prometheus and deploy/grafana.

The binaries come from Debian's `prometheus` package, which `make system-deps` installs; without them
the tests fail (never skip) with that hint. The PromQL reader is small on purpose: it finds the series
selectors in an expression (metric name, label matchers, the function directly around them) so the tests
can check every name against a live /metrics; the syntax itself is checked by Prometheus.
"""

from __future__ import annotations

import json
import re
import shutil
import signal
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
import pytest
from prometheus_client.parser import text_string_to_metric_families

from escalation.devenv.ports import free_port

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

# Space-separated lists: one name a line would be 90 lines.
AGGREGATIONS = frozenset(
    "sum min max avg group stddev stdvar count count_values bottomk topk quantile limitk limit_ratio".split()  # noqa: SIM905
)
FUNCTIONS = frozenset(
    """abs absent absent_over_time acos acosh asin asinh atan atanh avg_over_time ceil changes clamp clamp_max
    clamp_min cos cosh count_over_time day_of_month day_of_week day_of_year days_in_month deg delta deriv end
    exp floor histogram_count histogram_fraction histogram_quantile histogram_stddev histogram_stdvar
    histogram_sum holt_winters hour idelta increase irate label_join label_replace last_over_time ln log10 log2
    mad_over_time max_over_time min_over_time minute month pi predict_linear present_over_time
    quantile_over_time rad rate resets round scalar sgn sin sinh sort sort_desc sqrt start stddev_over_time
    stdvar_over_time sum_over_time tan tanh time timestamp vector year""".split()  # noqa: SIM905
)
_GROUPING = frozenset({"by", "without", "on", "ignoring", "group_left", "group_right"})
_KEYWORDS = frozenset({"and", "or", "unless", "bool", "atan2", "offset", "inf", "nan"})
# Grafana's interval variables only ever stand for a duration.
_GRAFANA_INTERVAL = re.compile(r"\$__(?:rate_interval|interval|range)\b|\$\{__(?:rate_interval|interval|range)\}")
_TOKEN = re.compile(
    r"""\s+
    | (?P<string>"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*'|`[^`]*`)
    | (?P<range>\[[^\]]*\])
    | (?P<ident>[A-Za-z_:][A-Za-z0-9_:]*)
    | (?P<number>0[xX][0-9a-fA-F]+|(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?(?:(?:ms|[smhdwy])(?:\d+(?:ms|[smhdwy]))*)?)
    | (?P<op>=~|!~|!=|==|<=|>=|[-+*/%^<>=,(){}@])
    """,
    re.VERBOSE,
)
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


def _tokens(expr: str) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    pos = 0
    while pos < len(expr):
        m = _TOKEN.match(expr, pos)
        if m is None:
            raise ValueError(f"cannot read PromQL at {expr[pos : pos + 20]!r} in {expr!r}")
        if m.lastgroup is not None:
            out.append((m.lastgroup, m.group()))
        pos = m.end()
    return out


def _unquote(token: str) -> str:
    if token.startswith("`"):
        return token[1:-1]
    body = token[1:-1]
    if token.startswith("'"):
        body = body.replace("\\'", "'").replace('"', '\\"')
    decoded: str = json.loads(f'"{body}"')
    return decoded


def _skip_group(toks: list[tuple[str, str]], i: int) -> int:
    """``toks[i]`` is a grouping keyword; returns the index after it and its label list, if any."""
    i += 1
    if i < len(toks) and toks[i][1] == "(":
        while toks[i][1] != ")":
            i += 1
        i += 1
    return i


def _matchers(toks: list[tuple[str, str]], i: int, expr: str) -> tuple[tuple[Matcher, ...], int]:
    """``toks[i]`` is ``{``; returns the matchers and the index after ``}``."""
    found: list[Matcher] = []
    i += 1
    while toks[i][1] != "}":
        (kind, label), (_, op), (vkind, value) = toks[i], toks[i + 1], toks[i + 2]
        if kind != "ident" or op not in ("=", "!=", "=~", "!~") or vkind != "string":
            raise ValueError(f"bad label matcher near {label!r} in {expr!r}")
        found.append(Matcher(label, op, _unquote(value)))
        i += 3
        if toks[i][1] == ",":
            i += 1
    return tuple(found), i + 1


def selectors(expr: str) -> list[Selector]:
    """Every series selector in ``expr`` (Grafana interval variables allowed); unknown functions are errors."""
    toks = _tokens(grafana_to_promql(expr))
    found: list[Selector] = []
    around: list[str | None] = []  # per open parenthesis: the function it calls, or None
    i = 0
    while i < len(toks):
        kind, text = toks[i]
        following = toks[i + 1][1] if i + 1 < len(toks) else ""
        if kind == "ident" and text.lower() in _GROUPING:
            i = _skip_group(toks, i)
        elif kind == "ident" and text.lower() in _KEYWORDS:
            i += 1
        elif kind == "ident" and text in AGGREGATIONS and following.lower() in ("by", "without"):
            i = _skip_group(toks, i + 1)
            if i >= len(toks) or toks[i][1] != "(":
                raise ValueError(f"{text} {following} (…) is not followed by its argument in {expr!r}")
            around.append(text)
            i += 1
        elif kind == "ident" and following == "(":
            if text not in FUNCTIONS and text not in AGGREGATIONS:
                raise ValueError(f"unknown PromQL function {text!r} in {expr!r}")
            around.append(text)
            i += 2
        elif kind == "ident" or text == "{":
            metric, i = (text, i + 1) if kind == "ident" else ("", i)
            matchers: tuple[Matcher, ...] = ()
            if i < len(toks) and toks[i][1] == "{":
                matchers, i = _matchers(toks, i, expr)
            if not metric:
                names = [m.value for m in matchers if m.label == "__name__" and m.op == "="]
                if len(names) != 1:
                    raise ValueError(f"a selector without one exact metric name in {expr!r}")
                metric, matchers = names[0], tuple(m for m in matchers if m.label != "__name__")
            found.append(Selector(metric, matchers, around[-1] if around else None))
        else:
            if text == "(":
                around.append(None)
            elif text == ")":
                around.pop()
            i += 1
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
    proc: subprocess.Popen[bytes]
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

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
    log_path = workdir / "prometheus.log"
    argv = (
        binary("prometheus"),
        f"--config.file={config}",
        f"--storage.tsdb.path={workdir / 'data'}",
        f"--web.listen-address={address}",
        "--log.level=warn",
    )
    with log_path.open("wb") as log:
        proc = subprocess.Popen(argv, cwd=workdir, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
    server = Prometheus(f"http://{address}", proc, log_path)
    try:
        _wait_ready(server)
        yield server
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                proc.kill()
        proc.wait()


def _wait_ready(server: Prometheus) -> None:
    deadline = time.monotonic() + READY_TIMEOUT
    while True:
        if server.proc.poll() is not None:
            pytest.fail(f"prometheus exited with status {server.proc.returncode}\n{server.log()}")
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
