"""Every human text format of proctap, as pure functions: durations, sizes, exit statuses, accounting, command lines
and the quoting of control characters.  The table (:mod:`proctap.render`), the run report (:mod:`proctap.run.report`)
and the HTML timeline (:mod:`proctap.run.timeline`) all format through here, so a value reads the same everywhere.

Text from the kernel (argv, filenames, comm) is ``str`` with undecodable bytes kept as surrogate escapes
(``os.fsdecode``).  Nothing returned here contains a surrogate or a raw control character: it is valid UTF-8 and safe
to print on a terminal.  Non-UTF-8 bytes read ``\\xNN``, control characters ``\\n``, ``\\t``, ``\\x1b``, ``\\u202e``;
a shell word that needs them is written ``$'...'`` (bash's ANSI-C quoting, as ``ls`` and ``ps`` do):
``$'a\\xff\\xfeb'``.
"""

from __future__ import annotations

import math
import shlex
from collections.abc import Sequence

from .events import (
    Accounting,
    Comm,
    Coredump,
    Event,
    Exit,
    ForkFailed,
    Gid,
    Lost,
    Ptrace,
    Sid,
    Uid,
    errno_name,
    signal_name,
)

__all__ = [
    "elide",
    "format_accounting",
    "format_change",
    "format_command",
    "format_cpu_us",
    "format_duration",
    "format_elapsed",
    "format_exit",
    "format_lost",
    "format_program",
    "format_size",
    "format_status",
    "plural",
    "quote_arg",
    "sanitize",
]


# -- counts -------------------------------------------------------------------------------------------------------

_PLURALS = {"process": "processes", "child": "children"}


def plural(count: int, noun: str) -> str:
    """``1 event``, ``2 events``, ``0 processes``: the count and the noun in the number it takes."""
    return f"{count} {noun if count == 1 else _PLURALS.get(noun, noun + 's')}"


# -- control characters and undecodable bytes ---------------------------------------------------------------------


def _escape(ch: str) -> str:
    """One non-printable character as an escape: a surrogate-escaped byte ``\\xNN``, else Python's ``\\n``,
    ``\\x1b``, ``\\u202e`` form (other lone surrogates, which proctap never produces, read ``\\udNNN``)."""
    code = ord(ch)
    if 0xDC80 <= code <= 0xDCFF:
        return f"\\x{code - 0xDC00:02x}"
    return ch.encode("unicode_escape").decode("ascii")


def sanitize(text: str) -> str:
    """Make text safe for one terminal line: control characters and undecodable bytes become escapes.

    Non-UTF-8 bytes (kept by proctap as surrogate escapes) are shown as ``\\xNN``, a newline as ``\\n``, ESC as
    ``\\x1b``; printable text (any script) is kept as is, backslashes included.  ``""`` stays ``""``.
    """
    if text.isprintable():
        return text
    return "".join(ch if ch.isprintable() else _escape(ch) for ch in text)


def quote_arg(arg: str) -> str:
    """One shell word that a shell reads back as ``arg``: bare when safe, ``'...'`` when it has spaces or shell
    characters, ``$'...'`` (ANSI-C quoting, backslash and quote escaped) when it has control characters or bytes
    that are not UTF-8: ``$'a\\xff\\xfeb'``, ``$'a\\x1b[2Jb'``.  ``""`` gives ``''``."""
    if arg.isprintable():
        return shlex.quote(arg)
    body = "".join(
        ("\\\\" if ch == "\\" else "\\'" if ch == "'" else ch) if ch.isprintable() else _escape(ch) for ch in arg
    )
    return f"$'{body}'"


def format_command(
    argv: Sequence[str] | None, comm: str | None = None, truncated: bool = False, *, short_program: bool = False
) -> str:
    """A command line as a shell would read it (each argument through :func:`quote_arg`).

    ``truncated``: argv was cut, `` ...`` is appended.  ``short_program``: the program (argv[0]) by its basename.
    Without argv, the comm in brackets as ps(1) does (``[kworker/0:1]``); ``""`` when nothing is known.
    """
    if argv:
        words = map(quote_arg, argv) if not short_program else map(quote_arg, [_basename(argv[0]), *argv[1:]])
        text = " ".join(words)
        return text + " ..." if truncated else text
    if comm:
        return f"[{sanitize(comm)}]"
    return ""


def _basename(path: str) -> str:
    return path.rsplit("/", 1)[-1]


def format_program(argv: Sequence[str] | None, filename: str | None, comm: str | None) -> str:
    """What a process runs, short: argv with the program's basename (:func:`format_command`), else the basename of
    the file it executed, else ``[comm]``, else ``?``."""
    if argv:
        return format_command(argv, short_program=True)
    if filename:
        return sanitize(_basename(filename))
    return format_command(None, comm) or "?"


def elide(text: str, limit: int) -> str:
    """``text`` cut to ``limit`` characters by replacing its middle with ``…`` (the start keeps two thirds of the
    room); unchanged when it fits.  ``limit`` below 2 is treated as 2."""
    if len(text) <= limit:
        return text
    keep = max(limit, 2) - 1
    head = keep * 2 // 3
    return text[:head] + "…" + text[len(text) - (keep - head) :]


# -- durations and sizes ------------------------------------------------------------------------------------------


_Scale = tuple[tuple[float, float, str, str], ...]  # rows of (below this many ns, divide by, format spec, unit)

# The styles of duration proctap prints; the first row whose bound the value is below applies.
_COMPACT: _Scale = ((1e3, 1, ".0f", "ns"), (999_500, 1e3, ".0f", "us"), (999_950_000, 1e6, ".1f", "ms"),
                    (59_995_000_000, 1e9, ".2f", "s"))  # fmt: skip
_ELAPSED: _Scale = ((1e6, 1e3, ".0f", "us"), (1e9, 1e6, ".1f", "ms"), (1e10, 1e9, ".3f", "s"),
                    (math.inf, 1e9, ".1f", "s"))  # fmt: skip
_CPU: _Scale = ((1e9, 1e6, ".1f", "ms"), (math.inf, 1e9, ".2f", "s"))


def _scaled(ns: float, scale: _Scale) -> str | None:
    """``ns`` in the unit of the first row of ``scale`` whose bound it is below; None past the last bound."""
    for below, divisor, spec, unit in scale:
        if ns < below:
            return f"{ns / divisor:{spec}}{unit}"
    return None


def format_duration(ns: int | None) -> str:
    """A short human duration of at most 6 characters, for table columns: ``999ns``, ``850us``, ``1.2ms``,
    ``3.40s``, ``2m03s``, ``1h02m``, ``3d04h``; negative values get a ``-``; ``""`` for None."""
    if ns is None:
        return ""
    if ns < 0:
        return "-" + format_duration(-ns)
    text = _scaled(ns, _COMPACT)
    if text is not None:
        return text
    secs = (ns + 500_000_000) // 1_000_000_000
    if secs < 3600:
        return f"{secs // 60}m{secs % 60:02d}s"
    if secs < 86400:
        return f"{secs // 3600}h{secs % 3600 // 60:02d}m"
    return f"{secs // 86400}d{secs % 86400 // 3600:02d}h"


def format_elapsed(ns: int | None) -> str:
    """A duration with millisecond precision, for the run report (build steps compare by milliseconds): ``0us``,
    ``850us``, ``12.3ms``, ``1.234s`` (below 10 s), ``123.4s``; ``?`` for None (unknown)."""
    return "?" if ns is None else _scaled(ns, _ELAPSED) or "?"


def format_cpu_us(us: int) -> str:
    """CPU time from microseconds: ``0.0ms``, ``12.3ms`` below one second, then ``1.23s``."""
    return _scaled(us * 1000, _CPU) or "?"


def format_size(n: float | None) -> str:
    """A byte count in binary units, at most 5 characters: ``512``, ``1.5K``, ``340K``, ``3.4M``, ``12G``,
    ``2.0T``; ``-`` for None (unknown)."""
    if n is None:
        return "-"
    value = float(n)
    for unit in ("", "K", "M", "G"):
        if value < 1024:
            return f"{value:.0f}{unit}" if not unit or value >= 10 else f"{value:.1f}{unit}"
        value /= 1024
    return f"{value:.1f}T"


def format_accounting(acct: Accounting) -> str:
    """``cpu 12.0ms+1.0ms rss 3.4M io 0/4.0K csw 3+1``: user+system CPU, peak RSS, bytes read/written, voluntary
    and involuntary context switches; parts the kernel did not report are left out."""
    parts = [f"cpu {format_cpu_us(acct.cpu_user_us)}+{format_cpu_us(acct.cpu_system_us)}"]
    if acct.peak_rss_kb is not None:
        parts.append(f"rss {format_size(acct.peak_rss_kb * 1024)}")
    if acct.read_bytes is not None or acct.write_bytes is not None:
        parts.append(f"io {format_size(acct.read_bytes)}/{format_size(acct.write_bytes)}")
    if acct.voluntary_switches is not None:
        parts.append(f"csw {acct.voluntary_switches}+{acct.involuntary_switches}")
    return " ".join(parts)


# -- statuses -------------------------------------------------------------------------------------------------------


def format_status(exit_code: int | None, signal: int | None, core_dumped: bool, *, core: str = " (core)") -> str:
    """How a task ended: ``exit 3``, ``SIGKILL``, ``SIGSEGV (core)`` (``core`` is the mark appended when a core was
    dumped); ``?`` when neither an exit code nor a signal is known."""
    if signal is not None:
        name = signal_name(signal) or "?"
        return name + core if core_dumped else name
    if exit_code is not None:
        return f"exit {exit_code}"
    return "?"


def format_exit(event: Exit) -> str:
    """``exit 3``, ``SIGKILL``, ``SIGSEGV (core)``, or ``?`` when the backend cannot know the status."""
    return format_status(event.exit_code, event.signal, event.core_dumped)


def format_lost(event: Lost) -> str:
    """``LOST 123 events (netlink socket overrun, cpu 1)``; unknown counts read ``LOST events (count unknown, ...)``."""
    details = [sanitize(event.reason)] if event.reason else []
    if event.cpu is not None:
        details.append(f"cpu {event.cpu}")
    if event.count is None:
        return "LOST events (" + ", ".join(["count unknown", *details]) + ")"
    return f"LOST {plural(event.count, 'event')}" + (" (" + ", ".join(details) + ")" if details else "")


def format_change(event: Event) -> str:
    """The INFO text of the table for the kinds without a column of their own: ``EAGAIN (clone3)`` (a failed fork),
    ``comm NAME``, ``uid 0 euid 1000``, ``gid ...``, ``new session``, ``traced by PID``, ``trace detached``,
    ``dumping core``; ``""`` for other kinds."""
    if isinstance(event, ForkFailed):
        name = errno_name(event.errno) or "?"
        return f"{name} ({event.syscall})" if event.syscall else name
    if isinstance(event, Comm):
        return f"comm {sanitize(event.comm)}"
    if isinstance(event, Uid):
        return f"uid {event.ruid} euid {event.euid}"
    if isinstance(event, Gid):
        return f"gid {event.rgid} egid {event.egid}"
    if isinstance(event, Sid):
        return "new session"
    if isinstance(event, Ptrace):
        return f"traced by {event.tracer_pid}" if event.attached else "trace detached"
    if isinstance(event, Coredump):
        return "dumping core"
    return ""
