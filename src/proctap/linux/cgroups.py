"""The cgroup v2 hierarchy: where it is mounted, which cgroup a process is in, and cgroup ids to paths.

A process's v2 cgroup is the ``0::`` line of /proc/PID/cgroup, a path relative to the cgroup2 mount (``/`` for the
root, ``/libpod_parent/libpod-<id>``).  The BPF helpers give its *id* instead (``bpf_get_current_cgroup_id``): the
inode number of the cgroup's directory under the mount.  The mount is found in /proc/self/mountinfo, never assumed at
/sys/fs/cgroup (hybrid systems mount v2 at /sys/fs/cgroup/unified).

The parsers are pure functions of the text; :class:`CgroupPaths` resolves ids to paths, each id once: the kernel's
file handle of a cgroup is its id (kernfs, ``FILEID_KERNFS``), so ``open_by_handle_at`` opens it directly (root:
CAP_DAC_READ_SEARCH); without that privilege it scans the hierarchy, which also learns every other cgroup there.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import struct

from .libc import function

__all__ = [
    "CgroupPaths",
    "cgroup2_mount",
    "cgroup_dir",
    "parse_mountinfo_cgroup2",
    "parse_proc_cgroup",
    "read_cgroup",
    "relative_cgroup",
    "under",
]

MOUNTINFO = "/proc/self/mountinfo"
FILEID_KERNFS = 0xFE  # include/linux/exportfs.h: a kernfs node's file handle is its 64-bit id
_HANDLE = struct.Struct("=IiQ")  # struct file_handle: handle_bytes, handle_type, f_handle[8]
_NO_HANDLES = (errno.EPERM, errno.EACCES, errno.ENOSYS, errno.EOPNOTSUPP, errno.EINVAL)  # EPERM: no CAP_DAC_READ_SEARCH
_open_by_handle_at = function("open_by_handle_at", (ctypes.c_int, ctypes.c_char_p, ctypes.c_int))


def _unescape(field: str) -> str:
    """mountinfo escapes space, tab, newline and backslash as ``\\NNN`` (octal)."""
    if "\\" not in field:
        return field
    out, i = [], 0
    while i < len(field):
        if field[i] == "\\" and i + 3 < len(field) and field[i + 1 : i + 4].isdigit():
            out.append(chr(int(field[i + 1 : i + 4], 8)))
            i += 4
        else:
            out.append(field[i])
            i += 1
    return "".join(out)


def parse_mountinfo_cgroup2(text: str) -> str | None:
    """The mount point of the first cgroup2 file system listed in a mountinfo text, or None."""
    for line in text.splitlines():
        left, sep, right = line.partition(" - ")
        if not sep:
            continue
        fields = left.split()
        if len(fields) >= 5 and right.split(" ", 1)[0] == "cgroup2":
            return _unescape(fields[4])
    return None


def cgroup2_mount() -> str | None:
    """Where the cgroup v2 hierarchy is mounted here, or None when it is not."""
    try:
        with open(MOUNTINFO, encoding="utf-8", errors="surrogateescape") as f:
            return parse_mountinfo_cgroup2(f.read())
    except OSError:
        return None


def parse_proc_cgroup(data: bytes) -> str | None:
    """The v2 cgroup path in the bytes of /proc/PID/cgroup (its ``0::PATH`` line), or None when the file has none
    (no v2 hierarchy).  Non-UTF-8 bytes come back as surrogate escapes.  A cgroup removed since reads
    ``PATH (deleted)``: kept as the kernel wrote it."""
    if data.startswith(b"0::"):
        start = 0
    else:
        start = data.find(b"\n0::") + 1
        if start == 0:
            return None
    end = data.find(b"\n", start)
    line = data[start + 3 : end if end >= 0 else len(data)]
    return line.decode("utf-8", "surrogateescape") if line else None


def read_cgroup(pid: int | str) -> str | None:
    """The v2 cgroup path of a process (``pid`` may be ``"self"``), None when it is gone or there is no v2."""
    try:
        fd = os.open(f"/proc/{pid}/cgroup", os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        return parse_proc_cgroup(os.read(fd, 65536))
    except OSError:
        return None
    finally:
        os.close(fd)


def relative_cgroup(path: str, root: str | None) -> str | None:
    """A cgroup named either as in /proc/PID/cgroup (``/a/b``) or by its directory (``/sys/fs/cgroup/unified/a/b``)
    as the former, normalised (no trailing slash; ``/`` for the root); None when it is neither (it does not exist).
    """
    if root is None:
        return None
    clean = "/" + path.strip("/") if path.strip("/") else "/"
    mount = root.rstrip("/")
    if clean == mount or clean.startswith(mount + "/"):
        rel = clean[len(mount) :] or "/"
        if os.path.isdir(cgroup_dir(rel, root)):
            return rel
    if os.path.isdir(cgroup_dir(clean, root)):
        return clean
    return None


def cgroup_dir(path: str, root: str) -> str:
    """The directory of cgroup ``path`` (``/a/b``) under the mount ``root``."""
    return root.rstrip("/") + ("" if path == "/" else path)


def under(path: str | None, top: str) -> bool:
    """Whether cgroup ``path`` is ``top`` or below it (``/a/b`` is under ``/a``, ``/ab`` is not)."""
    if path is None:
        return False
    return top == "/" or path == top or path.startswith(top + "/")


class CgroupPaths:
    """Call with a cgroup id: its path relative to the hierarchy's root (``/`` for the root, ``/a/b``), or None
    when no such cgroup exists (any more) or there is no cgroup2 mount.

    Each id is resolved once and remembered, found or not: an id is never reused, and one that was captured at an
    event but is not there now was removed meanwhile.  ``scans`` counts the walks of the hierarchy (the fallback
    when file handles cannot be opened)."""

    def __init__(self, root: str | None = None) -> None:
        self.root = root if root is not None else cgroup2_mount()
        self.paths: dict[int, str | None] = {}
        self.scans = 0
        self._mount_fd: int | None = None
        self._handles = _open_by_handle_at is not None

    def __call__(self, cgroup_id: int) -> str | None:
        paths = self.paths
        if cgroup_id in paths:
            return paths[cgroup_id]
        if self.root is None:
            return None
        if self._handles:
            path = self._by_handle(cgroup_id)
            if self._handles:  # the kernel answered: found, or no such cgroup now
                paths[cgroup_id] = path
                return path
        self._scan()
        path = paths[cgroup_id] = paths.get(cgroup_id)
        return path

    def id_of(self, path: str) -> int | None:
        """The id of cgroup ``path`` (the inode number of its directory), None when it does not exist."""
        if self.root is None:
            return None
        try:
            found = os.stat(cgroup_dir(path, self.root)).st_ino
        except OSError:
            return None
        self.paths.setdefault(found, path)
        return found

    def close(self) -> None:
        if self._mount_fd is not None:
            with contextlib.suppress(OSError):
                os.close(self._mount_fd)
            self._mount_fd = None

    def __del__(self) -> None:
        with contextlib.suppress(Exception):
            self.close()

    def _by_handle(self, cgroup_id: int) -> str | None:
        assert self.root is not None and _open_by_handle_at is not None
        try:
            if self._mount_fd is None:
                self._mount_fd = os.open(self.root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError:
            self._handles = False
            return None
        handle = _HANDLE.pack(8, FILEID_KERNFS, cgroup_id & 0xFFFF_FFFF_FFFF_FFFF)
        fd = _open_by_handle_at(self._mount_fd, handle, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        if fd < 0:
            if ctypes.get_errno() in _NO_HANDLES:  # not allowed or not supported here: scan instead
                self._handles = False
            return None  # ESTALE: no such cgroup now
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            return None
        finally:
            os.close(fd)
        mount = self.root.rstrip("/")
        if target.endswith(" (deleted)") or not (target == mount or target.startswith(mount + "/")):
            return None
        return target[len(mount) :] or "/"

    def _scan(self) -> None:
        assert self.root is not None
        self.scans += 1
        paths = self.paths
        try:
            paths[os.stat(self.root).st_ino] = "/"
        except OSError:
            return
        stack = [(self.root, "")]
        while stack:
            directory, rel = stack.pop()
            try:
                entries = list(os.scandir(directory))
            except OSError:
                continue  # removed meanwhile, or not ours to read
            for entry in entries:
                try:
                    if not entry.is_dir(follow_symlinks=False):
                        continue
                    inode = entry.inode()
                except OSError:
                    continue
                path = f"{rel}/{entry.name}"
                paths[inode] = path
                stack.append((entry.path, path))
