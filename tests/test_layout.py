"""The layout of src/proctap keeps the pipeline readable (docs/architecture.md): the imports are read with ast, and

- no import cycle (a package's ``__init__`` importing its own children to re-export them does not count);
- a backend never imports another backend (``backends/base.py``, ``backends/__init__.py`` and modules named
  ``*common*`` are what backends share);
- ``proctap/linux/`` (thin wrappers of kernel interfaces) imports nothing of proctap outside ``linux/`` but
  ``proctap.errors``;
- ``proctap/backends/`` imports none of the consumers: watcher, cli, run, render, cache, snapshot, enrich, text, top,
  export, pytest_plugin.

Imports inside functions and under ``TYPE_CHECKING`` count too: they are structure all the same.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parent.parent / "src" / "proctap"
CONSUMERS = (
    "watcher", "cli", "run", "render", "cache", "snapshot", "enrich", "text", "top", "export", "pytest_plugin",
)


class Layout:
    """The modules of one package tree and the proctap modules each imports."""

    def __init__(self, root: Path) -> None:
        self.files: dict[str, Path] = {}
        for f in sorted(root.rglob("*.py")):
            parts = list(f.relative_to(root.parent).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            self.files[".".join(parts)] = f
        self.imports = {m: self._imports_of(m) for m in self.files}

    def is_package(self, mod: str) -> bool:
        return self.files[mod].name == "__init__.py"

    def _imports_of(self, mod: str) -> set[str]:
        package = mod.split(".") if self.is_package(mod) else mod.split(".")[:-1]
        deps: set[str] = set()
        for node in ast.walk(ast.parse(self.files[mod].read_text(), str(self.files[mod]))):
            if isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package[: len(package) - (node.level - 1)]
                    name = ".".join(base + ([node.module] if node.module else []))
                else:
                    name = node.module or ""
                for alias in node.names:
                    full = f"{name}.{alias.name}"
                    deps.add(full if full in self.files else name)
            elif isinstance(node, ast.Import):
                deps.update(alias.name for alias in node.names)
        return {d for d in deps if d in self.files and d != mod}

    def counted_edges(self, mod: str) -> set[str]:
        """Imports that make structure: a package importing its own descendants (re-exporting them) does not."""
        if not self.is_package(mod):
            return self.imports[mod]
        return {d for d in self.imports[mod] if not d.startswith(mod + ".")}

    def cycles(self) -> list[list[str]]:
        """One cycle per strongly connected component of the counted import graph (empty: none)."""
        index: dict[str, int] = {}
        low: dict[str, int] = {}
        stack: list[str] = []
        on_stack: set[str] = set()
        found: list[list[str]] = []

        def visit(v: str) -> None:  # Tarjan; the graph is small, recursion is fine
            index[v] = low[v] = len(index)
            stack.append(v)
            on_stack.add(v)
            for w in sorted(self.counted_edges(v)):
                if w not in index:
                    visit(w)
                    low[v] = min(low[v], low[w])
                elif w in on_stack:
                    low[v] = min(low[v], index[w])
            if low[v] == index[v]:
                component = []
                while True:
                    w = stack.pop()
                    on_stack.discard(w)
                    component.append(w)
                    if w == v:
                        break
                if len(component) > 1:
                    found.append(self._cycle_in(set(component)))

        for m in sorted(self.files):
            if m not in index:
                visit(m)
        return found

    def _cycle_in(self, component: set[str]) -> list[str]:
        """A readable cycle through the component: a -> b -> ... -> a."""
        start = min(component)
        path, seen = [start], {start}
        while True:
            nxt = sorted(d for d in self.counted_edges(path[-1]) if d in component)
            back = [d for d in nxt if d == start]
            if back and len(path) > 1:
                return [*path, start]
            fresh = [d for d in nxt if d not in seen]
            if not fresh:
                return [*path, next(iter(nxt), start)]
            path.append(fresh[0])
            seen.add(fresh[0])

    def problems(self) -> list[str]:
        top = min(self.files, key=len)  # "proctap"
        backends_pkg, linux_pkg = f"{top}.backends", f"{top}.linux"
        out = []
        for cycle in self.cycles():
            out.append("import cycle: " + " -> ".join(cycle))
        backends = {m for m in self.files if m.startswith(backends_pkg + ".")}
        shared = {m for m in backends if m.rsplit(".", 1)[-1] == "base" or "common" in m.rsplit(".", 1)[-1]}
        shared |= {m for m in backends if self.is_package(m)}
        consumers = tuple(f"{top}.{c}" for c in CONSUMERS)
        for m in sorted(self.files):
            deps = self.imports[m]
            if m in backends and m not in shared:
                other = sorted(d for d in deps if d in backends and d not in shared and not d.startswith(m + "."))
                if other:
                    out.append(f"backend {m} imports backend(s) {', '.join(other)}: move what they share to a "
                               "*common* module")  # fmt: skip
            if m == linux_pkg or m.startswith(linux_pkg + "."):
                outside = sorted(
                    d for d in deps if not (d == linux_pkg or d.startswith(linux_pkg + ".") or d == f"{top}.errors")
                )
                if outside:
                    out.append(f"{m} (a kernel interface) imports {', '.join(outside)}: only linux/ and errors")
            if m == backends_pkg or m in backends:
                used = sorted(d for d in deps if any(d == c or d.startswith(c + ".") for c in consumers))
                if used:
                    out.append(f"backend {m} imports consumer(s) {', '.join(used)}: a backend only produces events")
        return out


def test_src_layout_has_no_cycles_and_keeps_the_layers_apart() -> None:
    problems = Layout(SRC).problems()
    assert not problems, "\n".join(problems)


# -- the checker itself, on small trees ---------------------------------------------------------------------------
def make_tree(tmp_path: Path, files: dict[str, str]) -> Layout:
    for name, text in {"__init__.py": "", "errors.py": "", "backends/__init__.py": "", "linux/__init__.py": "",
                       **files}.items():  # fmt: skip
        path = tmp_path / "proctap" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return Layout(tmp_path / "proctap")


def test_a_clean_tree_has_no_problems(tmp_path: Path) -> None:
    tree = make_tree(tmp_path, {
        "__init__.py": "from proctap.watcher import Watcher\nfrom . import errors\n",
        "watcher.py": "from proctap import errors\nfrom proctap.backends import registry\n",
        "backends/__init__.py": "from .netlink import Netlink\nfrom . import base\n",
        "backends/base.py": "from proctap.errors import Error\n",
        "backends/registry.py": "",
        "backends/tracing_common.py": "from proctap.linux import clock\n",
        "backends/tracefs.py": "from .base import B\nfrom .tracing_common import T\n"
                               "from proctap.linux.tracefs import ring\n",
        "backends/netlink.py": "from proctap.backends.base import B\nfrom proctap.linux import cn_proc\n",
        "linux/clock.py": "import os, time\nfrom proctap.errors import Error\n",
        "linux/cn_proc.py": "from . import clock\nfrom .clock import now\n",
        "linux/tracefs/__init__.py": "from .ring import Ring\n",
        "linux/tracefs/ring.py": "from ..clock import now\nfrom proctap.linux.tracefs import format\n",
        "linux/tracefs/format.py": "",
    })  # fmt: skip
    assert tree.problems() == []


@pytest.mark.parametrize(
    ("files", "expected"),
    [
        ({"a.py": "from proctap import b\n", "b.py": "def f():\n    from proctap.a import x\n"},
         "import cycle: proctap.a -> proctap.b -> proctap.a"),
        ({"a.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from . import b\n",
          "b.py": "from .c import y\n", "c.py": "import proctap.a\n"},
         "import cycle: proctap.a -> proctap.b -> proctap.c -> proctap.a"),
        ({"a.py": "from proctap import pkg\n", "pkg/__init__.py": "from proctap.a import x\n"},
         "import cycle: proctap.a -> proctap.pkg -> proctap.a"),
        ({"backends/kprobe.py": "from proctap.backends.tracefs import TaskGroups\n", "backends/tracefs.py": ""},
         "backend proctap.backends.kprobe imports backend(s) proctap.backends.tracefs"),
        ({"backends/kprobe.py": "from .tracefs import TaskGroups\n", "backends/tracefs.py": ""},
         "backend proctap.backends.kprobe imports backend(s) proctap.backends.tracefs"),
        ({"linux/procfs.py": "from proctap.events import Exec\n", "events.py": ""},
         "proctap.linux.procfs (a kernel interface) imports proctap.events"),
        ({"linux/bpf/__init__.py": "", "linux/bpf/ring.py": "from ...render import fmt\n", "render.py": ""},
         "proctap.linux.bpf.ring (a kernel interface) imports proctap.render"),
        ({"backends/proc.py": "def f():\n    from proctap.cache import T\n", "cache.py": ""},
         "backend proctap.backends.proc imports consumer(s) proctap.cache"),
        ({"backends/bpf.py": "from proctap.cli.common import opt\n", "cli/__init__.py": "", "cli/common.py": ""},
         "backend proctap.backends.bpf imports consumer(s) proctap.cli.common"),
    ],
    ids=["cycle", "cycle-through-type-checking", "cycle-through-a-package", "backend-to-backend",
         "backend-to-backend-relative", "linux-to-events", "linux-to-render", "backend-to-process-table",
         "backend-to-cli"],
)  # fmt: skip
def test_the_checker_finds(tmp_path: Path, files: dict[str, str], expected: str) -> None:
    problems = make_tree(tmp_path, files).problems()
    assert any(p.startswith(expected) for p in problems), problems
