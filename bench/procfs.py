"""What the harness reads about processes from ``/proc``, and how it pins them.

CPU time is ``utime + stime`` from ``/proc/PID/stat`` and memory is ``VmRSS``
from ``/proc/PID/status``, both summed over the process and its descendants,
so a server that forks workers is measured whole. Reading ``/proc`` directly
costs a few microseconds and needs nothing installed; it is also what the
numbers mean in the report ("server CPU time", "server RSS").
"""

from __future__ import annotations

import os
import platform
import re
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

_PROC = Path("/proc")
_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def descendants(pid: int) -> list[int]:
    """Return ``pid`` and every live descendant of it (depth first).

    Uses ``/proc/PID/task/TID/children``; a process that exits while it is being
    walked is skipped.
    """
    found = [pid]
    index = 0
    while index < len(found):
        current = found[index]
        index += 1
        try:
            tasks = list((_PROC / str(current) / "task").iterdir())
        except OSError:
            continue
        for task in tasks:
            try:
                children = (task / "children").read_text().split()
            except OSError:
                continue
            found.extend(int(child) for child in children)
    return found


def _cpu_times_one(pid: int) -> tuple[float, float]:
    try:
        stat = (_PROC / str(pid) / "stat").read_text()
    except OSError:
        return 0.0, 0.0
    # The command name is in parentheses and may contain spaces: split after it.
    fields = stat[stat.rindex(")") + 2 :].split()
    # utime and stime are fields 14 and 15 of stat(5), i.e. 11 and 12 after the name.
    return int(fields[11]) / _CLOCK_TICKS, int(fields[12]) / _CLOCK_TICKS


def cpu_times(pid: int) -> tuple[float, float]:
    """CPU time (user, system; seconds) used so far by ``pid`` and its descendants.

    System time is the kernel working for the process: system calls, and on
    loopback the TCP stack of both ends of every segment it sends. Resolution
    is one clock tick (usually 10 ms), so measured windows should last at least
    a second.
    """
    times = [_cpu_times_one(p) for p in descendants(pid)]
    return sum(user for user, _ in times), sum(system for _, system in times)


def cpu_seconds(pid: int) -> float:
    """CPU time (user + system, seconds) used so far by ``pid`` and its descendants."""
    return sum(cpu_times(pid))


def cpu_usage(cpu: int) -> tuple[float, float]:
    """Seconds CPU ``cpu`` has spent running tasks (user, nice, system) and stolen.

    From ``/proc/stat``; (0, 0) when the line is missing. Interrupt time is
    left out: on loopback it is mostly the measured server's own traffic.
    """
    try:
        stat = (_PROC / "stat").read_text()
    except OSError:
        return 0.0, 0.0
    match = re.search(rf"^cpu{cpu}\s+(.+)$", stat, re.MULTILINE)
    if match is None:
        return 0.0, 0.0
    fields = [int(field) for field in match.group(1).split()]
    # user nice system idle iowait irq softirq steal ...
    tasks = fields[0] + fields[1] + fields[2]
    steal = fields[7] if len(fields) > 7 else 0
    return tasks / _CLOCK_TICKS, steal / _CLOCK_TICKS


def _status_kib(pid: int, field: str) -> int:
    try:
        status = (_PROC / str(pid) / "status").read_text()
    except OSError:
        return 0
    match = re.search(rf"^{field}:\s+(\d+) kB", status, re.MULTILINE)
    return int(match.group(1)) * 1024 if match else 0


def rss_bytes(pid: int) -> int:
    """Resident set size in bytes of ``pid`` and its descendants."""
    return sum(_status_kib(p, "VmRSS") for p in descendants(pid))


def peak_rss_bytes(pid: int) -> int:
    """The highest resident set size in bytes ``pid`` and its descendants each reached.

    ``VmHWM`` (the "high water mark") of each process, summed: the peaks of
    several processes need not have been at the same moment.
    """
    return sum(_status_kib(p, "VmHWM") for p in descendants(pid))


def open_files_limit(pid: int) -> int | None:
    """The soft open-file limit of ``pid`` from ``/proc/PID/limits``, or ``None``."""
    try:
        limits = (_PROC / str(pid) / "limits").read_text()
    except OSError:
        return None
    match = re.search(r"^Max open files\s+(\d+|unlimited)", limits, re.MULTILINE)
    if match is None or match.group(1) == "unlimited":
        return None
    return int(match.group(1))


@dataclass(frozen=True)
class Pinning:
    """CPU pinning of the server and the load generators.

    Attributes:
        server: command prefix that pins the server (empty when not pinned).
        loadgen: command prefix that pins load generators (empty when not pinned).
        description: one line for the report.
        server_cpu: the CPU the server is pinned to, if it is.
    """

    server: tuple[str, ...]
    loadgen: tuple[str, ...]
    description: str
    server_cpu: int | None = None


def pinning(enabled: bool = True) -> Pinning:
    """Pin the server to CPU 0 and load generators to CPU 1 when possible.

    Pinning needs ``taskset`` and both CPUs in this process's affinity mask;
    otherwise everything floats and the report says so.
    """
    taskset = shutil.which("taskset")
    allowed = os.sched_getaffinity(0)
    if not enabled:
        return Pinning((), (), "not pinned (--no-pin)")
    if taskset is None or not {0, 1} <= allowed:
        return Pinning((), (), "not pinned (needs taskset and CPUs 0 and 1)")
    return Pinning(
        (taskset, "-c", "0"),
        (taskset, "-c", "1"),
        "server on CPU 0, load generators on CPU 1 (taskset)",
        server_cpu=0,
    )


def cpu_model() -> str:
    """The CPU model name from ``/proc/cpuinfo`` (or the platform's processor string)."""
    try:
        cpuinfo = (_PROC / "cpuinfo").read_text()
    except OSError:
        return platform.processor() or "unknown"
    match = re.search(r"^model name\s*:\s*(.+)$", cpuinfo, re.MULTILINE)
    return match.group(1).strip() if match else platform.processor() or "unknown"


def machine() -> dict[str, str | int]:
    """A machine description for the report: CPUs, model, memory, kernel, Python."""
    memory_kib = 0
    try:
        meminfo = (_PROC / "meminfo").read_text()
        match = re.search(r"^MemTotal:\s+(\d+) kB", meminfo, re.MULTILINE)
        memory_kib = int(match.group(1)) if match else 0
    except OSError:
        pass
    return {
        "cpus": os.cpu_count() or 0,
        "cpu_model": cpu_model(),
        "memory_gib": round(memory_kib / 1024 / 1024),
        "kernel": f"{platform.system()} {platform.release()}",
        "python": f"{platform.python_implementation()} {sys.version.split()[0]}",
    }
