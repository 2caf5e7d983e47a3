"""Run inside a condition (another user, a new namespace...) by tests/test_backends_probe.py: what ``proctap
backends`` says there, what ``proctap watch -b NAME`` does there, and what each backend really does there.

Usage: ``python probe_driver.py [--skip-truth NAME]... MARKER NAME...``.  MARKER is an executable (a link to
sleep) whose name the workload exec's; ``--skip-truth`` leaves out the direct construction of a backend.

Prints one JSON object: ``backends`` (the --json document), ``text`` (the text form's line of each backend), and
per backend ``watch`` (exit status and last stderr line of ``proctap watch -b NAME -d 0.5``) and ``truth``: the
backend class constructed directly, bypassing its probe, and whether it then reported an exec of MARKER
(``works``), failed to open (``error``), or opened but reported nothing of it before the deadline (``silent``).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

import proctap
from proctap.backends import backend_class
from proctap.events import Exec

TIMEOUT = float(os.environ.get("PROCTAP_TEST_TIMEOUT", "30"))


def proctap_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "proctap", *args], capture_output=True, text=True, timeout=TIMEOUT)


def is_marker(event: object, marker: str, pids: set[int]) -> bool:
    if not isinstance(event, Exec):
        return False
    name = os.path.basename(marker)
    if event.pid in pids or event.comm == name[:15]:
        return True
    return any(text is not None and os.path.basename(text) == name for text in (event.filename, *(event.argv or ())))


def truth(name: str, marker: str) -> dict[str, str]:
    """The backend opened without its probe: does it report an exec of the marker?"""
    try:
        watcher = proctap.Watcher("exec", backend=backend_class(name))
    except Exception as exc:  # what the constructor hits, whatever it is
        return {"state": "error", "detail": f"{type(exc).__name__}: {exc}"}
    pids: set[int] = set()
    children: list[subprocess.Popen[bytes]] = []
    deadline = time.monotonic() + TIMEOUT
    try:
        with watcher:
            while time.monotonic() < deadline:
                if not any(c.poll() is None for c in children):  # one marker at a time, each living a while
                    child = subprocess.Popen([marker, "0.3"])
                    children.append(child)
                    pids.add(child.pid)
                if any(is_marker(e, marker, pids) for e in watcher.read(timeout=0.1)):
                    return {"state": "works", "detail": ""}
            return {"state": "silent", "detail": f"no exec of {marker} reported within {TIMEOUT:.0f}s"}
    finally:
        for child in children:
            child.wait()


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--skip-truth", action="append", default=[])
    parser.add_argument("marker")
    parser.add_argument("names", nargs="+")
    args = parser.parse_args()
    marker, names = args.marker, args.names
    listing = proctap_cli("backends", "--json")
    text = proctap_cli("backends")
    rows: dict[str, str] = {}
    for line in text.stdout.splitlines():
        fields = line.lstrip("* ").split(None, 1)
        if fields and fields[0] in names:
            rows[fields[0]] = line
    out: dict[str, object] = {
        "backends": json.loads(listing.stdout) if listing.stdout else None,
        "backends_stderr": listing.stderr,
        "text": rows,
        "uid": os.geteuid(),
        "per_backend": {},
    }
    for name in names:
        watch = proctap_cli("watch", "-q", "-b", name, "-d", "0.5", "--json")
        lines = watch.stderr.strip().splitlines()
        out["per_backend"][name] = {  # type: ignore[index]
            "watch": {"rc": watch.returncode, "stderr": lines[-1] if lines else ""},
            "truth": {"state": "skipped", "detail": ""} if name in args.skip_truth else truth(name, marker),
        }
    json.dump(out, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
