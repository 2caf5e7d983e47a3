"""Capture raw ring buffer records of one /bin/echo run into bpf_records.bin (u32 length + record, repeated).

Run as root from the repository: ``python3 tests/data/capture_bpf_records.py``.  With ``exec_failed``: the records
of a child's failed execs (ENOENT with an awkward argv, EACCES, execveat of a descriptor, a NULL argv) into
bpf_exec_failed_records.bin instead.
"""

from __future__ import annotations

import struct
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "src"))

from proctap.backends.base import BackendConfig
from proctap.backends.bpf import BpfBackend
from proctap.events import EventKind
from proctap.linux.bpf import records as rec

EXEC_FAILED_CHILD = r"""
import ctypes, os
for path, argv in [("/nonexistent/proctap", ["tried", "", "a b", "\udcff"]), ("/etc/passwd", ["passwd"])]:
    try:
        os.execv(path, argv)
    except OSError:
        pass
fd = os.open("/etc/passwd", os.O_RDONLY)
try:
    os.execve(fd, ["by-fd"], {})
except OSError:
    pass
ctypes.CDLL(None).execve(b"/nonexistent/null-argv", None, None)
"""


def main() -> None:
    backend = BpfBackend(BackendConfig())
    ring = backend._ring
    assert ring is not None
    proc = subprocess.Popen(["/bin/echo", "captured", "", "a b"], stdout=subprocess.DEVNULL)
    proc.wait()
    time.sleep(0.2)
    out = bytearray()
    for buffer, offset, length in ring.records():
        raw = bytes(buffer[offset : offset + length])
        if rec.HEADER.unpack_from(raw)[3] == proc.pid:
            out += struct.pack("<I", length) + raw
    ring.release()
    backend.close()
    Path(__file__).with_name("bpf_records.bin").write_bytes(out)
    print(f"{len(out)} bytes")


def exec_failed() -> None:
    backend = BpfBackend(BackendConfig(events=frozenset({EventKind.EXEC_FAILED})))
    ring = backend._ring
    assert ring is not None
    proc = subprocess.Popen([sys.executable, "-c", EXEC_FAILED_CHILD])
    proc.wait()
    time.sleep(0.2)
    out = bytearray()
    for buffer, offset, length in ring.records():
        raw = bytes(buffer[offset : offset + length])
        if rec.HEADER.unpack_from(raw)[3] == proc.pid:
            out += struct.pack("<I", length) + raw
    ring.release()
    backend.close()
    Path(__file__).with_name("bpf_exec_failed_records.bin").write_bytes(out)
    print(f"{len(out)} bytes")


if __name__ == "__main__":
    exec_failed() if sys.argv[1:] == ["exec_failed"] else main()
