"""``proctap run [options] -- CMD [ARGS...]``: run a command, then report its whole process tree.

The report (a tree with timings, exit statuses and resource use) goes to stderr, or to ``--report FILE``, so the
command's own output stays clean; ``--json`` and ``--html`` write the full tree.  The exit status is the command's
own (128 + N when a signal N killed it); 127/126 when it cannot be run, 2 for proctap's own errors.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import sys
from typing import TextIO

from ..errors import ProctapError
from ..run.report import format_report, run_document, summary_line
from ..run.session import CommandFailed, RunOptions, RunResult, run
from ..watcher import settle_for_storms
from . import export_options
from .common import PROG, Subcommand, add_backend_arguments, add_switch, count_arg, stderr

__all__ = ["SUBCOMMAND", "add_arguments", "run_command"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", metavar="FILE", help="write the whole tree as JSON (schema: docs/run.md)")
    parser.add_argument("--html", metavar="FILE", help="write a self-contained HTML timeline of the tree")
    parser.add_argument("--report", metavar="FILE", help="write the text tree to FILE instead of stderr")
    parser.add_argument("-q", "--quiet", action="store_true", help="print only the summary line, not the tree")
    add_switch(parser, "--threads", default=False, help="also follow threads (listed under their process)")
    parser.add_argument(
        "--wait-all",
        action="store_true",
        help="after the command exits, wait until every process it started (daemons included) has exited too",
    )
    add_switch(
        parser,
        "--accounting",
        default=True,
        help="CPU, peak RSS, I/O and context switches of each process from taskstats (default: on when available)",
    )
    parser.add_argument(
        "--tree-limit",
        type=count_arg,
        default=500,
        metavar="N",
        help="list at most N processes in the text tree, plus every one that failed, was killed, is still running "
        "or failed a fork (default 500; 0: all)",
    )
    add_backend_arguments(
        parser,
        latency_default=None,
        latency_help="how long events may wait in the kernel while they keep coming (default: 0.05 with a backend "
        "that captures argv in the kernel, bpf; else 0.01)",
    )
    export_options.add_run_export_arguments(parser)
    parser.add_argument("command", nargs=argparse.REMAINDER, metavar="-- CMD [ARGS...]", help="the command to run")


def check_output_path(option: str, path: str) -> None:
    """Fail before the command starts when ``path`` cannot be written (ProctapError naming the option and file)."""
    parent = os.path.dirname(os.path.abspath(path))
    if os.path.isdir(path):
        problem = "it is a directory"
    elif not os.path.isdir(parent):
        problem = f"no directory {parent}"
    elif not os.access(parent, os.W_OK | os.X_OK):
        problem = f"no permission to write in {parent}"
    elif os.path.exists(path) and not os.access(path, os.W_OK):
        problem = "no permission to overwrite it"
    else:
        return
    raise ProctapError(f"cannot write {option} {path}: {problem}")


def _write(option: str, path: str, text: str) -> bool:
    """Write ``text`` to ``path`` whole (through a temporary file renamed over it); on failure warn in one line,
    leave nothing behind and return False: the command has run, its exit status must not be lost."""
    tmp = f"{path}.tmp{os.getpid()}"
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    except (OSError, ValueError) as exc:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        stderr(f"{PROG}: warning: could not write {option} {path}: {reason}")
        return False
    return True


def _emit_report(result: RunResult, args: argparse.Namespace) -> None:
    if args.quiet:
        lines = [summary_line(result)]
    else:
        stream: TextIO = sys.stderr
        width = shutil.get_terminal_size((160, 24)).columns if stream.isatty() and not args.report else 200
        lines = format_report(result, limit=args.tree_limit, width=width, notes=bool(args.report))
    if args.report:
        if _write("--report", args.report, "\n".join(lines) + "\n"):
            stderr(lines[0])
    else:
        for line in lines:
            stderr(line)


def run_command(args: argparse.Namespace) -> int:
    argv = list(args.command)
    if argv and argv[0] == "--":
        argv = argv[1:]
    opts = RunOptions(
        argv=argv,
        backend=args.backend,
        threads=args.threads,
        wait_all=args.wait_all,
        accounting=args.accounting,
        latency=args.latency,
        argv_limit=args.argv_limit,
        buffer_bytes=args.buffer,
        backend_options=tuple(args.backend_option),
    )
    for option, path in (("--json", args.json), ("--html", args.html), ("--report", args.report),
                         ("--trace-event", args.trace_event)):  # fmt: skip
        if path is not None:
            check_output_path(option, path)
    export_options.check_run_export(args)
    settle_for_storms()  # the tree keeps every process: full collections would scan it again and again
    try:
        result = run(opts)
    except CommandFailed as exc:
        stderr(f"proctap run: {exc}")
        return exc.exit_status
    _emit_report(result, args)
    if args.json or args.html:
        doc = run_document(result)
        if args.json:
            # compact: with indent, json uses its pure-Python encoder (0.35 s instead of 0.06 s for 5000 processes)
            _write("--json", args.json, json.dumps(doc, separators=(",", ":")) + "\n")
        if args.html:
            from ..run.timeline import render_html  # only here: it is not needed for any other output

            _write("--html", args.html, render_html(doc))
    if args.trace_event:
        _write("--trace-event", args.trace_event, export_options.trace_event_text(result))
    if args.otlp:
        export_options.export_run(args, result)
    return result.exit_status


SUBCOMMAND = Subcommand(
    "run",
    "run a command and report its whole process tree: timings, exit statuses, CPU/memory/IO, HTML timeline",
    add_arguments,
    run_command,
    description="Start CMD, follow it and every descendant from its first instruction, and print the tree when it "
    "exits (to stderr). Exits with CMD's own status (128+N if killed by signal N). Example: "
    "proctap run --html build.html -- make -j2",
)
