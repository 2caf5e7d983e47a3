"""The BTF facts proctap's programs need, cached on disk so starting does not parse BTF every time.

Parsing /sys/kernel/btf/vmlinux in Python takes ~0.16 s (126k types); reading the cache ~4 ms (bench/startup_costs.py).
The cache file is keyed by that checksum and the blob's size, so another kernel (or a rebuilt one) never reuses an
entry.  Where: ``$PROCTAP_CACHE_DIR``, else /var/cache/proctap for root, else ``$XDG_CACHE_HOME/proctap`` (or
~/.cache/proctap).  A cache that cannot be read or written is ignored: the facts are then computed each time.
"""

from __future__ import annotations

import contextlib
import json
import os
import zlib
from functools import lru_cache

from .btf import VMLINUX, Btf, vmlinux
from .programs import Layout

__all__ = ["cache_dir", "kernel_layout"]

SCHEMA = 2  # bump when Layout changes meaning


# (os.path rather than pathlib: this module is on every bpf start-up, and pathlib costs 8 ms to import)
def cache_dir() -> str:
    explicit = os.environ.get("PROCTAP_CACHE_DIR")
    if explicit:
        return explicit
    if os.geteuid() == 0:
        return "/var/cache/proctap"
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "proctap")


def _cache_file(blob: bytes) -> str:
    return os.path.join(cache_dir(), f"btf-layout-{os.uname().machine}-{len(blob)}-{zlib.crc32(blob):08x}.json")


def _load(path: str) -> Layout | None:
    try:
        with open(path) as f:
            data = json.load(f)
        if data.get("schema") != SCHEMA:
            return None
        return Layout.from_json(data["layout"])
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None


def _store(path: str, layout: Layout) -> None:
    with contextlib.suppress(OSError):
        directory, name = os.path.split(path)
        os.makedirs(directory, exist_ok=True)
        tmp = os.path.join(directory, f".tmp-{os.getpid()}-{name}")
        try:
            with open(tmp, "w") as f:
                json.dump({"schema": SCHEMA, "layout": layout.to_json()}, f)
            os.replace(tmp, path)  # atomic: a concurrent reader sees the old file or the whole new one
        except OSError:
            with contextlib.suppress(OSError):
                os.unlink(tmp)


@lru_cache(maxsize=1)
def kernel_layout() -> Layout:
    """The running kernel's :class:`Layout`: from the cache, or parsed from BTF (and then cached).

    Raises OSError when the BTF cannot be read, KeyError or DecodeError when it lacks what proctap needs.
    """
    with open(VMLINUX, "rb") as f:
        blob = f.read()
    path = _cache_file(blob)
    layout = _load(path)
    if layout is None:
        layout = Layout.from_btf(_parse(blob), os.uname().machine)
        _store(path, layout)
    return layout


def _parse(blob: bytes) -> Btf:
    # the same parse vmlinux() would do; reuse it when another part of this process already parsed BTF
    return vmlinux() if vmlinux.cache_info().currsize else Btf(blob)
