"""Every example in README.md, bench/README.md and docs/*.md runs, so the docs cannot drift from the code.

The examples are the fenced blocks of the markdown, by their label:

* ``python``: run as a script (a subprocess of the interpreter running the tests, as root) while a small real
  workload runs beside it (a shell that keeps running ``sh -c 'exit 3'`` and ``sleep 0.1``); it must exit 0 within
  ``TIMEOUT`` seconds without a traceback.  Snippets must end by themselves (a ``break``, a count, a duration), as
  a user copying them would want.
* ``console`` / ``sh``: shell command lines.  In a block with ``$ `` prompts the prompted lines are the commands and
  the other lines their sample output; otherwise every line is a command (``# ...`` comments dropped).  Each runs
  under bash, as root, and must exit 0 without a traceback.  Sample output is compared with the real one where it
  does not depend on the moment: the table header of ``proctap watch``, the backends ``proctap backends`` lists.
* ``json``: every line is an object with the keys, in order, of a real one of its kind.
* anything else (``text``): not run (diagrams, synopses, an output shown without its command).

``<!-- not-run: REASON -->`` on the line before a block keeps it from running: it is reported as skipped with the
reason, so the summary counts them.  Only what cannot run here has one: a VM boot, the whole CI, minutes of
benchmark.

Commands are adapted only as issue 10 did when it tried them: ``sudo`` is dropped (the tests run as root);
``proctap watch`` without ``-d``/``--duration`` gets ``-d 1``, and a longer duration is cut to 1 s; the placeholder
pid ``1234`` and ``$$`` ("this shell") become the workload shell's pid; a command that runs ``make`` runs in a
temporary directory holding a two-file C program and its Makefile.  ``proctap`` is this checkout's (a wrapper put
first on PATH); ``python3`` is whatever PATH has: scripts/install makes the system's find proctap
(:func:`test_system_python3_runs_proctap`).

Everything runs at once in threads (``results``), so the wall time is that of the slowest example.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import typing
from collections.abc import Iterator
from pathlib import Path

import pytest

from proctap.events import EVENT_CLASSES, Event, Exit, Fork
from proctap.render import TableRenderer

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src"
DOC_FILES = [ROOT / "README.md", ROOT / "bench" / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
TIMEOUT = float(os.environ.get("PROCTAP_TEST_TIMEOUT", "30"))
WORKLOAD = "while :; do sh -c 'exit 3'; sleep 0.1; done"
# A two-file C program for the commands that run make.
PROJECT = {
    "Makefile": "hello: main.o greet.o\n\tcc -o hello main.o greet.o\n\n%.o: %.c\n\tcc -c $< -o $@\n",
    "greet.c": '#include <stdio.h>\nvoid greet(void) { puts("hello"); }\n',
    "main.c": "void greet(void);\nint main(void) { greet(); return 0; }\n",
}

FENCE = re.compile(r"^(```+|~~~+)\s*([\w+-]*)\s*$")
NOT_RUN = re.compile(r"^<!--\s*not-run:\s*(.*?)\s*-->$")
COMMAND_LABELS = {"console", "sh", "shell", "bash"}
TRACEBACK = "Traceback (most recent call last)"

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="the examples are run as root, as the docs say")


# -- reading the markdown ----------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Block:
    path: Path
    line: int  # of the opening fence, 1-based
    label: str
    lines: tuple[str, ...]
    not_run: str | None  # the reason of a <!-- not-run: ... --> marker

    @property
    def where(self) -> str:
        return f"{self.path.relative_to(ROOT)}:{self.line}"


@dataclasses.dataclass(frozen=True)
class Example:
    """One thing to run: a command line, a python block, a json block (or a not-run block, to report)."""

    block: Block
    line: int
    kind: str  # "command", "python", "json", "not-run"
    text: str  # the command as documented (comment dropped), or the block's source
    sample: tuple[str, ...] = ()  # the output the docs show after a command

    @property
    def id(self) -> str:
        where = f"{self.block.path.relative_to(ROOT)}:{self.line}"
        return f"{where} {self.text}" if self.kind == "command" else f"{where} {self.kind}"


def read_blocks(path: Path) -> list[Block]:
    lines = path.read_text().splitlines()
    out: list[Block] = []
    i = 0
    while i < len(lines):
        m = FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        fence, label, start = m.group(1), m.group(2), i
        end = start + 1
        while end < len(lines) and not lines[end].startswith(fence[0] * len(fence)):
            end += 1
        assert end < len(lines), f"{path.name}:{start + 1}: unterminated code block"
        prev = start - 1
        while prev >= 0 and not lines[prev].strip():
            prev -= 1
        marker = NOT_RUN.match(lines[prev].strip()) if prev >= 0 else None
        out.append(Block(path, start + 1, label, tuple(lines[start + 1 : end]), marker and marker.group(1)))
        i = end + 1
    return out


def strip_comment(line: str) -> str:
    """A shell line without its ``# comment`` (a ``#`` after a blank, outside quotes)."""
    quote = ""
    for i, ch in enumerate(line):
        if quote:
            if ch == quote:
                quote = ""
        elif ch in "'\"":
            quote = ch
        elif ch == "#" and (i == 0 or line[i - 1] in " \t"):
            return line[:i].rstrip()
    return line.rstrip()


def examples_of(block: Block) -> list[Example]:
    if block.not_run is not None:
        return [Example(block, block.line, "not-run", block.not_run)]
    if block.label == "python":
        return [Example(block, block.line, "python", "\n".join(block.lines) + "\n")]
    if block.label == "json":
        return [Example(block, block.line, "json", "\n".join(block.lines))]
    if block.label not in COMMAND_LABELS:
        return []
    out: list[Example] = []
    prompted = any(line.startswith("$ ") for line in block.lines)
    current: tuple[int, str] | None = None
    sample: list[str] = []
    for n, line in enumerate(block.lines, start=block.line + 1):
        if prompted and not line.startswith("$ "):
            sample.append(line)
            continue
        if current is not None:
            out.append(Example(block, current[0], "command", current[1], tuple(sample)))
            current, sample = None, []
        text = strip_comment(line[2:] if prompted else line)
        if text:
            current = (n, text)
    if current is not None:
        out.append(Example(block, current[0], "command", current[1], tuple(sample)))
    return out


BLOCKS = [block for path in DOC_FILES for block in read_blocks(path)]
EXAMPLES = [ex for block in BLOCKS for ex in examples_of(block)]


# -- running them -----------------------------------------------------------------------------------------------


@dataclasses.dataclass
class Result:
    argv: list[str]
    returncode: int | None  # None: killed at the timeout
    stdout: str
    stderr: str
    cwd: Path


def adapt(command: str, pid: int) -> str:
    """The documented command as issue 10 ran it (see the module's docstring)."""
    command = re.sub(r"(^|&&|\|\||;)(\s*)sudo\s+", r"\1\2", command)
    command = re.sub(r"(--pid|-p)(\s+|=)(1234\b|\$\$)", rf"\g<1>\g<2>{pid}", command)
    parts = re.split(r"(&&|\|\||;|\|)", command)
    for i, part in enumerate(parts):
        if re.search(r"\bproctap watch\b", part):
            duration = re.search(r"(?:^|\s)(?:-d|--duration)(?:\s+|=)(\S+)", part)
            if duration is None:
                parts[i] = part.rstrip() + " -d 1" + (" " if part.endswith(" ") else "")
            elif float(duration.group(1)) > 1:
                parts[i] = part[: duration.start(1)] + "1" + part[duration.end(1) :]
    return "".join(parts)


def run(argv: list[str], cwd: Path, env: dict[str, str]) -> Result:
    proc = subprocess.Popen(
        argv, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True
    )
    try:
        out, err = proc.communicate(timeout=TIMEOUT)
        code: int | None = proc.returncode
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        code = None
    return Result(argv, code, out, err, cwd)


@pytest.fixture(scope="module")
def workload() -> Iterator[int]:
    """A shell that keeps starting short processes: what the examples watch.  Its pid stands in for 1234 and $$."""
    proc = subprocess.Popen(["sh", "-c", WORKLOAD], start_new_session=True)
    try:
        yield proc.pid
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """PATH with this checkout's ``proctap`` first (the installed one may be another checkout's)."""
    bindir = tmp_path_factory.mktemp("bin")
    wrapper = bindir / "proctap"
    wrapper.write_text(f'#!/bin/sh\nPYTHONPATH="{SRC}" exec "{sys.executable}" -m proctap "$@"\n')
    wrapper.chmod(0o755)
    environ = {k: v for k, v in os.environ.items() if not k.startswith("PROCTAP_")}
    return {**environ, "PATH": f"{bindir}:{environ.get('PATH', '/usr/bin:/bin')}"}


def real_json_objects(pid: int, env: dict[str, str], cwd: Path) -> Result:
    """A real NDJSON stream to compare the json examples with."""
    argv = [sys.executable, "-m", "proctap", "watch", "--json", "-e", "all", "-p", str(pid), "-d", "1.5"]
    return run(argv, cwd, {**env, "PYTHONPATH": str(SRC)})


@pytest.fixture(scope="module")
def results(
    request: pytest.FixtureRequest, workload: int, env: dict[str, str], tmp_path_factory: pytest.TempPathFactory
) -> dict[str, Result]:
    """Runs every selected example at once (threads: each is a subprocess) and keeps what each did."""
    wanted = {
        item.callspec.params["example"].id
        for item in request.session.items
        if item.name.startswith("test_example[") and hasattr(item, "callspec")
    }
    jobs: dict[str, tuple[list[str], Path, dict[str, str]]] = {}
    for ex in EXAMPLES:
        if ex.id not in wanted or ex.kind == "not-run":
            continue
        cwd = tmp_path_factory.mktemp("example")
        if ex.kind == "command":
            command = adapt(ex.text, workload)
            if re.search(r"\bmake\b", command):
                for name, text in PROJECT.items():
                    (cwd / name).write_text(text)
            elif not re.search(r"\bproctap\b", command.split()[0]):
                cwd = ROOT  # repository paths: scripts/..., bench/...
            jobs[ex.id] = (["bash", "-c", command], cwd, env)
        elif ex.kind == "python":
            script = cwd / "example.py"
            script.write_text(re.sub(r"\bpid=1234\b", f"pid={workload}", ex.text))
            jobs[ex.id] = ([sys.executable, str(script)], cwd, {**env, "PYTHONPATH": str(SRC)})
    out: dict[str, Result] = {}
    with concurrent.futures.ThreadPoolExecutor(max_workers=8) as pool:
        futures = {key: pool.submit(run, *job) for key, job in jobs.items()}
        if any(ex.kind == "json" and ex.id in wanted for ex in EXAMPLES):
            futures["json"] = pool.submit(real_json_objects, workload, env, tmp_path_factory.mktemp("json"))
        for key, fut in futures.items():
            out[key] = fut.result()
    return out


def describe(result: Result) -> str:
    code = f"killed after {TIMEOUT:g} s" if result.returncode is None else f"exit status {result.returncode}"
    out, err = result.stdout[-3000:], result.stderr[-3000:]
    return f"{' '.join(result.argv)} (in {result.cwd}): {code}\nstdout:\n{out}\nstderr:\n{err}"


def check_sample(ex: Example, result: Result) -> None:
    """The parts of a documented output that do not depend on the moment must be what the command prints."""
    header = [line for line in ex.sample if line.startswith("TIME ")]
    if header:
        real = result.stdout.splitlines()
        assert real and real[0].rstrip() == header[0].rstrip(), f"table header: docs {header[0]!r}, real {real[:1]}"
    if ex.sample and re.search(r"\bproctap backends$", ex.text):
        shown = [line[:2] + line[2:].split()[0] for line in ex.sample if line.strip()]
        real = [line[:2] + line[2:].split()[0] for line in result.stdout.splitlines() if line.strip()]
        assert shown == real, f"proctap backends: docs list {shown}, real {real}"
    run_header = [line for line in ex.sample if line.lstrip().startswith("START ")]
    if run_header:
        assert run_header[0] in result.stderr.splitlines(), f"run report header {run_header[0]!r} not printed"


@pytest.mark.parametrize("example", EXAMPLES, ids=[ex.id for ex in EXAMPLES])
def test_example(example: Example, results: dict[str, Result]) -> None:
    if example.kind == "not-run":
        pytest.skip(f"not-run: {example.text}")
    if example.kind == "json":
        check_json(example, results["json"])
        return
    result = results[example.id]
    assert result.returncode == 0, describe(result)
    assert TRACEBACK not in result.stdout + result.stderr, describe(result)
    if example.kind == "command":
        check_sample(example, result)


def check_json(ex: Example, real: Result) -> None:
    assert real.returncode == 0, describe(real)
    keys_of: dict[str, list[str]] = {}
    for line in real.stdout.splitlines():
        obj = json.loads(line)
        keys_of.setdefault(obj["event"], list(obj))
    for line in ex.text.splitlines():
        obj = json.loads(line)
        kind = obj["event"]
        assert kind in keys_of, f"no real {kind} event to compare with (got {sorted(keys_of)})"
        assert list(obj) == keys_of[kind], f"{kind}: docs {list(obj)}\nreal {keys_of[kind]}"


# -- the docs' structure -----------------------------------------------------------------------------------------


def test_markers_and_blocks_are_well_formed() -> None:
    """A not-run marker belongs to the block right after it, and every example is a fenced block (an indented
    block would be skipped by this test without anyone noticing)."""
    for path in DOC_FILES:
        lines = path.read_text().splitlines()
        fenced = {b.line for b in BLOCKS if b.path == path}
        in_fence = False
        for i, line in enumerate(lines):
            if FENCE.match(line):
                in_fence = not in_fence
                continue
            if in_fence:
                continue
            if NOT_RUN.match(line.strip()):
                nxt = next((j for j in range(i + 1, len(lines)) if lines[j].strip()), None)
                assert nxt is not None and nxt + 1 in fenced, f"{path.name}:{i + 1}: not-run marker without a block"
                assert NOT_RUN.match(line.strip()).group(1), f"{path.name}:{i + 1}: not-run marker without a reason"  # type: ignore[union-attr]
            prev = next((lines[j] for j in range(i - 1, -1, -1) if lines[j].strip()), "")
            starts_block = line.startswith("    ") and i > 0 and not lines[i - 1].strip()
            after_text = prev and not prev.startswith((" ", "*", "-", "|")) and not re.match(r"\d+\.", prev)
            assert not (starts_block and after_text), f"{path.name}:{i + 1}: an indented code block: fence it"
    assert [b for b in BLOCKS if b.not_run is not None], "no not-run markers found: is the marker syntax broken?"
    commandlike = re.compile(r"^(\$ |sudo |proctap |python3? |scripts/|bench/|tests/)")
    for block in BLOCKS:
        if not block.label:  # a diagram or a synopsis; commands go into console/sh blocks, where they are run
            assert not any(commandlike.match(line) for line in block.lines), f"{block.where}: label this block"


def help_options(subcommand: str) -> set[str]:
    """Every option string ``proctap SUBCOMMAND --help`` lists (but -h/--help)."""
    out = subprocess.run(
        [sys.executable, "-m", "proctap", subcommand, "--help"],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(SRC), "COLUMNS": "200"},
        check=True,
    ).stdout
    options: set[str] = set()
    for line in out.split("options:", 1)[1].splitlines():
        if re.match(r"^ {2}-", line):
            spec = re.split(r"\s{2,}", line.strip())[0]
            options |= set(re.findall(r"(?<![\w-])(--?[A-Za-z][\w-]*)", spec))
    return options - {"-h", "--help"}


def table_options(doc: Path, heading: str) -> set[str]:
    """The option strings in the first column of the options table under ``heading``."""
    text = doc.read_text()
    section = text[text.index(heading) :]
    options: set[str] = set()
    for line in section.splitlines()[1:]:
        if line.startswith("#"):
            break
        if line.startswith("| `"):
            first = line.split("|")[1]
            options |= set(re.findall(r"(?<![\w-])(--?[A-Za-z][\w-]*)", first))
    return options


@pytest.mark.parametrize(
    ("subcommand", "doc", "heading"),
    [
        ("watch", ROOT / "docs" / "cli.md", "### Options"),
        ("run", ROOT / "docs" / "run.md", "## Options"),
        ("top", ROOT / "docs" / "top.md", "## Options"),
    ],
)
def test_options_table_matches_help(subcommand: str, doc: Path, heading: str) -> None:
    """The docs' options table lists exactly the options ``--help`` lists, both ways."""
    documented, real = table_options(doc, heading), help_options(subcommand)
    assert documented == real, (
        f"{doc.name}: not in --help: {sorted(documented - real)}; not in the table: {sorted(real - documented)}"
    )


def one_of_each() -> list[Event]:
    """A constructed event of each class (and a thread Fork and Exit): what the table can show."""
    filler: dict[str, typing.Any] = {"int": 1, "str": "x", "bool": False, "float": 1.0}
    out: list[Event] = []
    for cls in EVENT_CLASSES.values():
        hints = typing.get_type_hints(cls)
        values = {
            f.name: filler.get(getattr(hints[f.name], "__name__", ""), 1)
            for f in dataclasses.fields(cls)
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        }
        out.append(cls(**values))
    out.append(Fork(source="x", timestamp_ns=1, wall_time=1.0, pid=1, tid=2, parent_pid=1, is_thread=True))
    out.append(Exit(source="x", timestamp_ns=1, wall_time=1.0, pid=1, tid=2, is_thread=True))
    return out


def test_event_column_names_are_documented() -> None:
    """docs/cli.md's EVENT table names exactly what the table renderer can print in that column."""
    renderer = TableRenderer(open(os.devnull, "w"))  # noqa: SIM115 (closed with the test process)
    shown = {renderer.format(ev).split()[1] for ev in one_of_each()}
    text = (ROOT / "docs" / "cli.md").read_text()
    table = text[text.index("| EVENT |") :].split("\n\n", 1)[0]
    documented = {name for line in table.splitlines()[2:] for name in re.findall(r"^\| `([^`]+)`", line)}
    assert documented == shown, f"documented {sorted(documented)}, printed {sorted(shown)}"


# -- the interpreters and the bench scripts ----------------------------------------------------------------------


def test_system_python3_runs_proctap() -> None:
    """README ("Which Python"): after scripts/install the system's python3 runs proctap (``python3 -m proctap``).
    scripts/test sets it up only where no proctap is found, so on a machine with an install it may be another
    checkout's: what is checked is that it imports and runs, not which tree it comes from."""
    interpreters = {shutil.which("python3", path=os.environ.get("PATH")), "/usr/bin/python3", "/usr/local/bin/python3"}
    checked = 0
    for py in sorted(p for p in interpreters if p and os.access(p, os.X_OK)):
        probe = "import sys; print(sys.version_info >= (3, 10) and sys.prefix == sys.base_prefix)"
        if subprocess.run([py, "-c", probe], capture_output=True, text=True).stdout.strip() != "True":
            continue  # too old for proctap, or a virtualenv (which installs proctap itself)
        env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
        version = subprocess.run([py, "-m", "proctap", "--version"], capture_output=True, text=True, env=env, cwd="/")
        assert version.returncode == 0 and version.stdout.startswith("proctap "), (
            f"{py} -m proctap (run scripts/install): {version.stdout}{version.stderr}"
        )
        checked += 1
    assert checked, "no system python3 >= 3.10 found"


BENCH_SCRIPTS = sorted(p for p in (ROOT / "bench").glob("*.py") if '__name__ == "__main__"' in p.read_text())


@pytest.mark.parametrize("script", BENCH_SCRIPTS, ids=[p.name for p in BENCH_SCRIPTS])
def test_bench_script_accepts_help(script: Path) -> None:
    """Every bench script explains itself with --help (exit 0, a usage line, no traceback)."""
    result = run([sys.executable, str(script), "--help"], ROOT, {**os.environ, "PYTHONPATH": str(SRC)})
    assert result.returncode == 0 and result.stdout.startswith("usage:"), describe(result)
    assert TRACEBACK not in result.stderr, describe(result)
