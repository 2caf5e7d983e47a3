"""Resource accounting on Exit events: taskstats records (read by :mod:`proctap.linux.taskstats`) matched to the
exits they describe.

The kernel sends a task's taskstats record from do_exit() *before* the proc connector or tracepoint exit events
(kernel/exit.c: taskstats_exit precedes exit_notify), so draining the taskstats socket right after a backend batch
finds the records of every Exit in it.  The listener hears every exit on the machine: records are kept undecoded,
by process, and decoded only for the Exit events that are delivered; processes whose Exit never comes (or is
filtered out) are forgotten oldest first past a bound.
"""

from __future__ import annotations

import dataclasses
from collections import OrderedDict
from collections.abc import Iterable

from .events import Accounting, Event, Exit
from .linux.taskstats import RawRecord, TaskstatsListener, TaskstatsRecord

__all__ = ["ExitAccounting", "record_accounting", "sum_records"]

MAX_PROCESSES = 16384  # processes whose records wait for their Exit, at most
_set = object.__setattr__  # see ExitAccounting.attach
_FROM_RECORD = tuple(f.name for f in dataclasses.fields(Accounting) if f.name != "per_process")


def record_accounting(record: TaskstatsRecord, *, per_process: bool = False) -> Accounting:
    """The event model's view of one record (the fields share their names)."""
    return Accounting(**{name: getattr(record, name) for name in _FROM_RECORD}, per_process=per_process)


def _sum_opt(values: Iterable[int | None]) -> int | None:
    total: int | None = None
    for v in values:
        if v is not None:
            total = v if total is None else total + v
    return total


def sum_records(records: list[TaskstatsRecord], leader_tid: int | None = None) -> Accounting:
    """Per-process totals from the per-thread records of its threads: CPU, I/O and switches add up, peak RSS is the
    largest (threads share the mm), elapsed time is the leader's (or the longest when the leader is unknown).

    Summing is needed because the kernel's AGGR_TGID exit record only carries delay-accounting totals
    (kernel/taskstats.c fill_tgid_exit), not CPU times.
    """
    if len(records) == 1:
        return record_accounting(records[0], per_process=True)
    leader = next((r for r in records if r.tid == leader_tid), None)
    elapsed = leader.elapsed_us if leader is not None else max(r.elapsed_us for r in records)
    rss = [r.peak_rss_kb for r in records if r.peak_rss_kb is not None]
    return Accounting(
        cpu_user_us=sum(r.cpu_user_us for r in records),
        cpu_system_us=sum(r.cpu_system_us for r in records),
        elapsed_us=elapsed,
        peak_rss_kb=max(rss) if rss else None,
        read_bytes=_sum_opt(r.read_bytes for r in records),
        write_bytes=_sum_opt(r.write_bytes for r in records),
        voluntary_switches=_sum_opt(r.voluntary_switches for r in records),
        involuntary_switches=_sum_opt(r.involuntary_switches for r in records),
        per_process=True,
    )


class ExitAccounting:
    """Adds taskstats figures to Exit events: a thread's Exit gets that thread's record, a process's Exit the sum
    over every thread record of the process (``per_process=True``).

    Call :meth:`attach` with every batch, after reading it, also when it is empty (to keep the socket drained).
    Raises :class:`~proctap.errors.BackendUnavailable` (one line, with what to do) when taskstats cannot work here.
    ``overruns`` counts overflows of the socket buffer (the kernel does not say how many records were dropped).
    """

    def __init__(self, listener: TaskstatsListener | None = None, max_processes: int = MAX_PROCESSES) -> None:
        self.listener = listener if listener is not None else TaskstatsListener()
        self.max_processes = max_processes
        self._waiting: OrderedDict[int, list[RawRecord]] = OrderedDict()  # tgid -> its threads' records

    def fileno(self) -> int:
        return self.listener.fileno()

    @property
    def overruns(self) -> int:
        return self.listener.lost

    def collect(self) -> None:
        """Read every record queued now (never blocks)."""
        waiting = self._waiting
        for raw in self.listener.read_raw():
            if raw.aggregate != "pid":
                continue  # AGGR_TGID exit records hold only delay-accounting totals: threads are summed instead
            group = waiting.get(raw.tgid)
            if group is None:
                waiting[raw.tgid] = [raw]
                if len(waiting) > self.max_processes:
                    waiting.popitem(last=False)
            else:
                group.append(raw)

    def attach(self, events: list[Event]) -> list[Event]:
        """``events`` with accounting (and, where the event lacks it, the comm) added to their Exit events.

        The Exit events are completed in place: the watcher's drain step calls this before anyone else holds them
        (the process cache's record of the process then has the same, complete Exit), instead of a copy per exit
        (``dataclasses.replace``, several microseconds each: ``proctap run``'s hot path)."""
        self.collect()
        for ev in events:
            if type(ev) is not Exit or ev.accounting is not None:
                continue
            found = self._take(ev)  # type: ignore[arg-type]
            if found is None:
                continue
            acct, comm = found
            _set(ev, "accounting", acct)
            if ev.comm is None:
                _set(ev, "comm", comm)
        return events

    def forget(self, pid: int) -> None:
        """A process ended whose Exit is not delivered: drop its records."""
        self._waiting.pop(pid, None)

    def _take(self, ev: Exit) -> tuple[Accounting, str | None] | None:
        if ev.is_thread:
            group = self._waiting.get(ev.pid)
            raw = next((r for r in group or () if r.id == ev.tid), None)
            if raw is None:
                return None
            record = raw.decode().record
            return record_accounting(record), record.comm or None
        group = self._waiting.pop(ev.pid, None)
        if not group:
            return None
        records = [raw.decode().record for raw in group]
        leader = next((r for r in records if r.tid == ev.pid), records[-1])
        return sum_records(records, leader_tid=ev.pid), leader.comm or None

    def close(self) -> None:
        self.listener.close()

    def __len__(self) -> int:
        return sum(len(group) for group in self._waiting.values())
