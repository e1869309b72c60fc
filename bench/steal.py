"""The share of this machine's CPU time its hypervisor took while a measurement ran: the
`steal` column of /proc/stat (time a vCPU wanted to run and the host ran something else).

A VM whose host is overcommitted loses its vCPUs in bursts of milliseconds; a single-process
step's fastest run dodges them, two ranks in lockstep wait out each other's (docs/benchmarks.md,
nineteenth round: 12 % stolen while the closed loop ran, 0.4 % idle). The closed loop and the
calibration print it beside their figures so a reading taken under heavy stealing can be told
apart; None where the kernel does not report it (not Linux).
"""

from __future__ import annotations

from pathlib import Path

STAT = Path("/proc/stat")


def cpu_times() -> tuple[int, int] | None:
    """(steal jiffies, all jiffies) of the machine's CPUs since boot, or None off Linux."""
    try:
        fields = STAT.read_text(encoding="ascii").splitlines()[0].split()
    except OSError:
        return None
    if fields[0] != "cpu" or len(fields) < 9:
        return None
    values = [int(v) for v in fields[1:]]
    # user nice system idle iowait irq softirq steal [guest guest_nice]: guest time is already
    # counted in user and nice, so the total stops at steal.
    return values[7], sum(values[:8])


def steal_share(before: tuple[int, int] | None, after: tuple[int, int] | None) -> float | None:
    """Stolen share of the CPU time between two `cpu_times` readings (0-1), or None."""
    if before is None or after is None or after[1] <= before[1]:
        return None
    return (after[0] - before[0]) / (after[1] - before[1])
