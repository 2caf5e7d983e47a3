"""A ``proctap run`` tree in the Trace Event Format (the JSON that Perfetto's UI, chrome://tracing, Bazel's
``--profile`` and ninja's build traces use).

One complete event (``"ph": "X"``) per process on its own pid lane (tid = pid), one per thread on a tid lane of
its process, metadata events naming each lane (``process_name``: the program and pid) and ordering the lanes as the
tree is walked (``process_sort_index``, parents above children), and a flow arrow (``"ph": "s"``/``"f"``) from
each parent to each child it forked.  Times are microseconds since the command started.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .. import __version__
from ..events import accounting_dict, json_text, json_texts
from ..text import format_status
from .otlp import span_name

if TYPE_CHECKING:
    from ..run.tree import ProcessNode, ProcessTree

__all__ = ["trace_events"]


def _us(ns: int) -> float:
    return round(ns / 1000, 3)


def _args(node: ProcessNode) -> dict[str, Any]:
    args: dict[str, Any] = {
        "pid": node.pid,
        "ppid": node.ppid,
        "argv": None if node.argv is None else list(node.argv),
        "filename": node.filename,
        "comm": node.comm,
        "outcome": node.outcome.value,
        "exit_code": node.exit_code,
        "signal": node.signal_name,
        "status": format_status(node.exit_code, node.signal, node.core_dumped) if node.ended else "running",
    }
    json_texts(args, ("argv", "filename", "comm"))
    args.pop("raw_b64", None)  # the viewers show text; the exact bytes are in --json
    if node.accounting is not None:
        args.update({k: v for k, v in accounting_dict(node.accounting).items() if v is not None})
    return {k: v for k, v in args.items() if v is not None}


def trace_events(
    tree: ProcessTree, *, base_ns: int, end_ns: int, command: list[str] | None = None, backend: str | None = None
) -> dict[str, Any]:
    """The Trace Event Format document (``{"traceEvents": [...], ...}``) of ``tree``.  ``base_ns``: the monotonic
    time that is ts 0 (the command's start); ``end_ns``: where processes still running (or whose end is unknown)
    end."""
    events: list[dict[str, Any]] = []
    add = events.append
    flow = 0
    for order, (node, _depth) in enumerate(tree.walk()):
        pid = node.pid
        start = node.start_ns if node.start_ns is not None else base_ns
        end = node.end_ns if node.ended and node.end_ns is not None else end_ns
        end = max(end, start)
        name = span_name(node)
        add({"name": "process_name", "ph": "M", "pid": pid, "tid": pid, "args": {"name": f"{name} [{pid}]"}})
        add({"name": "process_sort_index", "ph": "M", "pid": pid, "tid": pid, "args": {"sort_index": order}})
        add({"name": "thread_name", "ph": "M", "pid": pid, "tid": pid, "args": {"name": name}})
        add(
            {
                "name": name,
                "cat": "process",
                "ph": "X",
                "ts": _us(start - base_ns),
                "dur": _us(end - start),
                "pid": pid,
                "tid": pid,
                "args": _args(node),
            }
        )
        parent = node.parent
        if parent is not None and node.start_ns is not None:
            flow += 1
            ts = _us(start - base_ns)
            add({"name": "fork", "cat": "fork", "ph": "s", "id": flow, "ts": ts, "pid": parent.pid, "tid": parent.pid})
            add({"name": "fork", "cat": "fork", "ph": "f", "bp": "e", "id": flow, "ts": ts, "pid": pid, "tid": pid})
        for thread in node.threads:
            t_start = thread.start_ns if thread.start_ns is not None else start
            t_end = thread.end_ns if thread.end_ns is not None else end
            add(
                {
                    "name": "thread_name",
                    "ph": "M",
                    "pid": pid,
                    "tid": thread.tid,
                    "args": {"name": f"thread {thread.tid}"},
                }
            )
            add(
                {
                    "name": f"thread {thread.tid}",
                    "cat": "thread",
                    "ph": "X",
                    "ts": _us(t_start - base_ns),
                    "dur": _us(max(t_end - t_start, 0)),
                    "pid": pid,
                    "tid": thread.tid,
                    "args": {"tid": thread.tid},
                }
            )
        for record in node.execs:
            add(
                {
                    "name": "exec",
                    "cat": "exec",
                    "ph": "i",
                    "s": "t",
                    "ts": _us(record.timestamp_ns - base_ns),
                    "pid": pid,
                    "tid": pid,
                    "args": {"filename": json_text(record.filename) if record.filename else None},
                }
            )
    other: dict[str, Any] = {"generator": f"proctap {__version__}", "backend": backend}
    if command is not None:
        other["command"] = [json_text(a) for a in command]
    return {"traceEvents": events, "displayTimeUnit": "ms", "otherData": other}
