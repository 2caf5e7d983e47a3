#!/usr/bin/env python3
"""What the process cache costs in memory with many live processes, and what context costs per event.

A holder process (a few lines of C, built here with gcc) forks ``--processes`` children that sleep in pause(), so
that many processes are alive at once.  Then ``proctap watch --json`` starts on the whole machine, plain, with
``--context`` (the cache learns every process from /proc at the start) and with ``--snapshot --ancestry`` (each is
also printed, with its ancestry), a churn of short processes runs beside, and each watcher's peak RSS (VmHWM) and
CPU are printed.  The holder's
children are killed at the end.  Numbers only: this asserts nothing.

The kernel's pid_max must leave room: if it is below ``--processes`` + 32768 it is raised for the run and put back.

Run as root: ``python3 bench/cache_memory.py [--processes 30000] [--backend auto]``.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PROCTAP = [sys.executable, "-m", "proctap"]
ENV = {**os.environ, "PYTHONPATH": str(REPO / "src")}
PID_MAX = Path("/proc/sys/kernel/pid_max")

HOLDER_C = r"""
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>
int main(int argc, char **argv) {
    int n = atoi(argv[1]);
    for (int i = 0; i < n; i++) {
        pid_t pid = fork();
        if (pid == 0) { pause(); _exit(0); }
        if (pid < 0) { perror("fork"); break; }
    }
    printf("ready\n");
    fflush(stdout);
    pause();
    return 0;
}
"""


def build_holder(workdir: Path) -> Path:
    if shutil.which("gcc") is None:
        subprocess.run([str(REPO / "bench" / "setup")], check=True)
    src, exe = workdir / "holder.c", workdir / "holder"
    src.write_text(HOLDER_C)
    subprocess.run(["gcc", "-O2", "-o", str(exe), str(src)], check=True)
    return exe


def peak_rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return 0


def measure(args: list[str], backend: str, churn_s: float) -> tuple[int, float]:
    """Peak RSS (KiB) and CPU seconds of ``proctap watch --json ARGS`` over a snapshot and ``churn_s`` of churn."""
    cmd = [*PROCTAP, "watch", "--json", "-q", "-b", backend, *args]
    with open(os.devnull, "wb") as null:
        proc = subprocess.Popen(cmd, stdout=null, stderr=subprocess.PIPE, env=ENV)
        time.sleep(3.0)  # start-up and the snapshot of every process
        churn = subprocess.Popen(["sh", "-c", "while :; do /bin/true; done"])
        time.sleep(churn_s)
        churn.kill()
        churn.wait()
        time.sleep(0.5)
        rss = peak_rss_kb(proc.pid)
        proc.send_signal(signal.SIGINT)
        _, _, usage = os.wait4(proc.pid, 0)
    return rss, usage.ru_utime + usage.ru_stime


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--processes", type=int, default=30000, help="live processes to hold (default 30000)")
    parser.add_argument("--backend", default="auto", help="proctap backend (default auto)")
    parser.add_argument("--churn", type=float, default=5.0, help="seconds of /bin/true churn per run (default 5)")
    args = parser.parse_args()
    old_pid_max = int(PID_MAX.read_text())
    wanted = args.processes + 32768  # room for everything else on the machine
    with tempfile.TemporaryDirectory(prefix="proctap-cache-memory-") as tmp:
        holder_exe = build_holder(Path(tmp))
        if old_pid_max < wanted:
            PID_MAX.write_text(str(wanted))
        holder = subprocess.Popen([str(holder_exe), str(args.processes)], stdout=subprocess.PIPE, text=True)
        try:
            assert holder.stdout is not None
            holder.stdout.readline()
            live = len([p for p in os.listdir("/proc") if p.isdigit()])
            print(f"live processes on the machine: {live}")
            variants = (
                ("plain watch --json", []),
                ("--context", ["--context"]),
                ("--snapshot --ancestry", ["--snapshot", "--ancestry"]),
            )
            for label, extra in variants:
                rss, cpu = measure(extra, args.backend, args.churn)
                print(f"{label:<24} peak RSS {rss / 1024:6.1f} MB   CPU {cpu:6.2f} s")
        finally:
            subprocess.run(["pkill", "-KILL", "-P", str(holder.pid)], check=False)
            holder.kill()
            holder.wait()
            if old_pid_max < wanted:
                PID_MAX.write_text(str(old_pid_max))
    return 0


if __name__ == "__main__":
    sys.exit(main())
