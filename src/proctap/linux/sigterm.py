"""Removing proctap's kernel objects (tracefs instances, kprobe events) when the process is sent SIGTERM.

Python dies of SIGTERM without running ``finally`` blocks, atexit hooks or finalizers, so the owners of kernel
objects register a closer here.  The handler is installed only when the program has none of its own (and only from
the main thread); a program with its own SIGTERM handler must close its watchers there.  Interpreter exit and
garbage collection are covered by the owners' ``weakref.finalize``.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
from collections.abc import Callable
from types import FrameType

__all__ = ["close_on_sigterm", "forget"]

_closers: dict[int, Callable[[], None]] = {}  # id(owner) -> closer, in registration order
_installed = False


def _on_sigterm(signum: int, frame: FrameType | None) -> None:
    """Close what is registered, newest first (a backend before the instance it reads), then die of SIGTERM."""
    for close in reversed(list(_closers.values())):
        with contextlib.suppress(Exception):
            close()
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    os.kill(os.getpid(), signal.SIGTERM)


def close_on_sigterm(owner: object, close: Callable[[], None]) -> None:
    """Call ``close()`` if the process is sent SIGTERM before :func:`forget` (owner)."""
    global _installed
    _closers[id(owner)] = close
    if (
        not _installed
        and threading.current_thread() is threading.main_thread()
        and signal.getsignal(signal.SIGTERM) == signal.SIG_DFL
    ):
        signal.signal(signal.SIGTERM, _on_sigterm)
        _installed = True


def forget(owner: object) -> None:
    """``owner`` closed itself: drop its closer, and restore the default SIGTERM action when none is left."""
    global _installed
    _closers.pop(id(owner), None)
    if (
        not _closers
        and _installed
        and threading.current_thread() is threading.main_thread()
        and signal.getsignal(signal.SIGTERM) is _on_sigterm
    ):
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        _installed = False
