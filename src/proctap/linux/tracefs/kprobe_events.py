"""Kprobe dynamic events for the ``kprobe`` backend: definitions, and parsers of what tracefs says about them.

Pure functions only (the backend does the I/O).  The probes, written to ``kprobe_events`` (Documentation/trace/
kprobetrace.rst):

* an entry probe on the fork function keeping the clone flags, paired with a return probe (maxactive 20) on it
  fetching ``$retval``: kernels before 6.x cannot fetch entry arguments at return (6.1: ``$argN`` at a return probe
  is "Invalid $-variable"), so the pair is matched by task in the reader;
* an entry probe on ``do_exit(long code)`` keeping the exit code (a wait status: ``exit(3)`` -> 0x300 through
  do_group_exit, a fatal signal -> its number, 0x80 when a core was dumped; kernel/exit.c);
* an entry probe on a function that do_exit calls with ``group_dead`` (true for the last thread of the process,
  kernel/exit.c: ``group_dead = atomic_dec_and_test(&tsk->signal->live)``): ``taskstats_exit(tsk, group_dead)`` or
  ``acct_collect(code, group_dead)``.  The tracepoint sched_process_exit only says this from 6.16 on.

All probes of one watcher live in one group named after its owner process (:class:`ProbeNames`).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass

__all__ = [
    "ARCH_ARG_REGISTERS",
    "EXIT_GROUP_FUNCTIONS",
    "FORK_FUNCTIONS",
    "GROUP_PREFIX",
    "DynamicEvent",
    "ProbeNames",
    "ProbeProfile",
    "exit_group_probe",
    "exit_probe",
    "fork_entry_probe",
    "fork_flags_fetch",
    "fork_return_probe",
    "group_owner",
    "parse_dynamic_events",
    "parse_kprobe_profile",
    "registers_for",
    "removal_command",
    "stale_events",
]

GROUP_PREFIX = "proctap_"

# The registers holding the first and second integer argument at a function's entry, by `uname -m`
# (the fetch-argument syntax of kprobetrace.rst; $argN needs a newer kernel and CONFIG_HAVE_FUNCTION_ARG_ACCESS_API).
ARCH_ARG_REGISTERS: dict[str, tuple[str, str]] = {
    "x86_64": ("%di", "%si"),
    "aarch64": ("%x0", "%x1"),
    "arm64": ("%x0", "%x1"),
    "riscv64": ("%a0", "%a1"),
    "s390x": ("%r2", "%r3"),
    "ppc64le": ("%r3", "%r4"),
    "ppc64": ("%r3", "%r4"),
    "loongarch64": ("%r4", "%r5"),
}

# The fork path's function by kernel generation, newest first.  kernel_clone (5.10+) and _do_fork from 5.3 on take
# a struct kernel_clone_args * whose first member is the u64 flags (include/linux/sched/task.h); older _do_fork and
# do_fork take the flags as their first argument.
FORK_FUNCTIONS = ("kernel_clone", "_do_fork", "do_fork")

# Functions do_exit calls with group_dead as their second argument, in order of preference.
EXIT_GROUP_FUNCTIONS = ("taskstats_exit", "acct_collect")


def registers_for(machine: str) -> tuple[str, str]:
    """The (first, second) argument registers for ``machine`` (``os.uname().machine``); KeyError if unknown."""
    return ARCH_ARG_REGISTERS[machine]


def _kernel_version(release: str) -> tuple[int, int]:
    m = re.match(r"(\d+)\.(\d+)", release)
    return (int(m.group(1)), int(m.group(2))) if m else (0, 0)


def fork_flags_fetch(function: str, release: str, arg1: str) -> str:
    """The fetch argument for the clone flags at the entry of the fork ``function`` on kernel ``release``."""
    takes_args_struct = function == "kernel_clone" or (function == "_do_fork" and _kernel_version(release) >= (5, 3))
    return f"+0({arg1}):u64" if takes_args_struct else f"{arg1}:u64"


@dataclass(frozen=True)
class ProbeNames:
    """The group and event names of one watcher's probes.

    The group ``proctap_<pid>_<start ticks>_<n>`` names the owner (pid and start time, so that a reused pid is not
    taken for a live owner; n counts the watchers of one process); event names carry ``<pid>_<n>`` because
    ``kprobe_profile`` lists events without their group.
    """

    owner: int
    start: int = 0
    seq: int = 0

    @property
    def group(self) -> str:
        return f"{GROUP_PREFIX}{self.owner}_{self.start}_{self.seq}"

    @property
    def _suffix(self) -> str:
        return f"{self.owner}_{self.seq}"

    @property
    def fork_entry(self) -> str:
        return f"fork_{self._suffix}"

    @property
    def fork_return(self) -> str:
        return f"forkret_{self._suffix}"

    @property
    def exit(self) -> str:
        return f"exit_{self._suffix}"

    @property
    def exit_group(self) -> str:
        return f"exitgrp_{self._suffix}"

    def all(self) -> tuple[str, ...]:
        return (self.fork_entry, self.fork_return, self.exit, self.exit_group)


def fork_entry_probe(names: ProbeNames, function: str, release: str, machine: str) -> str:
    arg1, _ = registers_for(machine)
    return f"p:{names.group}/{names.fork_entry} {function} flags={fork_flags_fetch(function, release, arg1)}"


def fork_return_probe(names: ProbeNames, function: str, maxactive: int) -> str:
    """The return probe; ``maxactive`` 0 leaves the kernel's default (kretprobe instances per CPU)."""
    prefix = f"r{maxactive}" if maxactive else "r"
    # s32: kernel_clone returns a pid_t in %ax, its upper half zero (6.1 gives 4294967274 for -EINVAL as s64)
    return f"{prefix}:{names.group}/{names.fork_return} {function} ret=$retval:s32 comm=$comm:string"


def exit_probe(names: ProbeNames, machine: str) -> str:
    arg1, _ = registers_for(machine)
    return f"p:{names.group}/{names.exit} do_exit code={arg1}:s64 comm=$comm:string"


def exit_group_probe(names: ProbeNames, function: str, machine: str) -> str:
    _, arg2 = registers_for(machine)
    return f"p:{names.group}/{names.exit_group} {function} group_dead={arg2}:s32"


def removal_command(group: str, event: str) -> str:
    return f"-:{group}/{event}"


@dataclass(frozen=True)
class DynamicEvent:
    """One line of ``dynamic_events`` / ``kprobe_events``: ``p:GROUP/EVENT TARGET ARGS`` (``r20:`` for a return
    probe with maxactive 20)."""

    kind: str
    group: str
    event: str
    target: str
    args: str


_DYNAMIC_EVENT_RE = re.compile(r"^(?P<kind>[a-z])(?P<maxactive>\d*):(?P<group>[^/\s]+)/(?P<event>\S+)\s*(?P<rest>.*)$")


def parse_dynamic_events(text: str) -> list[DynamicEvent]:
    """Parse ``dynamic_events`` or ``kprobe_events``; lines of other shapes (synthetic events) are skipped."""
    events = []
    for line in text.splitlines():
        m = _DYNAMIC_EVENT_RE.match(line.strip())
        if m is None:
            continue
        target, _, args = m.group("rest").partition(" ")
        events.append(
            DynamicEvent(m.group("kind") + m.group("maxactive"), m.group("group"), m.group("event"), target, args)
        )
    return events


def group_owner(group: str) -> tuple[int, int] | None:
    """``(pid, start ticks)`` of the owner of a :class:`ProbeNames` group, or None for groups not proctap's."""
    m = re.fullmatch(re.escape(GROUP_PREFIX) + r"(\d+)_(\d+)_\d+", group)
    return (int(m.group(1)), int(m.group(2))) if m else None


def stale_events(events: Iterable[DynamicEvent], alive: Callable[[tuple[int, int]], bool]) -> list[DynamicEvent]:
    """proctap's events whose owner (pid, start ticks) is gone (a crashed earlier watcher): to be removed."""
    stale = []
    for event in events:
        owner = group_owner(event.group)
        if owner is not None and not alive(owner):
            stale.append(event)
    return stale


@dataclass(frozen=True)
class ProbeProfile:
    """One line of ``kprobe_profile``: hits and misses (kprobe_profile names events without their group)."""

    event: str
    hits: int
    misses: int


def parse_kprobe_profile(text: str) -> dict[str, ProbeProfile]:
    """Parse ``kprobe_profile`` (kernel/trace/trace_kprobe.c probes_profile_seq_show: name, nhit, nmissed)."""
    profiles = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) != 3 or not parts[1].isdigit() or not parts[2].isdigit():
            continue
        profiles[parts[0]] = ProbeProfile(parts[0], int(parts[1]), int(parts[2]))
    return profiles
