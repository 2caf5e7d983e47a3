"""Ground truth from loadgen and scoring a monitor's events against it.

PIDs wrap (pid_max is 32768 on a 2-core machine, a 100k storm reuses each PID about three times), so tasks are
matched as multisets: a PID seen k times counts for at most as many tasks as the truth has with that PID.  Events
are attributed to the storm by their parent (the loadgen) where the monitor reports it; -1 means "unknown" and is
accepted (forkstat often cannot tell).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

KINDS = ("fork", "exec", "exit")
# The event columns a monitor hands to the scorer: one list of ints per field, -1 for "unknown".  f_: Fork
# (tid, pid, parent pid, is_thread), e_: Exec, x_: Exit (with the raw wait status); plus "lost": (count|None,
# reason, cpu) per Lost event.
COLUMNS = (
    *("f_tid", "f_pid", "f_ppid", "f_thread"),
    *("e_tid", "e_pid", "e_ppid"),
    *("x_tid", "x_pid", "x_ppid", "x_status", "x_thread"),
)


@dataclass
class Truth:
    mode: str
    n: int
    root_pid: int
    wall_ns: int
    bad_statuses: int
    ids: list[int]
    statuses: list[int]

    @property
    def expected(self) -> dict[str, int]:
        return {"fork": self.n, "exec": self.n if self.mode == "exec" else 0, "exit": self.n}


def parse_header(line: str) -> tuple[str, int, int, int, int]:
    """``loadgen MODE N PID WALL_NS BAD_STATUSES`` -> its fields."""
    word, mode, n, pid, wall_ns, bad = line.split()
    if word != "loadgen":
        raise ValueError(f"not a loadgen header: {line!r}")
    return mode, int(n), int(pid), int(wall_ns), int(bad)


def read_truth(path: Path) -> Truth:
    lines = path.read_text().splitlines()
    mode, n, pid, wall_ns, bad = parse_header(lines[0])
    ids: list[int] = []
    statuses: list[int] = []
    for line in lines[1:]:
        task_id, status = line.split()
        ids.append(int(task_id))
        statuses.append(int(status))
    if len(ids) != n:
        raise ValueError(f"{path}: {len(ids)} tasks listed, header says {n}")
    return Truth(mode, n, pid, wall_ns, bad, ids, statuses)


def _matched(truth: Counter[Any], seen: Counter[Any]) -> int:
    return sum(min(count, seen[key]) for key, count in truth.items())


def _fork_tids(truth: Truth, cols: dict[str, Any]) -> Counter[int]:
    root = truth.root_pid
    rows = zip(cols["f_tid"], cols["f_pid"], cols["f_ppid"], cols["f_thread"], strict=True)
    if truth.mode == "thread":
        return Counter(tid for tid, pid, _, thr in rows if (thr == 1 and pid == root) or thr == -1)
    return Counter(tid for tid, _, ppid, thr in rows if (thr == 0 and ppid in (root, -1)) or thr == -1)


def _exec_pids(truth: Truth, cols: dict[str, Any]) -> Counter[int]:
    return Counter(pid for pid, ppid in zip(cols["e_pid"], cols["e_ppid"], strict=True) if ppid in (truth.root_pid, -1))


def _exit_rows(truth: Truth, cols: dict[str, Any]) -> list[tuple[int, int]]:
    """(tid, wait status or -1) of the exits that may belong to the storm."""
    root = truth.root_pid
    rows = zip(cols["x_tid"], cols["x_pid"], cols["x_ppid"], cols["x_status"], cols["x_thread"], strict=True)
    if truth.mode == "thread":
        return [(tid, st) for tid, pid, _, st, thr in rows if (thr == 1 and pid == root) or thr == -1]
    return [(tid, st) for tid, _, ppid, st, thr in rows if thr != 1 and ppid in (root, -1)]


def score(truth: Truth, cols: dict[str, Any]) -> dict[str, Any]:
    """Seen/expected per kind, exit statuses right, losses reported, and whether the losses account for the gap."""
    expected = truth.expected
    truth_ids = Counter(truth.ids)
    exits = _exit_rows(truth, cols)
    seen = {
        "fork": _matched(truth_ids, _fork_tids(truth, cols)),
        "exec": _matched(truth_ids, _exec_pids(truth, cols)) if expected["exec"] else 0,
        "exit": _matched(truth_ids, Counter(tid for tid, _ in exits)),
    }
    truth_codes = Counter(zip(truth.ids, truth.statuses, strict=True))
    codes_right = _matched(truth_codes, Counter(row for row in exits if row[1] != -1))
    codes_known = _matched(truth_ids, Counter(tid for tid, st in exits if st != -1))
    lost = sum(count for count, _, _ in cols["lost"] if count is not None)
    lost_unknown = sum(1 for count, _, _ in cols["lost"] if count is None)
    expected_total = sum(expected.values())
    missing = expected_total - sum(seen.values())
    missing_tasks = max(expected[k] - seen[k] for k in KINDS)  # at least this many tasks lack an event
    return {
        "expected": expected,
        "seen": seen,
        "seen_pct": {k: 100.0 * seen[k] / expected[k] for k in KINDS if expected[k]},
        "exit_codes_right": codes_right,
        "exit_codes_known": codes_known,
        # None when the monitor gives no status at all (shown as "-"), else right among all exits seen
        "exit_codes_right_pct": 100.0 * codes_right / seen["exit"] if codes_known else None,
        "missing": missing,
        "missing_tasks_at_least": missing_tasks,
        "lost": lost,
        "lost_unknown": lost_unknown,
        "verdict": verdict(missing, missing_tasks, lost, lost_unknown),
    }


def verdict(missing: int, missing_tasks: int, lost: int, lost_unknown: int) -> str:
    """complete: everything seen; accounted: the reported losses cover the missing events (they count every event
    the kernel dropped, not only the storm's, hence >=); accounted*: they cover the tasks that lack an event but
    not every missing event (backends whose Lost counts tasks, e.g. proc); overrun: the monitor said it dropped
    events but not how many (or too few); SILENT: missing and nothing (or too little) reported."""
    if missing <= 0:
        return "complete"
    if lost >= missing:
        return "accounted"
    if lost >= missing_tasks:
        return "accounted*"
    if lost_unknown:
        return "overrun"
    return "SILENT"
