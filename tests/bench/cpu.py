"""Where the CPU went during a measurement: cores used per process group, from /proc (Linux only).

Besides the named groups, every meter reports ``machine`` (all CPUs' busy time, interrupts and steal
included) and ``others``: user and system time of processes outside the bench's own process tree,
i.e. anything else running on this machine, which makes the bench's numbers pessimistic.
"""

from __future__ import annotations

import os
import time
from collections import defaultdict
from collections.abc import Callable, Mapping
from pathlib import Path

_TICKS = os.sysconf("SC_CLK_TCK")
CORES = len(os.sched_getaffinity(0))
CpuGroups = Mapping[str, Callable[[], list[int]]]


def _stat(pid: int) -> list[str] | None:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return text[text.rindex(")") + 2 :].split()  # fields from "state" on; comm may hold spaces


def cpu_seconds(pid: int) -> float:
    fields = _stat(pid)
    if fields is None:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / _TICKS  # utime, stime


def with_children(pid: int) -> list[int]:
    """``pid`` and its direct children (PostgreSQL's backends are children of the postmaster)."""
    pids = [pid]
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            fields = _stat(int(entry.name))
            if fields is not None and int(fields[1]) == pid:
                pids.append(int(entry.name))
    return pids


def tree_seconds(root: int) -> float:
    """CPU seconds of ``root`` and every live descendant, plus the children they have reaped.

    A dead child's time is added to its parent's cutime/cstime when reaped, so summing all four
    fields over the live tree counts everything the tree ever ran, without double counting.
    """
    children: dict[int, list[int]] = defaultdict(list)
    times: dict[int, float] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            fields = _stat(int(entry.name))
            if fields is not None:
                pid = int(entry.name)
                children[int(fields[1])].append(pid)
                times[pid] = sum(int(v) for v in fields[11:15]) / _TICKS  # utime stime cutime cstime
    total, todo = 0.0, [root]
    while todo:
        pid = todo.pop()
        total += times.get(pid, 0.0)
        todo += children.get(pid, [])
    return total


def _machine() -> tuple[float, float, float]:
    """Seconds since boot of the whole machine: (busy, user+nice+system, total)."""
    fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    user, nice, system, idle, iowait, irq, softirq, steal = fields
    busy = user + nice + system + irq + softirq + steal
    return busy / _TICKS, (user + nice + system) / _TICKS, (busy + idle + iowait) / _TICKS


class CpuMeter:
    """Cores used by each named group of processes between construction and ``stop()``.

    Processes of a group that exit in between are not counted (the bench's long-lived ones do not).
    """

    def __init__(self, groups: CpuGroups) -> None:
        self._groups = groups
        self._started = time.monotonic()
        self._before = {name: self._sample(pids()) for name, pids in groups.items()}
        self._machine_before = _machine()
        self._tree_before = tree_seconds(os.getpid())

    @staticmethod
    def _sample(pids: list[int]) -> dict[int, float]:
        return {pid: cpu_seconds(pid) for pid in pids}

    def stop(self) -> dict[str, float]:
        wall = time.monotonic() - self._started
        used: dict[str, float] = {}
        for name, pids in self._groups.items():
            before = self._before[name]
            after = self._sample(pids())
            used[name] = sum(after[pid] - before.get(pid, 0.0) for pid in after) / wall
        busy, processes, total = _machine()
        busy0, processes0, total0 = self._machine_before
        share = (busy - busy0) / max(1e-9, total - total0)
        used["machine"] = share * CORES
        ours = tree_seconds(os.getpid()) - self._tree_before
        used["others"] = max(0.0, (processes - processes0 - ours) / max(1e-9, total - total0) * CORES)
        return used


def _machine_text(used: Mapping[str, float]) -> str:
    text = f"machine busy {used['machine']:.2f} of {CORES} cores" if "machine" in used else ""
    if used.get("others", 0.0) >= 0.05:
        text += f", other processes {used['others']:.2f}"
    return text


def describe(used: Mapping[str, float]) -> str:
    groups = ", ".join(f"{name} {cores:.2f}" for name, cores in used.items() if name not in ("machine", "others"))
    return f"{groups} cores; {_machine_text(used)}"


def per_call(used: Mapping[str, float], rate: float) -> str:
    """CPU milliseconds per call of each group at ``rate`` calls per second, and how busy the machine was."""
    parts = [
        f"{name} {cores / rate * 1000:.2f} ms"
        for name, cores in used.items()
        if name not in ("machine", "others") and cores > 0
    ]
    return "CPU per call: " + ", ".join(parts) + f"; {_machine_text(used)}"
