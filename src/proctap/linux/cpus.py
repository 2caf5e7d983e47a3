"""The possible CPUs (``/sys/devices/system/cpu/possible``): every CPU that may ever come online.

Per-CPU kernel objects are sized by it: BPF per-CPU map values (one slot per possible CPU, kernel/bpf/arraymap.c
``num_possible_cpus()``), taskstats listener registration (a cpumask list, kernel/taskstats.c).
"""

from __future__ import annotations

__all__ = ["POSSIBLE_PATH", "parse_cpu_list", "possible_cpu_count", "possible_cpus", "read_possible"]

POSSIBLE_PATH = "/sys/devices/system/cpu/possible"


def parse_cpu_list(text: str) -> list[int]:
    """A kernel cpu list (``"0-3,8,10-11"``, as printed by ``%*pbl``) -> sorted CPU numbers; ``""`` -> [].

    ValueError when it is not a list of numbers and ranges.
    """
    cpus: set[int] = set()
    for part in text.strip().split(","):
        if not part:
            continue
        lo, _, hi = part.partition("-")
        cpus.update(range(int(lo), int(hi or lo) + 1))
    return sorted(cpus)


def read_possible() -> str:
    """The possible-CPU list as the kernel prints it (``"0-3"``), without the newline; OSError when unreadable."""
    with open(POSSIBLE_PATH) as f:
        return f.read().strip()


def possible_cpus() -> list[int]:
    """The numbers of the possible CPUs; OSError when sysfs is unreadable."""
    return parse_cpu_list(read_possible())


def possible_cpu_count() -> int:
    """How many CPUs are possible (``num_possible_cpus()``); OSError when sysfs is unreadable."""
    return len(possible_cpus())
