"""Capture what a kprobe-capable kernel says about proctap's probes, for the parser tests that run anywhere.

Run in the VM (its host fs is read-only, so the files are printed between markers and cut out of the console log):

    PROCTAP_VM_CMD='python tests/vm/capture_kprobe_data.py' tests/vm/run
    PYTHONPATH=src python3 tests/vm/capture_kprobe_data.py --extract \
        tests/artifacts/vm-console.log tests/data/kprobe-6.1

Defines proctap's real probe set (owner: this process), "stale" sets (a pid that does not exist; this pid with
another start time), and one foreign probe, forks a little, and prints dynamic_events, kprobe_events,
kprobe_profile and the events' formats.
Everything it defines is removed before it exits.
"""

from __future__ import annotations

import os
import sys

from proctap.linux.tracefs import kprobe_events as kprobes

TRACING = "/sys/kernel/tracing"
STALE_OWNER = 4_000_000  # far above the VM's pid_max: never alive


def write(path: str, text: str) -> None:
    fd = os.open(os.path.join(TRACING, path), os.O_WRONLY | os.O_APPEND)
    try:
        os.write(fd, (text + "\n").encode())
    finally:
        os.close(fd)


def read(path: str) -> str:
    with open(os.path.join(TRACING, path)) as f:
        return f.read()


def read_proc_stat(pid: int) -> list[str]:
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rpartition(")")[2].split()[1:]


def definitions(names: kprobes.ProbeNames) -> list[str]:
    machine, release = os.uname().machine, os.uname().release
    return [
        kprobes.fork_entry_probe(names, "kernel_clone", release, machine),
        kprobes.fork_return_probe(names, "kernel_clone", 20),
        kprobes.exit_probe(names, machine),
        kprobes.exit_group_probe(names, "taskstats_exit", machine),
    ]


def capture() -> None:
    pid = os.getpid()
    start = int(read_proc_stat(pid)[18])  # field 22, starttime
    mine = kprobes.ProbeNames(pid, start)
    stale = kprobes.ProbeNames(STALE_OWNER, 1)
    reused = kprobes.ProbeNames(pid, start + 1, 1)  # this pid, but another process's start time: a reused pid
    foreign = "p:someone_else/probe do_exit"
    lines = [*definitions(mine), *definitions(stale), *definitions(reused), foreign]
    try:
        for line in lines:
            write("kprobe_events", line)
        write(f"events/{mine.group}/enable", "1")
        for _ in range(5):
            pid = os.fork()
            if pid == 0:
                os._exit(3)
            os.waitpid(pid, 0)
        write(f"events/{mine.group}/enable", "0")
        files = {name: read(name) for name in ("dynamic_events", "kprobe_events", "kprobe_profile")}
        for event in mine.all():
            files[f"format.{event.split('_')[0]}"] = read(f"events/{mine.group}/{event}/format")
        for name, text in files.items():
            print(f"=== FILE {name}\n{text}=== END", flush=True)
    finally:
        for event in kprobes.parse_dynamic_events(read("kprobe_events")):
            if event.group in (mine.group, stale.group, reused.group, "someone_else"):
                write("kprobe_events", kprobes.removal_command(event.group, event.event))


def extract(log_path: str, out_dir: str) -> None:
    os.makedirs(out_dir, exist_ok=True)
    name = None
    chunks: list[str] = []
    with open(log_path, errors="replace") as f:
        for line in f:
            line = line.replace("\r", "")
            if line.startswith("=== FILE "):
                name, chunks = line[len("=== FILE ") :].strip(), []
            elif line.startswith("=== END") and name is not None:
                with open(os.path.join(out_dir, name), "w") as out:
                    out.write("".join(chunks))
                name = None
            elif name is not None:
                chunks.append(line)


if __name__ == "__main__":
    if sys.argv[1:2] == ["--extract"]:
        extract(sys.argv[2], sys.argv[3])
    else:
        capture()
