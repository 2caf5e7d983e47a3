"""Cgroup v2 ids to paths, for ``proctap top``'s cgroup view.

The bpf backend gives each Fork/Exec the id of the task's cgroup in the v2 (default) hierarchy; that id is the inode
number of the cgroup's directory under the cgroup2 mount.  The mount is found in /proc/self/mountinfo (not assumed at
/sys/fs/cgroup: hybrid systems mount v2 at /sys/fs/cgroup/unified).  An id not seen before triggers one scan of the
hierarchy, which also learns every other cgroup there.
"""

from __future__ import annotations

import os

__all__ = ["CgroupPaths", "cgroup2_mount", "parse_mountinfo_cgroup2"]

MOUNTINFO = "/proc/self/mountinfo"


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


class CgroupPaths:
    """Call with a cgroup id: its path relative to the hierarchy's root (``/`` for the root, ``/a/b``), or None
    when no such cgroup exists (any more) or there is no cgroup2 mount."""

    def __init__(self, root: str | None = None) -> None:
        self.root = root if root is not None else cgroup2_mount()
        self.paths: dict[int, str] = {}
        self.scans = 0

    def __call__(self, cgroup_id: int) -> str | None:
        if cgroup_id not in self.paths and self.root is not None:
            self._scan()
        return self.paths.get(cgroup_id)

    def _scan(self) -> None:
        assert self.root is not None
        self.scans += 1
        try:
            self.paths[os.stat(self.root).st_ino] = "/"
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
                self.paths[inode] = path
                stack.append((entry.path, path))
