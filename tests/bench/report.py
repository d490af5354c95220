"""Collects measurements and verdicts, and renders them as one Markdown table."""

from __future__ import annotations

import datetime
import os
import platform
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

PASS, MISS, NONE = "PASS", "MISS", "—"


@dataclass
class Row:
    measure: str
    result: str
    target: str = NONE
    verdict: str = NONE


@dataclass
class Report:
    mode: str
    rows: list[Row] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    facts: dict[str, str] = field(default_factory=dict)

    def info(self, measure: str, result: str) -> None:
        self.rows.append(Row(measure, result))

    def target(self, measure: str, result: str, target: str, ok: bool) -> str:
        verdict = PASS if ok else MISS
        self.rows.append(Row(measure, result, target, verdict))
        return verdict

    def skipped(self, measure: str, why: str, target: str = NONE) -> None:
        self.rows.append(Row(measure, f"not measured: {why}", target, "n/a"))

    def failed(self, measure: str, error: str, target: str = NONE) -> None:
        self.rows.append(Row(measure, f"FAILED: {error}", target, MISS if target != NONE else NONE))

    def markdown(self) -> str:
        now = datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
        lines = [
            f"### `make bench` results ({self.mode})",
            "",
            f"- Date: {now}",
            f"- Machine: `nproc` {len(os.sched_getaffinity(0))}, {cpu_model()}, {memory_gib()} GiB RAM, "
            f"{platform.system()} {platform.release()}",
            f"- Python {platform.python_version()}",
            *(f"- {k}: {v}" for k, v in self.facts.items()),
            "",
            "| Measurement | Result | Target | Verdict |",
            "|---|---|---|---|",
        ]
        lines += [f"| {r.measure} | {r.result} | {r.target} | {r.verdict} |" for r in self.rows]
        if self.notes:
            lines.append("")
            lines += [f"- {note}" for note in self.notes]
        return "\n".join(lines) + "\n"

    def write(self, path: Path) -> None:
        path.write_text(self.markdown())


def code_version(repo: Path) -> str:
    """The commit measured, and whether files outside tests/bench differ from it."""
    try:
        sha = subprocess.run(
            ["git", "-C", str(repo), "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True
        ).stdout.strip()
        changed = subprocess.run(
            ["git", "-C", str(repo), "status", "--porcelain", "--", ".", ":!tests/bench"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.splitlines()
    except (OSError, subprocess.CalledProcessError):
        return "unknown (not a git checkout?)"
    return f"commit {sha}" + (f" plus {len(changed)} uncommitted changed files" if changed else "")


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def memory_gib() -> str:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return f"{int(line.split()[1]) / 1024 / 1024:.0f}"
    except (OSError, ValueError, IndexError):
        pass
    return "?"
