"""Who and where (issue 12): containers, cgroups, login sessions, terminals, cwd and namespaces on every process.

The parsers run on the real shapes of cgroup paths and device numbers; everything else on real components: a podman
container started from a busybox root filesystem (no image pull), a hand-made v2 cgroup, a login session on a
pseudo-terminal (``script``) whose shell writes its own loginuid, ``setpriv`` changing the uid.  Each kernel-facing
test runs with ``bpf`` (captured in the kernel) and ``netlink`` (read from /proc by the watcher).  The conformance
suite checks what each backend declares (tests/conformance).
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import signal
import struct
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

import proctap
from eventlog import TIMEOUT, EventLog
from proctap.backends.bpf import EventDecoder
from proctap.cache import ProcessCache, where_dict
from proctap.errors import ProctapError
from proctap.events import Container, Event, Exec, Exit, Fork, Lost, Namespaces, Origin, Where
from proctap.linux import procfs
from proctap.linux.bpf import records as rec
from proctap.linux.cgroups import cgroup2_mount, parse_proc_cgroup, read_cgroup, under
from proctap.linux.clock import Clock
from proctap.render import where_text
from proctap.where import AUDIT_UNSET, Cgroups, container_of, decode_tty_nr, tty_name

PROCTAP = [sys.executable, "-m", "proctap"]  # this checkout's proctap, not whatever is on PATH

ROOT = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (containers, cgroups, loginuid, bpf)")
BACKENDS = ["bpf", "netlink"]  # captured in the kernel / read from /proc by the watcher
ID = "3f2a" * 16  # a 64-hex-digit container id
UID_ = "1a2b3c4d-1111-2222-3333-444455556666"


# -- containers from cgroup paths -------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("/", None),
        ("/user.slice/user-0.slice/session-3.scope", None),
        ("/system.slice/cron.service", None),
        (f"/libpod_parent/libpod-{ID}", Container(ID, "podman")),  # podman, cgroupfs manager (this machine)
        (f"/machine.slice/libpod-{ID}.scope", Container(ID, "podman")),  # podman, systemd manager
        (f"/machine.slice/libpod-{ID}.scope/container", Container(ID, "podman")),  # with its own cgroupns
        (f"/user.slice/user-1000.slice/user@1000.service/user.slice/libpod-{ID}.scope", Container(ID, "podman")),
        (f"/machine.slice/libpod-conmon-{ID}.scope", None),  # the monitor, not the container
        (f"/system.slice/docker-{ID}.scope", Container(ID, "docker")),  # docker, systemd driver
        (f"/docker/{ID}", Container(ID, "docker")),  # docker, cgroupfs driver
        (f"/docker/{ID}/init.scope", Container(ID, "docker")),  # systemd inside the container
        (f"/system.slice/containerd.service/kubepods-besteffort-pod{UID_.replace('-', '_')}.slice:cri-containerd:"
         f"{ID}", None),  # a name that is no cgroup of ours (a colon-joined systemd path fragment)
        (f"/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UID_.replace('-', '_')}.slice/"
         f"cri-containerd-{ID}.scope", Container(ID, "containerd", UID_)),
        (f"/kubepods.slice/kubepods-pod{UID_.replace('-', '_')}.slice/crio-{ID}.scope", Container(ID, "cri-o", UID_)),
        (f"/kubepods.slice/kubepods-pod{UID_.replace('-', '_')}.slice/crio-conmon-{ID}.scope", None),
        (f"/kubepods/burstable/pod{UID_}/{ID}", Container(ID, "kubernetes", UID_)),  # cgroupfs driver
        (f"/kubepods/pod{UID_}/{ID}", Container(ID, "kubernetes", UID_)),  # guaranteed QoS
        (f"/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{UID_.replace('-', '_')}.slice/"
         f"docker-{ID}.scope", Container(ID, "docker", UID_)),  # cri-dockerd
        ("/lxc.payload.web/init.scope", Container("web", "lxc", None, "web")),
        ("/lxc/web", Container("web", "lxc", None, "web")),
        ("/lxc.monitor.web", None),
        ("/machine.slice/systemd-nspawn@deb\\x2dtest.service/payload",
         Container("deb-test", "systemd-nspawn", None, "deb-test")),
        (f"/ecs/5a9a7d2e/{ID}", Container(ID, "unknown")),
        (f"/docker/{ID}/docker/{'ab' * 32}", Container("ab" * 32, "docker")),  # docker in docker: the innermost
    ],
)
def test_container_of_real_path_shapes(path: str, expected: Container | None) -> None:
    assert container_of(path) == expected


def test_terminal_names() -> None:
    assert [tty_name(136, 0), tty_name(137, 44), tty_name(4, 1), tty_name(4, 64), tty_name(5, 1)] == [
        "pts/0", "pts/300", "tty1", "ttyS0", "console",
    ]  # fmt: skip
    assert tty_name(0, 0) is None and tty_name(188, 2) == "ttyUSB2" and tty_name(250, 7) == "250:7"
    # /proc/PID/stat's tty_nr is new_encode_dev(): minor low byte, major, then the minor's high bits
    assert decode_tty_nr(0) is None and decode_tty_nr(136 << 8 | 5) == "pts/5"
    assert decode_tty_nr((300 & 0xFF) | (136 << 8) | ((300 & ~0xFF) << 12)) == "pts/300"


def test_proc_cgroup_and_cwd_parsers() -> None:
    hybrid = b"12:pids:/user.slice\n1:name=systemd:/user.slice/session-3.scope\n0::/user.slice/session-3.scope\n"
    assert parse_proc_cgroup(hybrid) == "/user.slice/session-3.scope"
    assert parse_proc_cgroup(b"0::/\n") == "/" and parse_proc_cgroup(b"4:memory:/a\n") is None
    assert parse_proc_cgroup(b"0::/gone (deleted)\n") == "/gone (deleted)"
    assert under("/a/b", "/a") and under("/a", "/a") and not under("/ab", "/a") and under("/x", "/")
    assert rec.decode_cwd(b"") == "/" and rec.decode_cwd(b"c d\0b\0a\0") == "/a/b/c d"
    assert rec.decode_cwd(b"\xff\0") == "/\udcff"


# -- the record, the cache, the JSON ----------------------------------------------------------------------------------
def _exec(pid: int, where: Where | None, **kw: object) -> Exec:
    return Exec(source="test", timestamp_ns=10 + pid, wall_time=1.0, pid=pid, tid=pid, start_ns=pid, argv=("x",),
                filename="/bin/x", where=where, **kw)  # type: ignore[arg-type]  # fmt: skip


WHERE = Where(origin=Origin.KERNEL, cgroup_id=7, cgroup=f"/libpod_parent/libpod-{ID}", container=Container(ID, "podman",
              None, "web"), loginuid=1000, sessionid=3, tty="pts/1", cwd="/srv/\udcff", ns_pid=1,
              namespaces=Namespaces(1, 2, 3, 4, 5, 6, 7))  # fmt: skip


def test_the_cache_carries_the_context_and_a_child_inherits_it() -> None:
    cache = ProcessCache(read_proc=False)
    parent = cache.apply(_exec(100, WHERE))
    assert parent is not None and parent.where is WHERE and parent.where_from is Origin.KERNEL
    assert parent.cwd == "/srv/\udcff" and parent.cwd_from is Origin.KERNEL and parent.container == WHERE.container
    assert (parent.loginuid, parent.sessionid, parent.tty, parent.ns_pid) == (1000, 3, "pts/1", 1)
    child = cache.apply(Fork(source="test", timestamp_ns=200, wall_time=1.0, pid=101, tid=101, start_ns=101,
                             parent_pid=100))  # fmt: skip
    assert child is not None and child.where_from is Origin.INHERITED and child.cwd_from is Origin.INHERITED
    assert child.container == WHERE.container and child.cwd == parent.cwd
    assert child.ns_pid is None  # its own pid in the namespace is not its parent's
    again = cache.apply(Fork(source="test", timestamp_ns=201, wall_time=1.0, pid=102, tid=102, start_ns=102,
                             parent_pid=100))  # fmt: skip
    assert again is not None and again.where is child.where  # one record per parent record
    ran = cache.apply(_exec(101, None))  # an exec without context keeps what the process had
    assert ran is not None and ran.where is child.where and ran.cwd == parent.cwd
    for proc in (parent, child, None):
        for ancestry in (False, True):
            for _ in range(2):  # the second time from the memo
                text = cache.context_json(proc, ancestry=ancestry)
                assert json.loads("{" + text + "}") == cache.context(proc, ancestry=ancestry)
    got = cache.context(parent)
    assert got["container"] == {"id": ID, "runtime": "podman", "name": "web", "pod_uid": None}
    assert got["cwd"] == "/srv/\ufffd" and got["namespaces"] == dict(zip(Namespaces._fields, range(1, 8), strict=True))
    assert (got["where_from"], got["cwd_from"], got["ns_pid"], got["tty"]) == ("kernel", "kernel", 1, "pts/1")
    assert set(where_dict(None)) == set(got) - {"exec_id", "parent"}
    assert all(v is None for v in where_dict(None).values())
    assert where_text(parent) == "ctr=podman:web auid=1000 ses=3 tty=pts/1 cwd=$'/srv/\\xff'"
    assert where_text(cache.apply(_exec(103, Where(origin=Origin.PROC, cgroup="/system.slice/cron.service",
                                                   cwd="/")))) == "cg=/system.slice/cron.service cwd=/"  # type: ignore[arg-type]  # fmt: skip


def test_context_keys_never_repeat_an_event_field() -> None:
    """``--context`` splices its keys into the event's object: none may be a field of any event (a JSON object with
    a key twice reads as the last one)."""
    from dataclasses import fields

    from proctap.events import EVENT_CLASSES

    context = set(ProcessCache(read_proc=False).context(None, ancestry=True))
    for cls in EVENT_CLASSES.values():
        names = {f.name for f in fields(cls)} | {"event", "key", "raw_b64", *cls.json_derived}
        assert not context & names, (cls.__name__, context & names)


def test_the_otlp_record_names_the_context_by_the_semantic_conventions() -> None:
    from proctap.export.otlp import log_record

    cache = ProcessCache(read_proc=False)
    ev = _exec(100, WHERE, parent_pid=None)
    object.__setattr__(ev, "process", cache.apply(ev))  # what the watcher does
    attrs = {a["key"]: next(iter(a["value"].values())) for a in log_record(ev)["attributes"]}
    assert attrs["container.id"] == ID and attrs["container.runtime.name"] == "podman"
    assert attrs["container.name"] == "web" and attrs["process.linux.cgroup"] == f"0::/libpod_parent/libpod-{ID}"
    assert attrs["process.working_directory"] == "/srv/\ufffd" and attrs["process.vpid"] == "1"
    assert attrs["proctap.loginuid"] == "1000" and attrs["proctap.tty"] == "pts/1"
    assert attrs["proctap.namespaces.mnt"] == "2" and "process.parent_pid" not in attrs  # the cache knows no parent
    ended = Exit(source="test", timestamp_ns=50, wall_time=2.0, pid=100, tid=100, start_ns=100)
    proc = cache.apply(ended)
    assert proc is not None
    object.__setattr__(ended, "process", proc._replace(parent_pid=1, uid=33))
    attrs = {a["key"]: next(iter(a["value"].values())) for a in log_record(ended)["attributes"]}
    assert attrs["process.parent_pid"] == "1" and attrs["process.real_user.id"] == "33"
    assert attrs["container.id"] == ID


def test_the_decoder_reads_the_context_block_and_the_cwd() -> None:
    """A FORK and an EXEC record with FLAG_WHERE, as the programs write them (records.py): one Where per distinct
    block, the cwd reversed into a path, unset ids as None."""
    ns = (4026531836, 4026531840, 0, 4026531838, 4026531839, 4026531837, 4026531835)
    block = rec.WHERE.pack(1000, 3, 136, 2, 0, 0, *ns, 0, rec.CWD_NONE, 0)

    def record(rtype: int, payload: bytes, cwd: bytes = b"", **fields: int) -> bytes:
        values = {"flags": rec.FLAG_WHERE, "len_a": 0, "len_b": 0, "aux64": 0, "cgroup": 1, **fields}
        head = rec.HEADER.pack(rtype, values["flags"], 1, 2, 2, 4, 4, 1, 0, 0, 0, values["cgroup"], b"sh",
                               values["aux64"], values["len_a"], values["len_b"])  # fmt: skip
        where = bytearray(block)
        struct.pack_into("=II", where, rec.W_CWD_LEN, len(cwd), 0 if rtype == rec.TYPE_EXEC else rec.CWD_NONE)
        return head + bytes(where) + payload + cwd

    decoder = EventDecoder(Clock(), cgroups=Cgroups())
    out: list[Event] = []
    fork = record(rec.TYPE_FORK, b"")
    decoder.decode(fork, 0, len(fork), out)
    decoder.decode(fork, 0, len(fork), out)
    fname, args = b"/bin/x\0", b"x\0-y\0"
    execd = record(rec.TYPE_EXEC, fname + args, b"tmp\0", len_a=len(fname), len_b=len(args), aux64=2)
    decoder.decode(execd, 0, len(execd), out)
    first, second, ex = out
    assert isinstance(first, Fork) and isinstance(ex, Exec) and first.where is second.where  # shared
    where = first.where
    assert where is not None and where.origin is Origin.KERNEL and where.cwd is None and where.cgroup == "/"
    assert (where.loginuid, where.sessionid, where.tty, where.ns_pid) == (1000, 3, "pts/2", None)
    assert where.namespaces == Namespaces(*(n or None for n in ns))
    assert ex.argv == ("x", "-y") and ex.filename == "/bin/x" and ex.where is not None and ex.where.cwd == "/tmp"
    unset = record(rec.TYPE_FORK, b"")
    unset = unset[: rec.HEADER_SIZE] + rec.WHERE.pack(AUDIT_UNSET, AUDIT_UNSET, 0, 0, 7, 1, *ns, 0, 1, 0)
    out.clear()
    decoder.decode(unset, 0, len(unset), out)
    (plain,) = out
    assert plain.where is not None and (plain.where.loginuid, plain.where.tty, plain.where.ns_pid) == (None, None, 7)
    with pytest.raises(proctap.DecodeError):
        decoder.decode(fork, 0, len(fork) - 8, out)
    # a CGROUP record (once per cgroup, before its first event) names a cgroup that may be gone when decoded
    gone = (1 << 60) + 12345
    names = f"libpod-{ID}\0libpod_parent\0".encode()
    told = rec.HEADER.pack(rec.TYPE_CGROUP, 0, 1, 2, 2, 0, 0, 0, 0, 0, 0, 0, b"", gone, len(names), 0) + names
    out.clear()
    decoder.decode(told, 0, len(told), out)
    assert out == []  # no event of its own
    late = record(rec.TYPE_FORK, b"", cgroup=gone)
    decoder.decode(late, 0, len(late), out)
    (forked,) = out
    assert forked.where is not None and forked.where.cgroup == f"/libpod_parent/libpod-{ID}"
    assert forked.where.container == Container(ID, "podman") and forked.where.cgroup_id == gone


# -- real components --------------------------------------------------------------------------------------------------
def _need(tool: str) -> str:
    path = shutil.which(tool)
    if path is None:
        pytest.fail(f"{tool} is missing: apt-get install podman runc busybox-static (scripts/apt-test.txt)")
    return path


@pytest.fixture(scope="module")
def rootfs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A container's root: busybox-static and links to it, and empty proc/ sys/ dev/ etc/ tmp/."""
    busybox = _need("busybox")
    root = tmp_path_factory.mktemp("rootfs")
    for name in ("bin", "proc", "sys", "dev", "etc", "tmp"):
        (root / name).mkdir()
    shutil.copy(busybox, root / "bin" / "busybox")
    for applet in ("sh", "cat", "sleep", "true", "ls", "echo", "chroot"):
        (root / "bin" / applet).symlink_to("busybox")
    return root


def _podman() -> list[str]:
    # root without CAP_SYS_RESOURCE and a v1+v2 hybrid here: runc (crun refuses the layout), cgroupfs, and limits
    # that are only ever lowered (KERNEL_NOTES.md)
    return [_need("podman"), "--runtime", _need("runc"), "--cgroup-manager", "cgroupfs"]


@contextlib.contextmanager
def container(rootfs: Path, script: str) -> Iterator[tuple[str, str]]:
    """A podman container (created, not started) running ``/bin/sh -c script``: (its id, its name); removed after."""
    name = f"proctap-where-{uuid.uuid4().hex[:8]}"
    created = subprocess.run(
        [*_podman(), "create", "--name", name, "--ulimit", "nofile=1024:1024", "--ulimit", "nproc=1024:1024",
         "--rootfs", str(rootfs), "/bin/sh", "-c", script],
        capture_output=True, text=True, timeout=TIMEOUT,
    )  # fmt: skip
    assert created.returncode == 0, created.stderr
    try:
        yield created.stdout.split()[-1], name
    finally:
        subprocess.run([*_podman(), "rm", "-f", name], capture_output=True, timeout=TIMEOUT)


def start(name: str) -> None:
    done = subprocess.run([*_podman(), "start", "--attach", name], capture_output=True, text=True, timeout=TIMEOUT)
    assert done.returncode == 0, done.stderr


def while_reading(procs: list[subprocess.Popen[bytes]], *logs: EventLog) -> None:
    """Wait for ``procs`` while reading ``logs``: a backend that reads the context from /proc (netlink) must read it
    while the processes live."""
    deadline = time.monotonic() + TIMEOUT
    while any(p.poll() is None for p in procs):
        assert time.monotonic() < deadline, "the workload did not end"
        for log in logs:
            log.pump(0.01)
    for p in procs:
        assert p.wait() == 0


def _real(events: list[Event]) -> list[Event]:
    return [e for e in events if not isinstance(e, Lost)]


CONTAINER_SCRIPT = "cat /proc/self/cgroup > /dev/null; sleep 0.5; exec /bin/true"


@ROOT
@pytest.mark.parametrize("backend", BACKENDS)
def test_a_container_and_the_container_filter(backend: str, rootfs: Path) -> None:
    """The events of the commands in a podman container carry the id podman reports, its name, runtime and cgroup,
    and the container's first process is pid 1 in its own namespace; ``container=`` (an id prefix) selects exactly
    the events a watcher without the filter attributes to that container, and nothing of the host's."""
    with container(rootfs, CONTAINER_SCRIPT) as (cid, name), \
            proctap.watch("fork,exec,exit", backend=backend, container=cid[:12]) as only, \
            proctap.watch("fork,exec,exit", backend=backend, context=True) as every:  # fmt: skip
        filtered, everything = EventLog(only), EventLog(every)
        started = subprocess.Popen([*_podman(), "start", "--attach", name])  # read while it runs: /proc goes with it
        host = subprocess.Popen(["sleep", "0.3"])  # a host process meanwhile

        def ended(log: EventLog) -> bool:  # the container's first process (its shell) exited
            shells = [e.pid for e in log.events if isinstance(e, Exec) and e.argv and e.argv[:2] == ("/bin/sh", "-c")]
            return bool(shells) and log.process_exit(shells[-1], forked=False) is not None

        while_reading([started, host], filtered, everything)
        filtered.wait_until(lambda: ended(filtered), "the exit of the container's shell")
        everything.wait_until(lambda: ended(everything), "the exit of the container's shell")
        filtered.during(0.5)
        everything.during(0.5)
    mine = _real(filtered.events)
    assert mine and all(e.process is not None and e.process.container is not None for e in mine)
    assert {e.process.container.id for e in mine} == {cid}  # type: ignore[union-attr]
    execs = [e for e in mine if isinstance(e, Exec)]
    shell = next(e for e in execs if e.argv and e.argv[:2] == ("/bin/sh", "-c"))
    proc = shell.process
    assert proc is not None and proc.container == Container(cid, "podman", None, name)
    assert proc.cgroup is not None and proc.cgroup.rsplit("/", 1)[-1] in (f"libpod-{cid}", f"libpod-{cid}.scope")
    assert proc.ns_pid == 1 and proc.namespaces is not None
    assert proc.namespaces.pid != procfs.read_namespace(os.getpid(), "pid")
    assert proc.where_from == ("kernel" if backend == "bpf" else "proc")
    # its last exec: netlink reads argv from /proc, where /bin/true may be gone already (it still has the container)
    last = {("/bin/true",)} if backend == "bpf" else {("/bin/true",), None}
    assert ("/bin/sh", "-c", CONTAINER_SCRIPT) in {e.argv for e in execs}
    assert [e.argv for e in execs if e.pid == shell.pid][-1] in last
    theirs = [e for e in _real(everything.events) if e.process is not None and e.process.container is not None
              and e.process.container.id == cid]  # fmt: skip
    everything.wait_exit(host.pid)
    assert everything.about([host.pid], Exec) and host.pid not in {e.pid for e in mine}
    if backend == "bpf":  # kernel-captured: both watchers know the same context of every event (each its own clock)
        def same(events: list[Event]) -> list[tuple[object, ...]]:
            return [(e.kind, e.pid, e.tid, getattr(e, "argv", None)) for e in events]

        assert same(theirs) == same(mine)


@ROOT
def test_watch_context_shows_the_container(rootfs: Path, tmp_path: Path) -> None:
    """``proctap watch --json --context --container PREFIX``: every line is of that container, the shell's has
    the container object and ``ns_pid`` 1; the table shows ``ctr=podman:NAME``."""
    out = tmp_path / "out.json"
    table = tmp_path / "out.txt"
    with container(rootfs, CONTAINER_SCRIPT) as (cid, name), open(out, "wb") as f, open(table, "wb") as t:
        procs = [subprocess.Popen([*PROCTAP, "watch", "-q", "--json", "--context", "-e", "exec", "--container",
                                   cid[:12], "-d", "6"], stdout=f),
                 subprocess.Popen([*PROCTAP, "watch", "-q", "--context", "-e", "exec", "--container", name,
                                   "-d", "6"], stdout=t)]  # fmt: skip
        time.sleep(2)  # subscribed (a start-up bound, not a measurement)
        start(name)
        for p in procs:
            assert p.wait(timeout=TIMEOUT) == 0
    lines = [json.loads(line) for line in out.read_bytes().splitlines()]
    assert lines and all(obj["container"]["id"] == cid for obj in lines if obj["event"] != "lost")
    shell = next(obj for obj in lines if obj["argv"][:2] == ["/bin/sh", "-c"])
    assert shell["container"] == {"id": cid, "runtime": "podman", "name": name, "pod_uid": None}
    assert shell["ns_pid"] == 1 and shell["cwd"] == "/" and shell["where_from"] == "kernel"
    text = table.read_text()
    assert f"ctr=podman:{name}" in text and "/bin/sh -c" in text


@contextlib.contextmanager
def v2_cgroup(name: str) -> Iterator[tuple[Path, str]]:
    """A hand-made cgroup under the cgroup2 mount: (its directory, its path as /proc/PID/cgroup shows it).  Removed
    afterwards (any task left in it moved to the root first)."""
    root = cgroup2_mount()
    if root is None:
        pytest.skip("no cgroup2 mount here")
    path = Path(root) / name
    path.mkdir()
    try:
        yield path, "/" + name
    finally:
        for sub in sorted(path.rglob("*"), key=lambda p: -len(p.parts)):
            if sub.is_dir():
                _rmdir(sub, Path(root))
        _rmdir(path, Path(root))


def _rmdir(path: Path, root: Path) -> None:
    with contextlib.suppress(OSError):
        for pid in (path / "cgroup.procs").read_text().split():
            with contextlib.suppress(OSError):
                (root / "cgroup.procs").write_text(pid)
    deadline = time.monotonic() + TIMEOUT
    while path.exists():
        try:
            path.rmdir()
        except OSError as exc:  # EBUSY until the kernel lets go of the tasks that died in it
            if exc.errno != errno.EBUSY or time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def in_cgroup(directory: Path, command: str) -> subprocess.Popen[bytes]:
    """A shell that moves itself into ``directory`` (a cgroup) before running ``command``.  It waits a moment first:
    backends that read an exec's argv and context from /proc (netlink) read them after the event, and a shell that
    moved and exec'd at once had its own exec (outside the cgroup) reported as inside, with the command's argv."""
    return subprocess.Popen(["sh", "-c", f'sleep 0.1; echo $$ > "{directory}/cgroup.procs" && {command}'])


@ROOT
@pytest.mark.parametrize("backend", BACKENDS)
def test_a_hand_made_cgroup_and_the_cgroup_filter(backend: str) -> None:
    """``cgroup=`` selects that cgroup and below it, by its path or its directory; events carry the path and the id
    (its directory's inode); a process outside is not delivered."""
    with v2_cgroup(f"proctap-where-{os.getpid()}") as (directory, path):
        (directory / "below").mkdir()
        for spec in (path, str(directory)):
            with proctap.watch("exec,exit", backend=backend, cgroup=spec) as w:
                log = EventLog(w)
                inside = in_cgroup(directory, "exec sleep 0.5")
                deeper = in_cgroup(directory / "below", "exec sleep 0.6")
                outside = subprocess.Popen(["sleep", "0.5"])
                while_reading([inside, deeper, outside], log)
                log.wait_exit(inside.pid, deeper.pid, forked=False)  # they forked outside the cgroup
                log.during(0.3)
            pids = {e.pid for e in _real(log.events)}
            assert {inside.pid, deeper.pid} <= pids and outside.pid not in pids
            assert all(under(e.process.cgroup, path) for e in _real(log.events))  # type: ignore[union-attr]
            (ex,) = [e for e in log.about([deeper.pid], Exec) if e.argv == ("sleep", "0.6")]
            assert ex.process is not None and ex.process.cgroup == f"{path}/below"
            assert ex.process.where is not None and ex.process.where.cgroup_id == os.stat(directory / "below").st_ino
    with pytest.raises(ProctapError, match="no cgroup"):
        proctap.watch(backend=backend, cgroup="/proctap-where-no-such-cgroup")


@ROOT
def test_the_first_event_in_a_new_cgroup_wakes_the_reader() -> None:
    """bpf sends a cgroup's path (a CGROUP record) before the first event in it: that record, not the event, is then
    the first after a drain, and must wake a reader that sleeps in poll (the event's record, finding the ring not
    empty, does not).  The cgroup filter keeps every other task's events from waking it instead."""
    import select
    import threading

    from proctap.backends import BackendConfig
    from proctap.backends.bpf import BpfBackend
    from proctap.events import EventKind

    with v2_cgroup(f"proctap-wake-{os.getpid()}") as (directory, path):
        backend = BpfBackend(BackendConfig(events=frozenset({EventKind.EXEC}), context=True, cgroup=path))
        try:
            assert backend.read_events() == []
            child = subprocess.Popen(["sh", "-c", f'echo $$ > "{directory}/cgroup.procs" && read go && exec /bin/true'],
                                     stdin=subprocess.PIPE)  # fmt: skip
            poller = select.poll()
            poller.register(backend.fileno(), select.POLLIN)
            woken: list[bool] = []

            def sleep_in_poll() -> None:  # (poll reports what is ready when it times out too: woken = before that)
                deadline = time.monotonic() + TIMEOUT
                ready = poller.poll(TIMEOUT * 1000)
                woken.append(bool(ready) and time.monotonic() < deadline)

            asleep = threading.Thread(target=sleep_in_poll)
            asleep.start()
            time.sleep(0.5)  # the reader is asleep in poll by then (a start-up bound, not a measurement)
            assert child.stdin is not None
            child.stdin.write(b"go\n")
            child.stdin.close()
            asleep.join()
            assert woken == [True], "the reader was not woken: the cgroup's first event waits in the ring"
            assert child.wait(timeout=TIMEOUT) == 0
            seen = backend.read_events()
            (ex,) = [e for e in seen if isinstance(e, Exec) and e.pid == child.pid]
            assert ex.where is not None and ex.where.cgroup == path
        finally:
            backend.close()


SESSION_SCRIPT = (
    "echo 4321 > /proc/self/loginuid && cat /proc/self/sessionid > {dir}/session && tty > {dir}/tty && "
    "exec setpriv --reuid=65534 --regid=65534 --clear-groups sleep 0.5"
)


@ROOT
@pytest.mark.parametrize("backend", BACKENDS)
def test_a_login_session_on_a_terminal(backend: str, tmp_path: Path) -> None:
    """A shell in a new session on a pseudo-terminal (``script``) writes its own loginuid; its children carry that
    loginuid, the session id the kernel gave it and the terminal; ``setpriv`` changes the uid, the loginuid stays.
    ``loginuid=`` and ``uid=`` select them."""
    _need("script")
    _need("setpriv")
    script = SESSION_SCRIPT.format(dir=tmp_path)
    with proctap.watch("exec,exit", backend=backend, context=True) as w, \
            proctap.watch("exec", backend=backend, loginuid=4321) as by_login, \
            proctap.watch("exec", backend=backend, uid=65534) as by_uid:  # fmt: skip
        log, logins, uids = EventLog(w), EventLog(by_login), EventLog(by_uid)
        session = subprocess.Popen(["script", "-qc", f"sh -c '{script}'", "/dev/null"], stdout=subprocess.DEVNULL)
        while_reading([session], log, logins, uids)

        def slept(events: list[Event]) -> bool:
            return any(isinstance(e, Exec) and e.argv == ("sleep", "0.5") for e in events)

        for each in (log, logins, uids):
            each.wait_for(slept, "the session's sleep")
        log.during(0.3)
    sessionid = int((tmp_path / "session").read_text())
    terminal = (tmp_path / "tty").read_text().strip().removeprefix("/dev/")
    # (netlink reads argv after the event: setpriv's exec may read as the sleep it became)
    sleep = [e for e in log.events if isinstance(e, Exec) and e.argv == ("sleep", "0.5")][-1]
    proc = sleep.process
    assert proc is not None and proc.loginuid == 4321 and proc.sessionid == sessionid and proc.tty == terminal
    if backend == "bpf":  # the uid at each exec (netlink's Exec has none: the uid= watcher follows Uid events)
        (setpriv,) = [e for e in log.events if isinstance(e, Exec) and e.argv and e.argv[0] == "setpriv"]
        assert setpriv.uid == 0 and sleep.uid == 65534
        assert setpriv.process is not None and setpriv.process.loginuid == 4321  # the uid changed, not the loginuid
    for each in (logins, uids):
        assert all(e.process is not None for e in _real(each.events))
    assert all(e.process.loginuid == 4321 for e in _real(logins.events))  # type: ignore[union-attr]
    assert all(e.process.uid == 65534 for e in _real(uids.events))  # type: ignore[union-attr]
    assert not [e for e in _real(uids.events) if isinstance(e, Exec) and e.argv and e.argv[0] == "setpriv"]


@ROOT
def test_watch_context_shows_a_login_session(tmp_path: Path) -> None:
    """The table of ``watch --context`` shows the session's loginuid, session id, terminal and cwd."""
    table = tmp_path / "out.txt"
    work = tmp_path / "work dir"
    work.mkdir()
    script = SESSION_SCRIPT.format(dir=tmp_path).replace("exec setpriv", f"cd '{work}' && exec setpriv")
    with open(table, "wb") as t:
        watch = subprocess.Popen([*PROCTAP, "watch", "-q", "--context", "-e", "exec", "--loginuid", "4321", "-d",
                                  "5"], stdout=t)  # fmt: skip
        time.sleep(2)  # subscribed (a start-up bound, not a measurement)
        subprocess.run(["script", "-qc", f"sh -c \"{script}\"", "/dev/null"], stdout=subprocess.DEVNULL,
                       timeout=TIMEOUT, check=True)  # fmt: skip
        assert watch.wait(timeout=TIMEOUT) == 0
    sessionid = (tmp_path / "session").read_text().strip()
    terminal = (tmp_path / "tty").read_text().strip().removeprefix("/dev/")
    line = next(line for line in table.read_text().splitlines() if " sleep 0.5" in line)
    assert f"[auid=4321 ses={sessionid} tty={terminal} cwd='{work}']" in line


@ROOT
@pytest.mark.parametrize("backend", BACKENDS)
def test_the_cwd_of_a_chrooted_process(backend: str, rootfs: Path) -> None:
    """bpf walks the cwd up to the process's own root directory (its view, as auditd's cwd); /proc/PID/cwd gives it
    from proctap's root."""
    with proctap.watch("exec,exit", backend=backend, context=True) as w:
        log = EventLog(w)
        p = subprocess.Popen(["chroot", str(rootfs), "/bin/sh", "-c", "cd /tmp && exec /bin/sleep 0.3"])
        while_reading([p], log)
        log.wait_exit(p.pid, forked=False)
    ex = [e for e in log.about([p.pid], Exec) if e.argv == ("/bin/sleep", "0.3")][-1]
    assert ex.process is not None
    assert ex.process.cwd == ("/tmp" if backend == "bpf" else str(rootfs / "tmp"))


@ROOT
def test_ps_filters_by_context() -> None:
    """``proctap ps --uid`` and ``--loginuid unset`` pick processes as ``watch`` would (no backend needed)."""
    sleeper = subprocess.Popen(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "sleep", "30"])
    try:
        deadline = time.monotonic() + TIMEOUT
        while procfs.read_comm(sleeper.pid) != "sleep" and time.monotonic() < deadline:
            time.sleep(0.01)
        shown = subprocess.run([*PROCTAP, "ps", "--flat", "--uid", "65534"], capture_output=True, text=True,
                               check=True).stdout  # fmt: skip
        pids = {int(line.split()[0]) for line in shown.splitlines()[1:]}
        assert sleeper.pid in pids and os.getpid() not in pids
        doc = subprocess.run([*PROCTAP, "ps", "--json", "--context", "--uid", "65534"], capture_output=True,
                             text=True, check=True).stdout  # fmt: skip
        mine = [json.loads(line) for line in doc.splitlines() if json.loads(line)["pid"] == sleeper.pid]
        assert mine and mine[0]["cgroup"] == read_cgroup(sleeper.pid) and mine[0]["where_from"] == "snapshot"
    finally:
        sleeper.send_signal(signal.SIGKILL)
        sleeper.wait()
