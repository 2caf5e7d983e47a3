"""Who and where a process is, from what the kernel says: containers from cgroup paths, terminal names from device
numbers, and the resolution of cgroup ids that both the bpf decoder and the /proc reader (:mod:`proctap.enrich`)
share.  The record itself is :class:`proctap.events.Where`.

* :func:`container_of`: a pure function over a cgroup path (docker, podman, containerd, CRI-O, Kubernetes,
  LXC, systemd-nspawn);
* :func:`tty_name`: ``(major, minor)`` of a terminal to its name (``pts/3``, ``tty1``, ``ttyS0``), the names
  ``ps`` shows; :func:`decode_tty_nr` reads /proc/PID/stat's ``tty_nr``;
* :class:`Cgroups`: cgroup id or path -> (id, path, container), each cgroup resolved once, with the container's
  name read from the runtime's local state (:class:`ContainerNames`) where that needs no daemon.
"""

from __future__ import annotations

import contextlib
import glob
import json
import os
import re
from functools import lru_cache

from .events import Container
from .linux.cgroups import CgroupPaths, cgroup2_mount

__all__ = ["AUDIT_UNSET", "CgroupInfo", "Cgroups", "ContainerNames", "container_of", "decode_tty_nr", "tty_name"]

AUDIT_UNSET = 0xFFFF_FFFF  # loginuid / sessionid of a task that never logged in (include/linux/audit.h AUDIT_SID_UNSET)

# -- containers from cgroup paths -------------------------------------------------------------------------------------
#
# Each component of the path is matched; the last one that names a container wins (a container inside a container:
# the innermost).  Shapes (from the runtimes' cgroup drivers):
#   docker      systemd driver: /system.slice/docker-<id>.scope     cgroupfs driver: /docker/<id>
#   podman      systemd: /machine.slice/libpod-<id>.scope (rootless: under user@UID.service)   cgroupfs:
#               /libpod_parent/libpod-<id>   (libpod-conmon-<id>.scope is the monitor, not the container)
#   containerd  /.../cri-containerd-<id>.scope (Kubernetes, systemd driver), nerdctl-<id>.scope
#   CRI-O       /.../crio-<id>.scope (crio-conmon-<id>.scope is the monitor)
#   Kubernetes  cgroupfs: /kubepods[/burstable|/besteffort]/pod<uid>/<id>   systemd:
#               /kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod<uid with _>.slice/<runtime>-<id>.scope
#   LXC         /lxc.payload.<name>/... (LXC 4+, LXD), /lxc/<name>/... (older); lxc.monitor.<name> is the monitor
#   nspawn      /machine.slice/systemd-nspawn@<name>.service/payload
#   other       a bare 64-hex-digit component: runtime "unknown" (containerd's cgroupfs layout /<namespace>/<id>,
#               ECS /ecs/<task>/<id>)

_HEX64 = r"[0-9a-f]{64}"
_SCOPED = re.compile(rf"(docker|libpod|cri-containerd|crio|nerdctl)-({_HEX64})(?:\.scope)?")
_RUNTIME = {"docker": "docker", "libpod": "podman", "cri-containerd": "containerd", "crio": "cri-o",
            "nerdctl": "containerd"}  # fmt: skip
_BARE = re.compile(_HEX64)
_UID = r"[0-9a-f]{8}[-_][0-9a-f]{4}[-_][0-9a-f]{4}[-_][0-9a-f]{4}[-_][0-9a-f]{12}"  # dashes (cgroupfs) or _ (systemd)
_POD = re.compile(rf"(?:kubepods(?:-[a-z]+)?-)?pod({_UID})(?:\.slice)?")
_LXC = re.compile(r"lxc\.payload\.(.+)")
_NSPAWN = re.compile(r"systemd-nspawn@(.+)\.service")


def _unescape_unit(name: str) -> str:
    r"""systemd escapes unit names: ``\x2d`` is ``-``."""
    return re.sub(r"\\x([0-9a-fA-F]{2})", lambda m: chr(int(m.group(1), 16)), name) if "\\x" in name else name


@lru_cache(maxsize=4096)
def container_of(path: str | None) -> Container | None:
    """The container a cgroup v2 path (as in /proc/PID/cgroup) belongs to, or None outside a container.

    >>> container_of("/libpod_parent/libpod-" + "ab" * 32).runtime
    'podman'
    """
    if not path or path == "/":
        return None
    parts = path.split("/")
    found: Container | None = None
    pod: str | None = None
    in_kubepods = False
    for i, part in enumerate(parts):
        if not part:
            continue
        if part.startswith("kubepods"):
            in_kubepods = True
        match = _POD.fullmatch(part) if in_kubepods else None
        if match is not None:
            pod = match.group(1).replace("_", "-")
            continue
        match = _SCOPED.fullmatch(part)
        if match is not None:
            found = Container(match.group(2), _RUNTIME[match.group(1)], pod)
            continue
        if _BARE.fullmatch(part):
            parent = parts[i - 1] if i > 0 else ""
            runtime = "docker" if parent == "docker" else "kubernetes" if pod is not None else "unknown"
            found = Container(part, runtime, pod)
            continue
        match = _LXC.fullmatch(part)
        if match is not None or (i > 0 and parts[i - 1] == "lxc" and i == 2):
            name = match.group(1) if match is not None else part
            found = Container(name, "lxc", None, name)
            continue
        match = _NSPAWN.fullmatch(part)
        if match is not None:
            name = _unescape_unit(match.group(1))
            found = Container(name, "systemd-nspawn", None, name)
    return found


# -- terminals --------------------------------------------------------------------------------------------------------
UNIX98_PTY_SLAVE_MAJOR = 136  # include/uapi/linux/major.h; 8 majors (UNIX98_PTY_MAJOR_COUNT)
_NUMBERED = {188: "ttyUSB", 166: "ttyACM", 229: "hvc"}  # drivers/usb/serial, drivers/usb/class/cdc-acm, hvc


def tty_name(major: int, minor: int) -> str | None:
    """The name of the terminal device ``major:minor`` as ``ps`` shows it (without ``/dev/``): ``pts/3``,
    ``tty1``, ``ttyS0``, ``console``; ``None`` for 0:0 (no terminal); ``major:minor`` for a driver it does not
    know."""
    if major == 0 and minor == 0:
        return None
    if UNIX98_PTY_SLAVE_MAJOR <= major < UNIX98_PTY_SLAVE_MAJOR + 8:
        return f"pts/{(major - UNIX98_PTY_SLAVE_MAJOR) * 256 + minor}"
    if major == 4:  # drivers/tty/vt (tty0-63) and the 8250 serial driver (ttyS0 at minor 64)
        return f"tty{minor}" if minor < 64 else f"ttyS{minor - 64}"
    if major == 5:
        return {0: "tty", 1: "console", 2: "ptmx"}.get(minor, f"5:{minor}")
    if major == 204 and minor >= 64:
        return f"ttyAMA{minor - 64}"
    if major in _NUMBERED:
        return f"{_NUMBERED[major]}{minor}"
    return f"{major}:{minor}"


def decode_tty_nr(tty_nr: int) -> str | None:
    """/proc/PID/stat's ``tty_nr`` (fs/proc/array.c: new_encode_dev of the controlling terminal, 0 without one)."""
    major = (tty_nr >> 8) & 0xFFF
    minor = (tty_nr & 0xFF) | ((tty_nr >> 12) & 0xFFF00)
    return tty_name(major, minor)


# -- container names --------------------------------------------------------------------------------------------------
DOCKER_CONTAINERS = "/var/lib/docker/containers"  # <id>/config.v2.json: "Name": "/name" (the daemon's own state)
STORAGE_CONTAINERS = "/var/lib/containers/storage/*-containers/containers.json"  # containers/storage: podman, CRI-O


class ContainerNames:
    """A container's name from its runtime's files, without asking a daemon: docker's
    ``/var/lib/docker/containers/<id>/config.v2.json`` and containers/storage's ``containers.json`` (podman,
    buildah, CRI-O; root's storage under /var/lib/containers).  None when neither has it (another data root, a
    rootless runtime, containerd); each id is looked up once."""

    def __init__(self, docker: str = DOCKER_CONTAINERS, storage: str = STORAGE_CONTAINERS) -> None:
        self.docker = docker
        self.storage = storage
        self._names: dict[str, str | None] = {}

    def __call__(self, container: Container) -> str | None:
        if container.name is not None:
            return container.name
        if container.id in self._names:
            return self._names[container.id]
        name = self._docker(container.id) if container.runtime in ("docker", "unknown") else None
        if name is None and container.runtime in ("podman", "cri-o", "unknown", "kubernetes"):
            name = self._storage(container.id)
        self._names[container.id] = name
        return name

    def _docker(self, cid: str) -> str | None:
        with contextlib.suppress(OSError, ValueError, AttributeError):
            with open(os.path.join(self.docker, cid, "config.v2.json"), "rb") as f:
                name = json.load(f).get("Name")
            if isinstance(name, str) and name.strip("/"):
                return name.lstrip("/")
        return None

    def _storage(self, cid: str) -> str | None:
        for path in glob.glob(self.storage):
            with contextlib.suppress(OSError, ValueError):
                with open(path, "rb") as f:
                    entries = json.load(f)
                for entry in entries if isinstance(entries, list) else ():
                    if isinstance(entry, dict) and entry.get("id") == cid:
                        names = entry.get("names")
                        if isinstance(names, list) and names and isinstance(names[0], str):
                            return names[0]
        return None


# -- cgroups ----------------------------------------------------------------------------------------------------------
CgroupInfo = tuple[int | None, str | None, Container | None]  # (id, path, container)
_MEMO_MAX = 65536


class Cgroups:
    """cgroup id or path -> ``(id, path, container)``, each cgroup worked out once: the id's path from the hierarchy
    (:class:`proctap.linux.cgroups.CgroupPaths`), the path's id from its directory, the container from the path and
    its name from the runtime's files (``names``: False to leave names out)."""

    def __init__(self, root: str | None = None, *, names: bool = True) -> None:
        self.root = root if root is not None else cgroup2_mount()
        self.paths = CgroupPaths(self.root)
        self.names = ContainerNames() if names else None
        self._by_id: dict[int, CgroupInfo] = {}
        self._by_path: dict[str, CgroupInfo] = {}

    def by_id(self, cgroup_id: int) -> CgroupInfo:
        found = self._by_id.get(cgroup_id)
        if found is None:
            path = self.paths(cgroup_id)
            found = self._by_id[cgroup_id] = (cgroup_id, path, self._container(path))
        return found

    def learn(self, cgroup_id: int, path: str) -> None:
        """The path of a cgroup, told by the kernel (the bpf backend's CGROUP record): kept even when the cgroup
        is gone by the time its events are decoded."""
        if cgroup_id not in self._by_id or self._by_id[cgroup_id][1] is None:
            self.paths.paths[cgroup_id] = path
            self._by_id[cgroup_id] = (cgroup_id, path, self._container(path))

    def by_path(self, path: str | None) -> CgroupInfo:
        if path is None:
            return (None, None, None)
        found = self._by_path.get(path)
        if found is None:
            if len(self._by_path) >= _MEMO_MAX:
                self._by_path.clear()
            gone = path.endswith(" (deleted)")
            cgroup_id = None if gone else self.paths.id_of(path)
            found = self._by_path[path] = (cgroup_id, path, self._container(path.removesuffix(" (deleted)")))
        return found

    def _container(self, path: str | None) -> Container | None:
        found = container_of(path)
        if found is not None and found.name is None and self.names is not None:
            name = self.names(found)
            if name is not None:
                found = found._replace(name=name)
        return found

    def close(self) -> None:
        self.paths.close()
