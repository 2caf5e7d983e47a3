"""Capture tracefs description files and raw ring-buffer pages of a small known workload into tests/data/tracefs/
(run as root).

Writes ``formats/<system>__<event>.format``, ``header_page``, ``header_event``, ``pages.bin`` (records: u32 cpu,
u32 length, page bytes) and ``workload.json`` (the facts the parser tests check decoded fields against).
"""

from __future__ import annotations

import json
import os
import platform
import select
import struct
import sys
import threading
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "src"))
from proctap.linux.tracefs.instance import Instance, find_tracefs
from proctap.linux.tracefs.reader import read_pages

OUT = os.path.join(os.path.dirname(__file__), "..", "data", "tracefs")
EVENTS = [
    ("task", "task_newtask"),
    ("sched", "sched_process_fork"),
    ("sched", "sched_process_exec"),
    ("sched", "sched_process_exit"),
    ("syscalls", "sys_enter_exit"),
    ("syscalls", "sys_enter_exit_group"),
    ("syscalls", "sys_exit_clone"),
    ("signal", "signal_generate"),
    ("signal", "signal_deliver"),
]


def main() -> None:
    root = find_tracefs()
    assert root is not None, "tracefs not mounted"
    inst = Instance(root, "proctap")
    try:
        inst.write("buffer_percent", "0")
        inst.set_trace_clock("mono")
        os.makedirs(os.path.join(OUT, "formats"), exist_ok=True)
        for name in ("header_page", "header_event"):
            with open(os.path.join(OUT, name), "w") as f:
                f.write(inst.read(f"events/{name}"))
        for system, event in EVENTS:
            with open(os.path.join(OUT, "formats", f"{system}__{event}.format"), "w") as f:
                f.write(inst.read(f"events/{system}/{event}/format"))
            inst.enable_event(system, event, "common_pid != 0")
        pipes = inst.open_pipes(inst.cpus())
        facts = workload()
        facts["kernel"] = platform.release()
        pages = []
        page_size = inst.page_layout().page_size
        for cpu, fd in pipes.items():
            pages.extend(struct.pack("=II", cpu, len(buf)) + buf for buf in read_pages(fd, page_size))
        with open(os.path.join(OUT, "pages.bin"), "wb") as f:
            f.write(b"".join(pages))
        facts["overrun_pages"] = capture_overrun(root)
        with open(os.path.join(OUT, "workload.json"), "w") as f:
            json.dump(facts, f, indent=1)
        print(f"{len(pages)} pages, facts {facts}")
    finally:
        inst.remove()


def capture_overrun(root: str) -> int:
    """A 4 KiB per-CPU buffer, 300 forks with nobody reading: pages flagged RB_MISSED_EVENTS -> pages_overrun.bin."""
    inst = Instance(root, "proctap")
    try:
        inst.write("buffer_size_kb", "4")
        inst.set_trace_clock("mono")
        inst.enable_event("task", "task_newtask")
        inst.enable_event("sched", "sched_process_exit")
        pipes = inst.open_pipes(inst.cpus())
        for _ in range(300):
            child = os.fork()
            if child == 0:
                os._exit(0)
            os.waitpid(child, 0)
        pages = []
        page_size = inst.page_layout().page_size
        for cpu, fd in pipes.items():
            pages.extend(struct.pack("=II", cpu, len(buf)) + buf for buf in read_pages(fd, page_size))
        with open(os.path.join(OUT, "pages_overrun.bin"), "wb") as f:
            f.write(b"".join(pages))
        return len(pages)
    finally:
        inst.remove()


def workload() -> dict[str, object]:
    """A process that exits 3; a thread; an exec of /bin/true; a child killed by SIGKILL."""
    facts: dict[str, object] = {"capturer": os.getpid()}
    # one CPU and pauses longer than 2**27 ns between steps: the pages then hold time-extend events
    os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
    facts["t_start"] = time.monotonic_ns()
    child = os.fork()
    if child == 0:
        os._exit(3)
    os.waitpid(child, 0)
    facts["exit3"] = child
    facts["t_exit3"] = time.monotonic_ns()
    time.sleep(0.3)
    facts["t_thread"] = time.monotonic_ns()
    t = threading.Thread(target=lambda: None)
    t.start()
    t.join()
    facts["thread"] = t.native_id
    time.sleep(0.3)
    child = os.fork()
    if child == 0:
        os.execv("/bin/true", ["true"])
    os.waitpid(child, 0)
    facts["exec_true"] = child
    r, _w = os.pipe()
    child = os.fork()
    if child == 0:
        select.select([r], [], [])
        os._exit(0)
    os.kill(child, 9)
    os.waitpid(child, 0)
    facts["killed"] = child
    facts["t_end"] = time.monotonic_ns()
    return facts


if __name__ == "__main__":
    main()
