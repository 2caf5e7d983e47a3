"""The text of ``proctap top``: the header of machine-wide rates and the table of each view, fitted to a width.

Pure functions from the aggregator's :class:`~proctap.top.aggregate.Header` and rows to lines of text; the curses
screen (:mod:`proctap.top.screen`) and ``--once`` both print these, so a snapshot reads the same on a terminal and
in a pipe.  Every text from the kernel goes through :func:`proctap.text.sanitize`; durations through
:func:`proctap.text.format_duration`.

Columns have a priority: when the width is short, the least important go first, then the flexible ones (names,
programs) shrink, the middle of a long name elided (``…``).  ``width=None``: nothing is cut.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from ..text import elide, format_duration, sanitize
from .aggregate import WINDOWS_S, CgroupRow, FailureRow, Header, ParentRow, ProgramRow, Row, Sort, View

__all__ = [
    "COUNTER_LABELS",
    "VIEW_TITLES",
    "Column",
    "format_count",
    "format_rate",
    "header_lines",
    "status_line",
    "table_lines",
]

VIEW_TITLES = {
    View.PARENT: "by parent",
    View.PROGRAM: "by program",
    View.CGROUP: "by cgroup",
    View.FAILURES: "failures",
}
COUNTER_LABELS = {
    "forks": "forks",
    "execs": "execs",
    "exits": "exits",
    "fork_failed": "forkfail",
    "threads": "threads",
    "lost": "lost",
}
_SHORT_LABELS = {"forks": "fork", "execs": "exec", "exits": "exit", "fork_failed": "ffail", "threads": "thr"}
GAP = "  "  # between columns
R = TypeVar("R", bound=Row)


def format_rate(value: float) -> str:
    """Events per second, at most 6 characters: ``0``, ``0.4``, ``12.5``, ``512``, ``12345``, ``123k``."""
    if value <= 0:
        return "0"
    if value < 100:
        return f"{value:.1f}"
    if value < 99_999.5:
        return f"{value:.0f}"
    return f"{value / 1000:.0f}k"


def format_count(value: int) -> str:
    """A count, at most 7 characters: ``0``, ``1234567``, ``12.3M``."""
    if value < 10_000_000:
        return str(value)
    if value < 10_000_000_000:
        return f"{value / 1e6:.1f}M"
    return f"{value / 1e9:.1f}G"


def _named_counts(items: Sequence[tuple[str, int]], *, counts: bool) -> str:
    """``true, sh`` (names by count, most first) or, with ``counts``, ``EAGAIN 12, ENOMEM 1``."""
    if counts:
        return ", ".join(f"{sanitize(name)} {format_count(n)}" for name, n in items)
    return ", ".join(sanitize(name) for name, _ in items)


# -- columns ------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Column:
    """``width``: fixed width (None: flexible, between ``min_width`` and ``max_width`` as the text needs);
    ``priority``: higher stays longer when the width is short; ``right``: right-aligned (numbers)."""

    title: str
    cell: Callable[[Row], str]
    priority: int
    width: int | None = None
    min_width: int = 6
    max_width: int = 40
    right: bool = False
    cut_end: bool = False  # a list: cut its tail (``a, b, c, …``) rather than its middle


def _rate(window: int) -> Callable[[Row], str]:
    return lambda row: format_rate(row.rates[window])


def _duration(value: int | None) -> str:
    return format_duration(value) or "-"


_FIRST, _LAST = WINDOWS_S[0], WINDOWS_S[-1]
_ERRORS: dict[str, Any] = {"min_width": 7, "max_width": 30, "cut_end": True}  # "EAGAIN 12, ENOMEM 1" columns


def _columns(view: View) -> list[Column]:
    rate_title = {View.PARENT: "CHILD/s", View.PROGRAM: "START/s", View.CGROUP: "FORK/s", View.FAILURES: "FAIL/s"}
    rates = [
        Column(rate_title[view], _rate(_FIRST), 10, width=8, right=True),
        Column(f"{_LAST}s-AVG", _rate(_LAST), 6, width=8, right=True),
    ]
    total = Column("TOTAL", lambda r: format_count(r.total), 8, width=7, right=True)
    if view is View.PARENT:
        return [
            Column("PID", _of(ParentRow, lambda r: str(r.pid)), 9, width=7, right=True),
            Column("COMMAND", lambda r: sanitize(r.label), 10, min_width=8, max_width=16),
            *rates,
            total,
            Column("PROGRAMS", _of(ParentRow, lambda r: _names(r.programs)), 7, min_width=8, cut_end=True),
            Column("MEDIAN", _of(ParentRow, lambda r: _duration(r.median_lifetime_ns)), 5, width=7, right=True),
            Column("FAILED", _of(ParentRow, lambda r: format_count(r.bad)), 6, width=6, right=True),
            Column("FORKERR", _of(ParentRow, lambda r: _counted(r.fork_failed)), 7, **_ERRORS),
            Column("THREADS", _of(ParentRow, lambda r: format_count(r.threads)), 3, width=7, right=True),
            Column("CGROUP", _of(ParentRow, lambda r: sanitize(r.cgroup or "-")), 2, min_width=8),
        ]
    if view is View.PROGRAM:
        return [
            Column("PROGRAM", lambda r: sanitize(r.label), 10, min_width=8, max_width=24),
            *rates,
            total,
            Column("MEDIAN", _of(ProgramRow, lambda r: _duration(r.median_lifetime_ns)), 5, width=7, right=True),
            Column("FAILED", _of(ProgramRow, lambda r: format_count(r.bad)), 6, width=6, right=True),
            Column("PARENTS", _of(ProgramRow, lambda r: _names(r.parents)), 7, min_width=8, cut_end=True),
            Column("STATUSES", _of(ProgramRow, lambda r: _counted(r.statuses)), 4, **_ERRORS),
        ]
    if view is View.CGROUP:
        return [
            Column("CGROUP", lambda r: sanitize(r.label), 10, min_width=10, max_width=50),
            *rates,
            total,
            Column("EXECS", _of(CgroupRow, lambda r: format_count(r.execs)), 5, width=7, right=True),
            Column("PROGRAMS", _of(CgroupRow, lambda r: _names(r.programs)), 7, min_width=8, cut_end=True),
            Column("FAILED", _of(CgroupRow, lambda r: format_count(r.bad)), 6, width=6, right=True),
            Column("FORKERR", _of(CgroupRow, lambda r: _counted(r.fork_failed)), 6, **_ERRORS),
        ]
    return [
        Column("FAILURE", _of(FailureRow, _failure), 10, min_width=8, max_width=20),
        Column("WHO", _of(FailureRow, _who), 9, min_width=8, max_width=40),
        Column("COUNT", lambda r: format_count(r.total), 8, width=7, right=True),
        *rates,
    ]


def _names(items: Sequence[tuple[str, int]]) -> str:
    return _named_counts(items, counts=False)


def _counted(items: Sequence[tuple[str, int]]) -> str:
    return _named_counts(items, counts=True) or "-"


def _failure(row: FailureRow) -> str:
    return f"{row.kind} {row.what}" if row.kind != "exit" else row.what


def _who(row: FailureRow) -> str:
    return f"{sanitize(row.label)} ({row.pid})" if row.pid is not None else sanitize(row.label)


def _of(cls: type[R], get: Callable[[R], str]) -> Callable[[Row], str]:
    """A cell of a view whose rows are all ``cls``."""

    def cell(row: Row) -> str:
        assert isinstance(row, cls)
        return get(row)

    return cell


def _fit(columns: list[Column], cells: list[list[str]], width: int | None) -> list[tuple[Column, int]]:
    """The columns kept and their widths."""
    natural = []
    for i, col in enumerate(columns):
        need = max([len(col.title), *(len(row[i]) for row in cells)])
        if col.width is not None:
            natural.append(max(col.width, need) if width is None else max(col.width, len(col.title)))
        else:
            natural.append(max(min(need, col.max_width), min(col.min_width, need), len(col.title)))
    keep = list(range(len(columns)))
    if width is not None:

        def least(widths: list[int]) -> int:
            return sum(widths[i] for i in keep) + len(GAP) * (len(keep) - 1)

        floor = [c.width or min(c.min_width, natural[i]) for i, c in enumerate(columns)]
        floor = [max(f, len(columns[i].title)) if columns[i].width is None else f for i, f in enumerate(floor)]
        while len(keep) > 1 and least(floor) > width:
            keep.remove(min(keep, key=lambda i: (columns[i].priority, -i)))
        sizes = {i: floor[i] for i in keep}
        room = width - least(floor)
        for i in keep:  # grow the flexible columns toward their natural width, left to right
            if room <= 0:
                break
            extra = min(natural[i] - sizes[i], room)
            if extra > 0:
                sizes[i] += extra
                room -= extra
        return [(columns[i], sizes[i]) for i in keep]
    return [(columns[i], natural[i]) for i in keep]


def _cell(text: str, width: int, col: Column) -> str:
    if len(text) > width:
        text = text[: max(width - 1, 0)] + "…" if col.cut_end else elide(text, width)
    return text.rjust(width) if col.right else text.ljust(width)


def table_lines(rows: Sequence[Row], view: View, width: int | None) -> list[str]:
    """The title line and one line per row; lines are at most ``width`` characters (None: no limit).  Trailing
    blanks are stripped."""
    columns = _columns(view)
    cells = [[col.cell(row) for col in columns] for row in rows]
    fitted = _fit(columns, cells, width)
    index = {id(col): i for i, col in enumerate(columns)}
    lines = [GAP.join(_cell(col.title, w, col) for col, w in fitted).rstrip()]
    for row_cells in cells:
        line = GAP.join(_cell(row_cells[index[id(col)]], w, col) for col, w in fitted).rstrip()
        lines.append(line)
    if width is not None:
        lines = [line[:width] for line in lines]
    return lines


# -- the header ---------------------------------------------------------------------------------------------------


def status_line(
    *,
    backend: str,
    elapsed_s: float,
    view: View,
    sort: Sort,
    paused: bool = False,
    match: str | None = None,
    hint: str = "",
    width: int | None = None,
) -> str:
    """``proctap top  bpf  up 12s  by parent  sort rate  PAUSED  filter "x"`` with ``hint`` at the right edge."""
    up = _uptime(elapsed_s)
    parts = ["proctap top", backend, f"up {up}", VIEW_TITLES[view], f"sort {sort.value}"]
    if paused:
        parts.append("PAUSED")
    if match:
        parts.append(f"filter {sanitize(match)!r}")
    text = GAP.join(parts)
    if width is None:
        return text + (GAP + hint if hint else "")
    if hint and len(text) + len(hint) + 2 <= width:
        return text + " " * (width - len(text) - len(hint)) + hint
    return text[:width]


def _uptime(seconds: float) -> str:
    """``0s``, ``59s``, ``1m02s``, ``1h02m``: whole seconds, so the status line does not flicker."""
    secs = int(seconds)
    if secs < 60:
        return f"{secs}s"
    if secs < 3600:
        return f"{secs // 60}m{secs % 60:02d}s"
    return f"{secs // 3600}h{secs % 3600 // 60:02d}m"


def header_lines(head: Header, width: int | None, *, unavailable: frozenset[str] = frozenset(),
                 compact: bool = False) -> list[str]:  # fmt: skip
    """The machine-wide rates: a small table of counters (forks, execs, exits, failed forks, threads, lost) by
    window (per second) and in total, or with ``compact`` one line of the first window's rates and the lost count.
    Counters the backend cannot report (``unavailable``) read ``-``.  The lost count is always there."""
    names = Header.COUNTERS

    def value(name: str, text: str) -> str:
        return "-" if name in unavailable else text

    lost = _lost_text(head)
    if compact:
        parts = [f"{_SHORT_LABELS[n]} {value(n, format_rate(head.rates[_FIRST][n]))}/s" for n in names if n != "lost"]
        line = " ".join(parts) + f"  {lost}"
        if width is not None and len(line) > width:  # keep the lost count visible: cut the rates, not it
            line = line[: max(width - len(lost) - 2, 0)].rstrip() + "  " + lost
            line = line[-width:] if len(line) > width else line
        return [line]
    col = 9
    lines = ["".ljust(10) + "".join(COUNTER_LABELS[n].rjust(col) for n in names)]
    for window in WINDOWS_S:
        cells = "".join(value(n, format_rate(head.rates[window][n])).rjust(col) for n in names)
        lines.append(f"per s {window}s".ljust(10) + cells)
    lines.append("total".ljust(10) + "".join(value(n, format_count(head.totals[n])).rjust(col) for n in names))
    if head.lost_unknown:
        lines[-1] += f"  +{head.lost_unknown} overrun{'s' if head.lost_unknown != 1 else ''} of unknown size"
    if width is not None:
        lines = [line[:width] for line in lines]
    return lines


def _lost_text(head: Header) -> str:
    text = f"lost {format_count(head.totals['lost'])}"
    if head.lost_unknown:
        text += f"+{head.lost_unknown}?"
    return text
