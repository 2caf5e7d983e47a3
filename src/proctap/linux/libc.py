"""The C library through ctypes: loaded once, and one way to call it.

``ctypes.CDLL(None)`` is the libc already mapped into the interpreter; ``ctypes.util.find_library("c")`` would run
ldconfig in a child process.  Every wrapper under :mod:`proctap.linux` calls libc through :func:`call`, which
retries EINTR and raises ``OSError(errno, strerror)`` in one place.
"""

from __future__ import annotations

import ctypes
import errno
import os
from collections.abc import Sequence
from typing import Any

__all__ = ["LIBC", "call", "function"]

LIBC = ctypes.CDLL(None, use_errno=True)

CFunction = Any
"""A ctypes foreign function (``ctypes._CFuncPtr`` has no public type)."""


def function(name: str, argtypes: Sequence[Any] | None, restype: Any = ctypes.c_int) -> CFunction | None:
    """The libc function ``name`` with its prototype set, or None when this libc lacks it.  ``argtypes`` None
    leaves the arguments unchecked (variadic functions such as ``syscall``: wrap each argument in its ctypes type).

    Each call returns a fresh function object (``LIBC[name]``, not ``LIBC.name``, which ctypes caches), so two
    callers may give the same variadic function (``syscall``, ``ioctl``) different prototypes.
    """
    try:
        func = LIBC[name]
    except AttributeError:
        return None
    if argtypes is not None:
        func.argtypes = tuple(argtypes)
    func.restype = restype
    return func


def call(func: CFunction, *args: Any, retry: tuple[int, ...] = ()) -> int:
    """``func(*args)``; retried on EINTR (and on the errnos in ``retry``); ``OSError(errno, strerror)`` when it
    returns -1.  Returns the function's (non-negative) result."""
    while True:
        result = int(func(*args))
        if result != -1:
            return result
        err = ctypes.get_errno()
        if err != errno.EINTR and err not in retry:
            raise OSError(err, os.strerror(err))
