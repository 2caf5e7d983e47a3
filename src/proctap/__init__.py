"""proctap: know the moment a Linux task is created, exec'd or destroyed.

>>> import proctap
>>> with proctap.watch(events="exec,exit") as w:      # doctest: +SKIP
...     for ev in w:
...         print(ev.kind, ev.pid, ev)
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .backends import Availability, Backend, BackendConfig, Feature, choose_backend, probe_all
from .cache import Process, ProcessCache
from .errors import BackendUnavailable, DecodeError, ProctapError
from .events import (
    Accounting,
    Comm,
    Container,
    Coredump,
    Event,
    EventKind,
    Exec,
    ExecFailed,
    Existing,
    Exit,
    Fork,
    ForkFailed,
    Gid,
    Lost,
    Namespaces,
    Origin,
    Ptrace,
    Sid,
    TaskKey,
    Uid,
    Where,
    decode_wait_status,
    event_from_dict,
)
from .watcher import AsyncWatcher, Watcher, WatchStats, awatch, settle_for_storms, watch

__version__ = "0.1.0"

__all__ = [
    "Accounting",
    "AsyncWatcher",
    "Availability",
    "Backend",
    "BackendConfig",
    "BackendUnavailable",
    "Comm",
    "Container",
    "Coredump",
    "DecodeError",
    "Event",
    "EventKind",
    "Exec",
    "ExecFailed",
    "Existing",
    "Exit",
    "Feature",
    "Fork",
    "ForkFailed",
    "Gid",
    "Lost",
    "Namespaces",
    "Origin",
    "Process",
    "ProcessCache",
    "ProctapError",
    "Ptrace",
    "Sid",
    "TaskKey",
    "Uid",
    "WatchStats",
    "Watcher",
    "Where",
    "__version__",
    "awatch",
    "choose_backend",
    "decode_wait_status",
    "event_from_dict",
    "export",
    "probe_all",
    "settle_for_storms",
    "watch",
]

if TYPE_CHECKING:
    from . import export


def __getattr__(name: str) -> object:
    """``proctap.export`` (OTLP, Prometheus) is imported on first use: it pulls in urllib and http.server."""
    if name == "export":
        import importlib

        return importlib.import_module(".export", __name__)
    raise AttributeError(f"module 'proctap' has no attribute {name!r}")
