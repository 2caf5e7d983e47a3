"""The interactive screen of ``proctap top``: key handling, the frame's layout, and curses.

Three layers, so that only the last needs a terminal:

* :class:`State` turns keys into what to show (view, sort, pause, the filter prompt, help, quit);
* :func:`compose` lays a frame out for a terminal size: a list of (text, style) lines, from the aggregator's header
  and rows (:mod:`proctap.top.table` writes the text);
* :class:`Screen` (curses, from the standard library) draws a frame and reads keys; entering it sets the terminal up,
  leaving it (on any exception too) gives the terminal back as it was.
"""

from __future__ import annotations

import contextlib
import curses
import os
from collections.abc import Sequence
from dataclasses import dataclass
from types import TracebackType

from ..text import sanitize
from .aggregate import Aggregator, Sort, View
from .table import header_lines, status_line, table_lines

__all__ = ["HELP", "Frame", "Screen", "State", "compose"]

Frame = list[tuple[str, str]]  # (text, style): style is one of STYLES
STYLES = ("title", "header", "alert", "columns", "row", "ended", "footer", "prompt", "help")

_VIEW_KEYS = {
    ord("p"): View.PARENT,
    ord("1"): View.PARENT,
    ord("e"): View.PROGRAM,
    ord("2"): View.PROGRAM,
    ord("c"): View.CGROUP,
    ord("3"): View.CGROUP,
    ord("f"): View.FAILURES,
    ord("4"): View.FAILURES,
}
_VIEWS = list(View)
_ENTER = (10, 13, curses.KEY_ENTER)
_BACKSPACE = (8, 127, curses.KEY_BACKSPACE)
_ESC = 27
_CTRL_L = 12
_MAX_FILTER = 200

HELP = [
    "proctap top: who is spawning what, right now",
    "",
    "Views",
    "  p or 1   by parent: the processes that fork (default)",
    "  e or 2   by program: what the new processes run",
    "  c or 3   by cgroup: where they run (the bpf backend knows; others show 'unknown')",
    "  f or 4   failures: failed forks by errno and caller, bad exits by program and status",
    "  Tab, arrows  next / previous view",
    "",
    "Sorting and display",
    "  r        sort by rate (the last second)      t   sort by total (since the start)",
    "  s        switch between the two",
    "  space    pause the display (events are still counted)",
    "  /        filter rows by text (pid, name, program); Enter applies, Esc cancels; Esc clears it",
    "  Ctrl-L   redraw",
    "",
    "  q        quit                                ?   this help (any key closes it)",
    "",
    "Columns: CHILD/s, START/s, FORK/s, FAIL/s are per second over the last second; 10s-AVG over ten seconds;",
    "TOTAL since the start; MEDIAN the median lifetime of the children that ended; FAILED the ones that exited",
    "non-zero or were killed by a signal; FORKERR failed forks by errno.  The header's lost count is the events",
    "the kernel dropped: when it is not 0, the figures are short by that much.",
]

_FOOTER = "p parent  e program  c cgroup  f failures  r/t sort  space pause  / filter  ? help  q quit"


@dataclass
class State:
    """What the user asked to see.  :meth:`key` applies one key and says whether the screen must be redrawn."""

    view: View = View.PARENT
    sort: Sort = Sort.RATE
    paused: bool = False
    match: str | None = None  # the display filter
    prompt: str | None = None  # the filter being typed (None: not typing)
    help: bool = False
    quit: bool = False
    clear: bool = False  # repaint everything (Ctrl-L)

    def key(self, ch: int) -> bool:
        if self.prompt is not None:
            return self._prompt_key(ch)
        if self.help:  # any key closes the help; q still quits
            self.help = False
            self.quit = ch in (ord("q"), ord("Q"))
            return True
        if ch in (ord("q"), ord("Q")):
            self.quit = True
        elif ch in (ord("?"), ord("h")):
            self.help = True
        elif ch in _VIEW_KEYS:
            self.view = _VIEW_KEYS[ch]
        elif ch in (9, curses.KEY_RIGHT):
            self.view = _VIEWS[(_VIEWS.index(self.view) + 1) % len(_VIEWS)]
        elif ch in (curses.KEY_BTAB, curses.KEY_LEFT):
            self.view = _VIEWS[(_VIEWS.index(self.view) - 1) % len(_VIEWS)]
        elif ch == ord("r"):
            self.sort = Sort.RATE
        elif ch == ord("t"):
            self.sort = Sort.TOTAL
        elif ch == ord("s"):
            self.sort = Sort.TOTAL if self.sort is Sort.RATE else Sort.RATE
        elif ch == ord(" "):
            self.paused = not self.paused
        elif ch == ord("/"):
            self.prompt = self.match or ""
        elif ch == _ESC:
            self.match = None
        elif ch == _CTRL_L:
            self.clear = True
        else:
            return ch == curses.KEY_RESIZE
        return True

    def _prompt_key(self, ch: int) -> bool:
        assert self.prompt is not None
        if ch in _ENTER:
            self.match = self.prompt.strip() or None
            self.prompt = None
        elif ch == _ESC:
            self.prompt = None
        elif ch in _BACKSPACE:
            self.prompt = self.prompt[:-1]
        elif 32 <= ch < 0x110000 and ch not in range(0xD800, 0xE000) and chr(ch).isprintable():
            if len(self.prompt) < _MAX_FILTER:
                self.prompt += chr(ch)
        elif ch != curses.KEY_RESIZE:
            return False
        return True


def compose(
    aggregator: Aggregator,
    state: State,
    now_ns: int,
    height: int,
    width: int,
    *,
    backend: str,
    unavailable: frozenset[str] = frozenset(),
) -> Frame:
    """One frame for a ``height`` x ``width`` terminal: the status line, the machine-wide rates (a table when there
    is room, else one line), the view's table as far as it fits, and the footer (key hints, or the filter prompt).
    The lost count is on every frame, however small."""
    head = aggregator.header(now_ns)
    if height < 3 or width < 20:  # too small for a table: the lost count, and as much of the rest as fits
        lost = header_lines(head, None, compact=True)[0].rsplit("  ", 1)[-1]
        small = next((t for t in (f"proctap top: {lost} (too small)", f"top: {lost}") if len(t) <= width), lost)
        return [(small[:width], "alert" if head.totals["lost"] or head.lost_unknown else "title")]
    title = status_line(
        backend=backend,
        elapsed_s=head.elapsed_s,
        view=state.view,
        sort=state.sort,
        paused=state.paused,
        match=state.match,
        hint="? help",
        width=width,
    )
    frame: Frame = [(title, "title")]
    full = height >= 14 and width >= 64
    lost_style = "alert" if head.totals["lost"] or head.lost_unknown else "header"
    lines = header_lines(head, width, unavailable=unavailable, compact=not full)
    if full:
        frame += [(line, "header") for line in lines[:-1]] + [(lines[-1], lost_style)]
    else:
        frame.append((lines[0], lost_style))
    room = height - len(frame) - 1  # the footer takes the last line
    if state.help:
        frame += [(line[:width], "help") for line in HELP[: max(room, 0)]]
    elif room >= 1:
        rows = aggregator.rows(state.view, now_ns, sort=state.sort, limit=room - 1, match=state.match)
        text = table_lines(rows, state.view, width)
        frame.append((text[0], "columns"))
        for row, line in zip(rows, text[1:], strict=True):
            frame.append((line, "ended" if row.ended else "row"))
        if not rows and room >= 2:
            empty = f"(no rows match {sanitize(state.match)!r})" if state.match else _EMPTY[state.view]
            frame.append((empty[:width], "ended"))
    frame += [("", "row")] * max(height - 1 - len(frame), 0)
    if state.prompt is not None:
        frame.append((("filter: " + sanitize(state.prompt) + "_")[-width:], "prompt"))
    else:
        frame.append((_FOOTER[:width], "footer"))
    return frame[:height]


_EMPTY = {
    View.PARENT: "(no process has forked yet)",
    View.PROGRAM: "(no process has started a program yet)",
    View.CGROUP: "(no fork seen yet)",
    View.FAILURES: "(no failed fork and no bad exit so far)",
}


class Screen:
    """curses set up for ``proctap top``: no echo, keys as they are typed (cbreak), no blocking reads, no cursor.

    ``with Screen(color=...) as screen``: leaving the block (normally, by an exception, after a signal) restores the
    terminal.  Raises curses.error when the terminal cannot be used (no TERM, an unknown one).
    """

    def __init__(self, *, color: bool) -> None:
        self.want_color = color
        self.window: curses.window | None = None
        self.attrs: dict[str, int] = {}

    def __enter__(self) -> Screen:
        for name in ("LINES", "COLUMNS"):  # the terminal's own size (followed on resize), not a stale variable
            os.environ.pop(name, None)
        self.window = curses.initscr()
        try:
            curses.noecho()
            curses.cbreak()
            self.window.keypad(True)
            self.window.nodelay(True)
            with contextlib.suppress(curses.error):
                curses.curs_set(0)
            with contextlib.suppress(curses.error, AttributeError):
                curses.set_escdelay(25)  # Esc acts at once (the default waits a second for an escape sequence)
            self.attrs = self._attributes()
        except BaseException:
            self._restore()
            raise
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._restore()

    def _restore(self) -> None:
        if self.window is None:
            return
        with contextlib.suppress(curses.error):
            self.window.keypad(False)
        with contextlib.suppress(curses.error):
            curses.nocbreak()
        with contextlib.suppress(curses.error):
            curses.echo()
        with contextlib.suppress(curses.error):
            curses.curs_set(1)
        with contextlib.suppress(curses.error):
            curses.endwin()
        self.window = None

    def _attributes(self) -> dict[str, int]:
        attrs = {
            "title": curses.A_REVERSE,
            "header": curses.A_NORMAL,
            "alert": curses.A_BOLD,
            "columns": curses.A_BOLD | curses.A_UNDERLINE,
            "row": curses.A_NORMAL,
            "ended": curses.A_DIM,
            "footer": curses.A_REVERSE,
            "prompt": curses.A_BOLD,
            "help": curses.A_NORMAL,
        }
        if self.want_color and curses.has_colors():
            with contextlib.suppress(curses.error):
                curses.start_color()
                curses.use_default_colors()
                curses.init_pair(1, curses.COLOR_RED, -1)
                curses.init_pair(2, curses.COLOR_CYAN, -1)
                attrs["alert"] = curses.color_pair(1) | curses.A_BOLD
                attrs["columns"] = curses.color_pair(2) | curses.A_BOLD
        return attrs

    @property
    def size(self) -> tuple[int, int]:
        """(height, width) as curses knows it."""
        assert self.window is not None
        return self.window.getmaxyx()  # type: ignore[return-value]

    def resize(self) -> None:
        """After SIGWINCH: learn the terminal's new size from the kernel and start from a blank screen."""
        assert self.window is not None
        try:
            size = os.get_terminal_size(1)
        except OSError:
            return
        with contextlib.suppress(curses.error):
            curses.resizeterm(max(size.lines, 1), max(size.columns, 1))
        self.window.clear()

    def read_keys(self) -> list[int]:
        """The keys typed since the last call (never blocks)."""
        assert self.window is not None
        out = []
        while True:
            try:
                ch = self.window.get_wch()
            except curses.error:  # nothing more
                break
            out.append(ord(ch) if isinstance(ch, str) else ch)
            if len(out) > 256:
                break
        return out

    def draw(self, frame: Sequence[tuple[str, str]], *, clear: bool = False) -> None:
        """Show a frame (lines past the window are dropped, long lines cut)."""
        window = self.window
        assert window is not None
        height, width = window.getmaxyx()
        if clear:
            window.clear()
        window.erase()
        for y, (text, style) in enumerate(frame[:height]):
            attr = self.attrs.get(style, curses.A_NORMAL)
            line = text[:width]
            if style in ("title", "footer"):
                line = line.ljust(width)
            with contextlib.suppress(curses.error):  # the bottom-right cell cannot be written without an error
                window.addstr(y, 0, line, attr)
        with contextlib.suppress(curses.error):  # a terminal gone (SIGHUP follows) or too small for the frame
            window.noutrefresh()
            curses.doupdate()
