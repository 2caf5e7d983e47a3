"""``proctap backends`` says what ``proctap watch`` will find (issue 10, item 7).

Under each condition (root, nobody, capabilities granted or taken away, new network / PID / user namespaces,
tracefs or /proc unmounted, tracefs read-only), tests/probe_driver.py runs ``proctap backends`` (text and --json),
``proctap watch -b NAME -d 0.5`` and, bypassing the probe, each backend's own constructor on a workload that
exec's a marker program.  For every backend: "yes" exactly when the backend, opened directly, reports that exec
(and then ``watch`` succeeds); "no" otherwise, and then ``watch`` fails with the same reason (exit 2).

Mount changes happen in a private mount namespace (``unshare -m``, private propagation): a bind mount made
read-only there, never a remount of the tracefs superblock (that would change it for everyone).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from eventlog import TIMEOUT
from proctap.backends import BACKENDS

pytestmark = [
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root to set up the conditions"),
    pytest.mark.slow,
]

SRC = Path(__file__).resolve().parent.parent / "src"
DRIVER = Path(__file__).resolve().parent / "probe_driver.py"
ENV = {**os.environ, "PYTHONPATH": str(SRC)}
ENV.pop("PROCTAP_DEBUG", None)
TRACEFS = "/sys/kernel/tracing"
NOBODY = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]
IN_MOUNT_NS = ["unshare", "--mount", "--propagation", "private", "sh", "-c"]
THEN_EXEC = ' && exec "$0" "$@"'


@dataclass(frozen=True)
class Condition:
    name: str
    prefix: tuple[str, ...]
    tracefs_mounted: bool = True
    netlink_ignored: bool = False  # a child PID/user namespace: the kernel ignores the subscription (cn_proc.c)


CONDITIONS = [
    Condition("root", ()),
    Condition("nobody", tuple(NOBODY)),
    Condition("root-without-capabilities", ("setpriv", "--bounding-set=-all", "--inh-caps=-all", "--no-new-privs")),
    Condition("nobody-with-CAP_DAC_OVERRIDE", (*NOBODY, "--inh-caps=+dac_override", "--ambient-caps=+dac_override")),
    Condition("nobody-with-CAP_BPF-CAP_PERFMON", (*NOBODY, "--inh-caps=+bpf,+perfmon", "--ambient-caps=+bpf,+perfmon")),
    Condition("nobody-with-CAP_NET_ADMIN", (*NOBODY, "--inh-caps=+net_admin", "--ambient-caps=+net_admin")),
    Condition("new-network-namespace", ("unshare", "--net")),
    Condition("child-pid-namespace", ("unshare", "--pid", "--fork"), netlink_ignored=True),
    Condition("child-pid-namespace-own-proc", ("unshare", "--pid", "--fork", "--mount-proc"), netlink_ignored=True),
    Condition("child-user-namespace", ("unshare", "--user", "--map-root-user"), netlink_ignored=True),
    Condition("tracefs-unmounted", (*IN_MOUNT_NS, f"umount {TRACEFS}{THEN_EXEC}"), tracefs_mounted=False),
    Condition(
        "tracefs-read-only",
        (*IN_MOUNT_NS, f"mount --bind {TRACEFS} {TRACEFS} && mount -o remount,bind,ro {TRACEFS}{THEN_EXEC}"),
    ),
    Condition("proc-unmounted", (*IN_MOUNT_NS, f"umount -l /proc{THEN_EXEC}")),
]


@pytest.fixture(scope="module")
def marker() -> Iterator[str]:
    """A link to sleep with a name of its own, in a directory every user can read."""
    sleep = shutil.which("sleep")
    assert sleep is not None
    directory = tempfile.mkdtemp(prefix="proctap-probe-")
    os.chmod(directory, 0o755)
    path = os.path.join(directory, "ptmarker")
    os.symlink(sleep, path)
    yield path
    shutil.rmtree(directory)


@pytest.fixture(scope="module")
def python() -> str:
    """An interpreter nobody can run (the virtualenv's may live under /root), with proctap from this checkout."""
    for tool in ("setpriv", "unshare"):
        assert shutil.which(tool), f"{tool} (util-linux) is needed"
    for candidate in (sys.executable, "/usr/bin/python3"):
        check = [*NOBODY, "/bin/sh", "-c", 'exec "$0" -c "import proctap"', candidate]
        if subprocess.run(check, env=ENV, capture_output=True, timeout=TIMEOUT, cwd="/").returncode == 0:
            return candidate
    pytest.fail("no Python interpreter that user nobody can run with proctap (tried the running one, /usr/bin/python3)")


def _tracefs_writable() -> bool:
    return os.access(os.path.join(TRACEFS, "instances"), os.W_OK)


@pytest.mark.parametrize("condition", CONDITIONS, ids=[c.name for c in CONDITIONS])
def test_backends_says_what_watch_finds(condition: Condition, marker: str, python: str) -> None:
    writable_before = _tracefs_writable()
    skip = ["--skip-truth", "netlink"] if condition.netlink_ignored else []
    cmd = [*condition.prefix, python, str(DRIVER), *skip, marker, *BACKENDS]
    run = subprocess.run(cmd, env=ENV, capture_output=True, text=True, cwd="/", timeout=TIMEOUT * (len(BACKENDS) + 2))
    assert _tracefs_writable() == writable_before, "the condition changed tracefs outside its mount namespace"
    assert run.returncode == 0, run.stderr
    result = json.loads(run.stdout)
    assert result["backends"] is not None, result["backends_stderr"]
    rows = {row["name"]: row for row in result["backends"]["backends"]}
    problems = []
    for name in BACKENDS:
        row, text = rows[name], result["text"][name]
        watch, truth = result["per_backend"][name]["watch"], result["per_backend"][name]["truth"]
        said = f"{name} under {condition.name}: backends says {'yes' if row['available'] else 'no: ' + row['reason']}"
        assert "Traceback" not in watch["stderr"], f"{said}; watch: {watch['stderr']}"
        assert text.lstrip("* ").split()[1] == ("yes" if row["available"] else "no"), text
        if row["available"]:
            if watch["rc"] != 0:
                problems.append(f"{said}, but watch fails: {watch['stderr']}")
            if truth["state"] not in ("works", "skipped"):
                problems.append(f"{said}, but the backend itself: {truth['state']} {truth['detail']}")
            continue
        assert row["reason"] in text, text
        if watch["rc"] != 2 or row["reason"] not in watch["stderr"]:
            problems.append(f"{said}, but watch says (exit {watch['rc']}): {watch['stderr']}")
        if truth["state"] == "works":
            problems.append(f"{said}, but the backend opened directly works")
        if condition.tracefs_mounted and "tracefs is not mounted" in row["reason"]:
            problems.append(f"{said}: tracefs is mounted")
    if condition.netlink_ignored:
        assert not rows["netlink"]["available"] and "namespace" in rows["netlink"]["reason"], rows["netlink"]
    assert not problems, "\n".join(problems)
