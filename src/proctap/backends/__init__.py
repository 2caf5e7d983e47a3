"""The backend registry: names, the auto choice, and why a backend does not work here."""

from __future__ import annotations

import importlib

from ..errors import BackendUnavailable, ProctapError
from .base import (
    DEFAULT_ARGV_LIMIT,
    MAX_ARGV_LIMIT,
    Availability,
    Backend,
    BackendConfig,
    BackendOption,
    Feature,
    OptionsSpec,
    check_options,
)

__all__ = [
    "AUTO_ORDER",
    "BACKENDS",
    "DEFAULT_ARGV_LIMIT",
    "MAX_ARGV_LIMIT",
    "Availability",
    "Backend",
    "BackendConfig",
    "BackendOption",
    "Feature",
    "OptionsSpec",
    "backend_class",
    "check_options",
    "choose_backend",
    "probe_all",
]

# name -> "module:Class", imported only when used so a broken backend cannot break the others.
BACKENDS: dict[str, str] = {
    "bpf": "proctap.backends.bpf:BpfBackend",
    "netlink": "proctap.backends.netlink:NetlinkBackend",
    "tracefs": "proctap.backends.tracefs:TracefsBackend",
    "kprobe": "proctap.backends.kprobe:KprobeBackend",
    "proc": "proctap.backends.proc:ProcScanBackend",
}

# The order in which backend="auto" tries them: richest first, the unprivileged /proc fallback last.
AUTO_ORDER = ("bpf", "netlink", "tracefs", "kprobe", "proc")


def backend_class(name: str) -> type[Backend]:
    """The class of a backend by name; ProctapError for unknown names."""
    try:
        target = BACKENDS[name]
    except KeyError:
        known = ", ".join(BACKENDS)
        raise ProctapError(f"unknown backend {name!r}: choose one of {known} or auto") from None
    module_name, _, class_name = target.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise BackendUnavailable(f"backend {name!r} is not built into this proctap ({exc})") from None
    cls: type[Backend] = getattr(module, class_name)
    return cls


def probe(name: str) -> Availability:
    try:
        return backend_class(name).probe()
    except BackendUnavailable as exc:
        return Availability(False, str(exc))


def probe_all() -> dict[str, Availability]:
    """Every known backend and whether it works here."""
    return {name: probe(name) for name in BACKENDS}


def choose_backend(name: str = "auto") -> type[Backend]:
    """The class for ``name``, or for "auto" the first backend in AUTO_ORDER that works here.

    Raises BackendUnavailable with the reasons when the named backend (or every backend) cannot work.
    """
    if name != "auto":
        cls = backend_class(name)
        availability = cls.probe()
        if not availability:
            working = [n for n in AUTO_ORDER if n != name and probe(n)]
            hint = f"; backends that work here: {', '.join(working)}" if working else ""
            raise BackendUnavailable(f"backend {name!r} unavailable: {availability.reason}{hint}")
        return cls
    reasons = []
    for candidate in AUTO_ORDER:
        availability = probe(candidate)
        if availability:
            return backend_class(candidate)
        reasons.append(f"{candidate}: {availability.reason}")
    raise BackendUnavailable("no backend works here (" + "; ".join(reasons) + ")")
