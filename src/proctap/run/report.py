"""Reports of a ``proctap run``: the JSON document (schema in docs/run.md) and the text tree.

Text goes through :mod:`proctap.text` (the same quoting as ``proctap watch``'s table) and JSON through
:func:`proctap.events.json_texts` (the same valid-UTF-8 form, with ``raw_b64``, as the NDJSON events).

The JSON lists processes flat, in tree pre-order, each naming its parent by index: deep trees (a 10k-long chain of
processes) serialise without recursion, and the HTML timeline renders rows straight from the list.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from ..events import Accounting, accounting_dict, json_text, json_texts
from ..text import elide, format_elapsed, format_program, format_size, format_status, plural, sanitize
from .session import RunResult
from .tree import LostRecord, Outcome, ProcessNode

__all__ = ["SCHEMA_VERSION", "format_argv", "format_report", "run_document", "summary_line"]

SCHEMA_VERSION = 1


def _offset(ns: int | None, base: int) -> int | None:
    return None if ns is None else ns - base


def _accounting(acct: Accounting | None) -> dict[str, Any] | None:
    return None if acct is None else accounting_dict(acct)


def _process_dict(node: ProcessNode, index: int, parent: int | None, depth: int, base: int) -> dict[str, Any]:
    out = {
        "id": index,
        "parent": parent,
        "depth": depth,
        "pid": node.pid,
        "ppid": node.ppid,
        "key": None if node.boot_start_ns is None else f"{node.pid}@{node.boot_start_ns}",
        "argv": None if node.argv is None else list(node.argv),
        "filename": node.filename,
        "comm": node.comm,
        "execed": node.execed,
        "execs": [
            json_texts(
                {"offset_ns": _offset(e.timestamp_ns, base), "filename": e.filename, "argv": _list(e.argv)}, _EXEC_TEXTS
            )
            for e in node.execs
        ],
        "start_offset_ns": _offset(node.start_ns, base),
        "end_offset_ns": _offset(node.end_ns, base),
        "duration_ns": node.duration_ns,
        "outcome": node.outcome.value,
        "exit_seen": node.exit_seen,
        "status": node.status,
        "exit_code": node.exit_code,
        "signal": node.signal,
        "signal_name": node.signal_name,
        "core_dumped": node.core_dumped,
        "outlived_root": node.outlived_root,
        "accounting": _accounting(node.accounting),
        "fork_failures": [
            {
                "offset_ns": f.timestamp_ns - base,
                "tid": f.tid,
                "errno": f.errno,
                "errno_name": f.errno_name,
                "syscall": f.syscall,
            }
            for f in node.fork_failures
        ],
        "threads": [
            {
                "tid": t.tid,
                "start_offset_ns": _offset(t.start_ns, base),
                "end_offset_ns": _offset(t.end_ns, base),
                "status": t.status,
                "accounting": _accounting(t.accounting),
            }
            for t in node.threads
        ],
    }
    return json_texts(out, _PROCESS_TEXTS)


_PROCESS_TEXTS = ("argv", "filename", "comm")
_EXEC_TEXTS = ("filename", "argv")


def _list(argv: tuple[str, ...] | None) -> list[str] | None:
    return None if argv is None else list(argv)


def _counts(nodes: Iterable[ProcessNode]) -> dict[str, int]:
    counts = {o.value: 0 for o in Outcome}
    extra = {"processes": 0, "threads": 0, "fork_failures": 0, "outlived_root": 0, "core_dumps": 0, "exit_unseen": 0}
    for node in nodes:
        extra["processes"] += 1
        counts[node.outcome.value] += 1
        extra["exit_unseen"] += _exit_unseen(node)
        extra["threads"] += len(node.threads)
        extra["fork_failures"] += len(node.fork_failures)
        extra["outlived_root"] += node.outlived_root
        extra["core_dumps"] += node.core_dumped
    return {**extra, **counts}


def run_document(result: RunResult) -> dict[str, Any]:
    """The whole run as a JSON-ready dict (schema version :data:`SCHEMA_VERSION`, documented in docs/run.md)."""
    base = result.started_ns
    index: dict[int, int] = {}
    processes: list[dict[str, Any]] = []
    for node, depth in result.tree.walk():
        parent = None if node.parent is None else index.get(id(node.parent))
        index[id(node)] = len(processes)
        processes.append(_process_dict(node, len(processes), parent, depth, base))
    tree = result.tree
    doc = {
        "schema": "proctap-run",
        "schema_version": SCHEMA_VERSION,
        "command": result.command,
        "exit_status": result.exit_status,
        "root_status": result.root_status,
        "started_wall": result.started_wall,
        "duration_ns": result.finished_ns - base,
        "root_end_offset_ns": _offset(tree.root_ended_ns, base),
        "backend": result.backend,
        "accounting_source": result.accounting_source,
        "accounting_note": None if result.accounting_note is None else json_text(result.accounting_note),
        "accounting_overruns": result.accounting_lost,
        "lost": [
            {"offset_ns": rec.timestamp_ns - base, "count": rec.count, "reason": json_text(rec.reason), "cpu": rec.cpu}
            for rec in tree.lost
        ],
        "counts": _counts(tree.nodes()),
        "watch_stats": result.watch_stats,
        "proctap_cpu_s": round(result.monitor_cpu_s, 3),
        "processes": processes,
    }
    return json_texts(doc, ("command",))


# -- text -----------------------------------------------------------------------------------------------------------
def format_argv(node: ProcessNode, limit: int = 100) -> str:
    """What the process runs, for a human (:func:`proctap.text.format_program`: the program's basename, arguments
    shell-quoted, control characters and non-UTF-8 bytes as ``$'...'`` escapes), the middle elided past ``limit``
    characters."""
    return elide(format_program(node.argv, node.filename, node.comm), limit)


def _exit_unseen(node: ProcessNode) -> bool:
    """Gone without its Exit event (lost); the other unknown outcome is an Exit that came without a status."""
    return node.outcome is Outcome.UNKNOWN and not node.exit_seen


def _status(node: ProcessNode) -> str:
    outcome = node.outcome
    if outcome is Outcome.RUNNING:
        return "running"
    if outcome is Outcome.UNKNOWN:
        return "exit unseen" if not node.exit_seen else "exit ?"
    return format_status(node.exit_code, node.signal, node.core_dumped, core=" core")


HEADER = f"{'START':>9} {'TIME':>8} {'STATUS':<12} {'CPU':>7} {'RSS':>6} {'IO r/w':>11} {'CSW':>5}  PROCESS"


def _columns(node: ProcessNode, base: int) -> str:
    start = "?" if node.start_ns is None else f"+{(node.start_ns - base) / 1e9:.3f}s"
    acct = node.accounting
    if acct is None:
        cpu = rss = io = csw = "-"
    else:
        cpu = format_elapsed((acct.cpu_user_us + acct.cpu_system_us) * 1000)
        rss = format_size(None if acct.peak_rss_kb is None else acct.peak_rss_kb * 1024)
        io = f"{format_size(acct.read_bytes)}/{format_size(acct.write_bytes)}"
        switches = [s for s in (acct.voluntary_switches, acct.involuntary_switches) if s is not None]
        csw = str(sum(switches)) if switches else "-"
    return f"{start:>9} {format_elapsed(node.duration_ns):>8} {_status(node):<12} {cpu:>7} {rss:>6} {io:>11} {csw:>5}"


def _important(node: ProcessNode) -> bool:
    return node.outcome is not Outcome.OK or bool(node.fork_failures) or node.outlived_root


def _visible(walk: list[tuple[ProcessNode, int]], limit: int) -> set[int]:
    if limit <= 0 or len(walk) <= limit:
        return {id(n) for n, _ in walk}
    shown = {id(n) for n, _ in walk[:limit]}
    for node, _ in walk:
        if _important(node):
            cur: ProcessNode | None = node
            while cur is not None and id(cur) not in shown:
                shown.add(id(cur))
                cur = cur.parent
    return shown


def summary_line(result: RunResult) -> str:
    counts = _counts(result.tree.nodes())
    parts = [plural(counts["processes"], "process")]
    counts["no_status"] = counts[Outcome.UNKNOWN.value] - counts["exit_unseen"]
    detail = [f"{counts[key]} {label}" for key, label in (
        ("ok", "ok"), ("failed", "failed"), ("signaled", "killed by a signal"), ("running", "still running"),
        ("no_status", "status unknown"), ("exit_unseen", "exit unseen"),
    ) if counts[key]]  # fmt: skip
    if detail:
        parts[0] += " (" + ", ".join(detail) + ")"
    if counts["threads"]:
        parts.append(plural(counts["threads"], "thread"))
    parts.append(plural(counts["fork_failures"], "failed fork"))
    lost = sum(rec.count or 0 for rec in result.tree.lost)
    unknown = sum(1 for rec in result.tree.lost if rec.count is None)
    overruns = f" (+{plural(unknown, 'overrun')} of unknown size)" if unknown else ""
    parts.append(f"{plural(lost, 'event')} lost{overruns}")
    root = result.tree.root
    return (
        f"proctap run: {format_argv(root, 60)} -> {_status(root)} (exit status {result.exit_status}) after "
        f"{format_elapsed(result.tree.root_ended_ns and result.tree.root_ended_ns - result.started_ns)}: "
        + ", ".join(parts)
        + f"; backend {result.backend}, accounting {result.accounting_source or 'none'}, "
        f"proctap CPU {result.monitor_cpu_s:.2f}s"
    )


def format_report(result: RunResult, *, limit: int = 500, width: int = 160, notes: bool = True) -> list[str]:
    """The text report: summary, warnings, then one line per process (tree-indented), fork failures and threads
    under their process.  Past ``limit`` processes, only the first ones and every process that did not end well
    (with its ancestors) are listed; the rest are counted.  ``notes``: include the note on missing accounting."""
    base = result.started_ns
    walk = list(result.tree.walk())
    shown = _visible(walk, limit)
    orphans = {id(n) for n in result.tree.orphans}
    lines = [summary_line(result)]
    lines.extend(_lost_lines(result.tree.lost, base))
    if result.accounting_lost:
        lines.append(f"!! taskstats records dropped {result.accounting_lost} times (socket overrun): some figures "
                     "are missing")  # fmt: skip
    if result.accounting_note and notes:
        lines.append(f"note: {sanitize(result.accounting_note)}")
    lines.append(HEADER)
    hidden = 0
    hidden_depth = 0
    for node, depth in walk:
        if id(node) not in shown:
            if not hidden:
                hidden_depth = depth
            hidden += 1
            continue
        if hidden:
            lines.append(_hidden_line(hidden, hidden_depth))
            hidden = 0
        lines.extend(_node_lines(node, depth, base, width, id(node) in orphans))
    if hidden:
        lines.append(_hidden_line(hidden, hidden_depth))
    return lines


def _hidden_line(hidden: int, depth: int) -> str:
    noun = "process" if hidden == 1 else "processes"
    return " " * 63 + "  " * depth + f"… {hidden} more {noun} (all ended well)"


def _lost_lines(lost: list[LostRecord], base: int) -> list[str]:
    """One line per reason: how many events, in how many overruns, between when and when."""
    by_reason: dict[str, list[LostRecord]] = {}
    for rec in lost:
        by_reason.setdefault(rec.reason, []).append(rec)
    lines = []
    for reason, recs in by_reason.items():
        counted = sum(r.count for r in recs if r.count is not None)
        unknown = sum(1 for r in recs if r.count is None)
        what = f"{plural(counted, 'event')} lost" if counted else "events lost"
        if unknown:
            what += f" (+{plural(unknown, 'overrun')} of unknown size)"
        first = (recs[0].timestamp_ns - base) / 1e9
        last = (recs[-1].timestamp_ns - base) / 1e9
        when = f"at +{first:.3f}s" if len(recs) == 1 else f"in {len(recs)} bursts from +{first:.3f}s to +{last:.3f}s"
        lines.append(f"!! {what} {when} ({sanitize(reason)}): the tree may be incomplete")
    return lines


def _node_lines(node: ProcessNode, depth: int, base: int, width: int, orphan: bool) -> list[str]:
    indent = "  " * depth
    flags = ""
    if node.outlived_root:
        flags += " (outlived the command)"
    if orphan:
        flags += f" (parent {node.ppid} not seen)"
    room = max(30, width - 64 - len(indent) - len(flags))
    out = [f"{_columns(node, base)}  {indent}[{node.pid}] {format_argv(node, room)}{flags}"]
    pad = " " * 63 + indent + "    "
    for failure in node.fork_failures:
        out.append(f"{pad}! fork failed: {failure.errno_name} ({failure.syscall or 'fork'}) in thread {failure.tid} "
                   f"at +{(failure.timestamp_ns - base) / 1e9:.3f}s")  # fmt: skip
    for thread in node.threads:
        dur = None if thread.start_ns is None or thread.end_ns is None else thread.end_ns - thread.start_ns
        cpu = ""
        if thread.accounting is not None:
            cpu = f", cpu {format_elapsed((thread.accounting.cpu_user_us + thread.accounting.cpu_system_us) * 1000)}"
        start = "?" if thread.start_ns is None else f"+{(thread.start_ns - base) / 1e9:.3f}s"
        out.append(f"{pad}thread {thread.tid}: {start} for {format_elapsed(dur) if thread.end_ns else 'still running'}"
                   f"{cpu}")  # fmt: skip
    return out
