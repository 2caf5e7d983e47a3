#!/usr/bin/env python3
"""What OTLP export costs: a fork storm watched by ``proctap watch``, once without export and once exporting to a
real collector (rotel-agent, from the ``rotel`` PyPI package, on loopback), and the figures docs/fleet.md quotes.

Usage (root):  python3 bench/export_cost.py [--tasks 100000] [--backend bpf] [--runs 1] [--json]

Each run: bench/loadgen forks N children that exit at once (waiting for a go so proctap subscribes first);
``proctap watch -p LOADGEN --json --output /dev/null --stats`` follows exactly that subtree (2N+1 events: N forks,
N + 1 exits), and with export adds ``--otlp`` to rotel (which discards what it receives: the ``blackhole`` exporter)
and ``--metrics``, polled until the export queue is empty.  Printed per configuration:

- seen: the storm's events proctap delivered, of the 2N+1 that happened (100% expected with bpf);
- proctap CPU (user+system, from wait4) in total and per 1k events; the difference is what export costs;
- export: events the collector accepted, and per second from the storm's start until the queue was empty; bytes
  sent (gzip) in total, per event and per second; the queue's high-water mark; requests; rotel's own CPU.

A benchmark prints numbers; it asserts nothing about them.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
sys.path.insert(0, str(BENCH))
sys.path.insert(0, str(ROOT / "src"))

from run import build_loadgen  # noqa: E402  (bench/run.py: builds bench/build/loadgen)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_listening(port: int, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise RuntimeError(f"nothing listens on port {port}")


def cpu_of(usage: Any) -> float:
    return float(usage.ru_utime + usage.ru_stime)


def rotel_agent() -> Path:
    try:
        import rotel
    except ImportError:
        sys.exit("export_cost: needs the rotel package (pip install -e '.[test]')")
    return Path(rotel.__file__).resolve().parent / "rotel-agent"


def metrics(port: int) -> dict[str, float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        text = response.read().decode()
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            out[name] = float(value)
    return out


def run_once(exe: Path, n: int, backend: str, export: bool, workdir: Path) -> dict[str, Any]:
    workdir.mkdir(parents=True)
    result: dict[str, Any] = {"export": export, "tasks": n, "backend": backend}
    rotel = None
    if export:
        otlp_port, grpc_port = free_port(), free_port()
        rotel = subprocess.Popen(
            [str(rotel_agent()), "start", "--otlp-http-endpoint", f"127.0.0.1:{otlp_port}",
             "--otlp-grpc-endpoint", f"127.0.0.1:{grpc_port}", "--exporter", "blackhole",
             "--pid-file", str(workdir / "rotel.pid")],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        wait_listening(otlp_port)
    lg = subprocess.Popen([str(exe), "fork", str(n), "-w"], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    argv = [sys.executable, "-m", "proctap", "watch", "-b", backend, "-p", str(lg.pid), "--json", "--stats",
            "--output", "/dev/null"]  # fmt: skip
    metrics_port = free_port()
    if export:
        argv += ["--otlp", f"http://127.0.0.1:{otlp_port}", "--metrics", f"127.0.0.1:{metrics_port}"]
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    watch = subprocess.Popen(argv, stderr=subprocess.PIPE, env=env)
    assert watch.stderr is not None and lg.stdin is not None and lg.stdout is not None
    line = watch.stderr.readline().decode()
    if not line.startswith("proctap: watching"):
        watch.kill()
        lg.kill()
        raise RuntimeError(f"proctap watch did not start: {line!r}")
    if export:
        watch.stderr.readline()  # the export note
    started = time.monotonic()
    lg.stdin.write(b"g")
    lg.stdin.close()
    if lg.wait() != 0:  # e.g. out of pids: another storm on the machine
        watch.kill()
        if rotel is not None:
            rotel.kill()
        raise RuntimeError(f"loadgen failed (exit {lg.returncode}): {lg.stdout.read().decode().strip()}")
    result["storm_s"] = time.monotonic() - started
    expected = 2 * n + 1
    if export:
        # until the exporter has had every event it was given accepted (and its queue is empty)
        while time.monotonic() - started < 600:
            m = metrics(metrics_port)
            shown = sum(v for k, v in m.items() if k.startswith("proctap_events_total{"))
            if shown >= expected and m.get("proctap_export_sent_total", 0) >= shown:
                break
            time.sleep(0.1)
        result["export_done_s"] = time.monotonic() - started
    else:
        time.sleep(1.0)  # the last drain (latency) and the table's last events
    watch.send_signal(signal.SIGINT)
    _, _, usage = os.wait4(watch.pid, 0)
    err = watch.stderr.read().decode().splitlines()
    stats = json.loads(next(line for line in reversed(err) if line.startswith("{")))
    result["proctap_cpu_s"] = cpu_of(usage)
    result["proctap_maxrss_mib"] = usage.ru_maxrss / 1024
    result["seen"] = stats["delivered"]
    result["expected"] = expected
    result["lost"] = stats["lost"]
    if export:
        exp = stats["export"]
        result.update(
            sent=exp["sent"], bytes_sent=exp["bytes_sent"], high_water=exp["high_water"], requests=exp["requests"],
            dropped=exp["dropped"],
        )  # fmt: skip
    if rotel is not None:
        rotel.send_signal(signal.SIGTERM)
        _, _, rusage = os.wait4(rotel.pid, 0)
        result["rotel_cpu_s"] = cpu_of(rusage)
        result["rotel_maxrss_mib"] = rusage.ru_maxrss / 1024
    return result


def capacity(exe: Path, n: int, backend: str, workdir: Path) -> dict[str, Any]:
    """How fast one exporter empties a full queue into rotel: the events of a real storm of ``n`` forks (watched
    in-process), queued at once (as after a collector outage), then timed until the collector accepted them all."""
    import proctap
    from proctap.export import OtlpExporter

    workdir.mkdir(parents=True)
    lg = subprocess.Popen([str(exe), "fork", str(n), "-w"], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    assert lg.stdin is not None
    events = []
    with proctap.watch("fork,exec,exit", backend=backend, pid=lg.pid, latency=0.05) as watcher:
        lg.stdin.write(b"g")
        lg.stdin.close()
        while lg.poll() is None or len(events) < 2 * n + 1:
            events.extend(watcher.read(timeout=0.5))
            if lg.poll() is not None and not watcher.busy:
                break
    otlp_port, grpc_port = free_port(), free_port()
    rotel = subprocess.Popen(
        [str(rotel_agent()), "start", "--otlp-http-endpoint", f"127.0.0.1:{otlp_port}",
         "--otlp-grpc-endpoint", f"127.0.0.1:{grpc_port}", "--exporter", "blackhole",
         "--pid-file", str(workdir / "rotel.pid")],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    wait_listening(otlp_port)
    exporter = OtlpExporter(f"http://127.0.0.1:{otlp_port}", backend=backend, queue_size=len(events))
    cpu0 = time.process_time()
    started = time.monotonic()
    exporter.send_batch(events)
    stats = exporter.close(600)
    took = time.monotonic() - started
    cpu = time.process_time() - cpu0
    rotel.send_signal(signal.SIGTERM)
    _, _, rusage = os.wait4(rotel.pid, 0)
    return {"capacity": True, "events": len(events), "sent": stats.sent, "seconds": took, "cpu_s": cpu,
            "bytes_sent": stats.bytes_sent, "requests": stats.requests, "rotel_cpu_s": cpu_of(rusage)}  # fmt: skip


def show_capacity(r: dict[str, Any]) -> None:
    k = r["sent"] / 1000
    print(f"capacity: a queue of {r['events']} real storm events emptied into rotel in {r['seconds']:.2f}s = "
          f"{r['sent'] / r['seconds']:,.0f} events/s, {r['bytes_sent'] / r['seconds'] / 1e6:.2f} MB/s; exporter CPU "
          f"{1000 * r['cpu_s'] / k:.1f} ms per 1k events; rotel CPU {1000 * r['rotel_cpu_s'] / k:.1f} ms per 1k "
          f"events; requests {r['requests']}")  # fmt: skip


def show(r: dict[str, Any]) -> None:
    k = r["seen"] / 1000
    name = "with --otlp" if r["export"] else "no export"
    print(f"{name}: storm {r['tasks']} forks in {r['storm_s']:.2f}s; seen {r['seen']}/{r['expected']} "
          f"({100 * r['seen'] / r['expected']:.2f}%), lost {r['lost']}; proctap CPU {r['proctap_cpu_s']:.2f}s "
          f"= {1000 * r['proctap_cpu_s'] / k:.1f} ms per 1k events, "
          f"max RSS {r['proctap_maxrss_mib']:.0f} MiB")  # fmt: skip
    if r["export"]:
        t = r["export_done_s"]
        print(f"  export: {r['sent']} events accepted by rotel, all within {t:.2f}s of the storm's start = "
              f"{r['sent'] / t:,.0f} events/s; {r['bytes_sent'] / 1e6:.1f} MB sent (gzip) = "
              f"{r['bytes_sent'] / r['sent']:.1f} B/event, {r['bytes_sent'] / t / 1e6:.2f} MB/s; queue high-water "
              f"{r['high_water']}; requests {r['requests']}; dropped {r['dropped'] or 0}; rotel CPU "
              f"{r['rotel_cpu_s']:.2f}s ({1000 * r['rotel_cpu_s'] / k:.1f} ms per 1k events), "
              f"RSS {r['rotel_maxrss_mib']:.0f} MiB")  # fmt: skip


def main() -> int:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--tasks", type=int, default=100_000, help="forks in the storm (default 100000)")
    p.add_argument("--backend", default="bpf", help="proctap backend (default bpf)")
    p.add_argument("--runs", type=int, default=1, help="runs of each configuration, alternating (default 1)")
    p.add_argument("--json", action="store_true", help="also print the results as one JSON list")
    p.add_argument(
        "--capacity",
        type=int,
        default=20_000,
        metavar="N",
        help="also time how fast one exporter empties a queue of the events of an N-fork storm (0: skip)",
    )
    args = p.parse_args()
    if args.tasks < 1 or args.runs < 1:
        p.error("--tasks and --runs must be at least 1")
    if os.geteuid() != 0:
        p.error("run as root (proctap watches the kernel)")
    exe = build_loadgen()
    results = []
    with tempfile.TemporaryDirectory(prefix="proctap-export-bench-") as tmp:
        for i in range(args.runs):
            for export in (False, True):
                r = run_once(exe, args.tasks, args.backend, export, Path(tmp) / f"{i}-{export}")
                show(r)
                results.append(r)
        if args.capacity:
            r = capacity(exe, args.capacity, args.backend, Path(tmp) / "capacity")
            show_capacity(r)
            results.append(r)
    if args.json:
        print(json.dumps(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
