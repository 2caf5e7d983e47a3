"""One JSON form for text that is not UTF-8, and one quoting of it in text: checked on the encoder and on the real
command line (``watch --json``, ``run --json/--report/--html``) with argv bytes exec'd for real.

The form (docs/cli.md, NDJSON): strings are valid UTF-8, each undecodable byte reads U+FFFD, and the object gets
``raw_b64`` with the exact bytes of exactly the fields that were not valid UTF-8.
"""

from __future__ import annotations

import dataclasses
import json
import os
import select
import signal
import subprocess
import sys
import time
from enum import Enum
from pathlib import Path
from typing import Any, get_args, get_origin, get_type_hints

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from proctap.events import (
    EVENT_CLASSES,
    Accounting,
    Event,
    Exec,
    Fork,
    Origin,
    event_dict,
    event_json,
    exact_bytes,
    json_texts,
)

COMMON = {"source": "netlink", "timestamp_ns": 5, "wall_time": 1.5, "pid": 42, "tid": 42, "start_ns": 7}
ODD = b"a\xff\xfeb"
ESC = b"a\x1b[2Jb"
WAIT = 30.0


def strict_json(raw: bytes) -> Any:
    """Parse as a strict parser in another language would: UTF-8 without lone surrogates, even escaped."""
    text = raw.decode("utf-8")  # strict: raises on invalid UTF-8
    assert "\\ud8" not in text.lower() and "\\udc" not in text.lower(), "lone surrogate escape in the JSON"
    return json.loads(text)


def exec_event(*argv: bytes, filename: bytes = b"/bin/x", comm: bytes = b"x") -> Exec:
    return Exec(**COMMON, filename=os.fsdecode(filename), argv=tuple(map(os.fsdecode, argv)),  # type: ignore[arg-type]
                comm=os.fsdecode(comm))  # fmt: skip


# -- the encoder ---------------------------------------------------------------------------------------------------


@given(st.lists(st.binary(max_size=12), min_size=1, max_size=4), st.binary(min_size=1, max_size=12))
def test_any_bytes_round_trip_through_strict_json(argv: list[bytes], filename: bytes) -> None:
    obj = strict_json(json.dumps(event_dict(exec_event(*argv, filename=filename)), ensure_ascii=False).encode())
    assert exact_bytes(obj, "argv") == argv
    assert exact_bytes(obj, "filename") == filename
    assert exact_bytes(obj, "comm") == b"x"
    valid = [b for b in [*argv, filename] if _is_utf8(b)]
    assert ("raw_b64" in obj) == (len(valid) < len(argv) + 1)


def _is_utf8(raw: bytes) -> bool:
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def test_the_documented_form() -> None:
    obj = event_dict(exec_event(b"/bin/true", ODD, filename=b"/tmp/\xff"))
    assert obj["argv"] == ["/bin/true", "a\ufffd\ufffdb"] and obj["filename"] == "/tmp/\ufffd"
    assert obj["raw_b64"] == {"filename": "L3RtcC//", "argv": ["L2Jpbi90cnVl", "Yf/+Yg=="]}
    assert list(obj)[-2:] == ["key", "raw_b64"]  # appended after every documented field
    clean = event_dict(exec_event(b"/bin/true", "é".encode(), b"\xef\xbf\xbd"))  # a real U+FFFD is valid UTF-8
    assert "raw_b64" not in clean and clean["argv"][2] == "\ufffd"
    assert exact_bytes({"argv": None}, "argv") is None and exact_bytes({}, "filename") is None
    fixed = json_texts({"comm": os.fsdecode(b"\x80")}, ["comm", "missing"])
    assert fixed == {"comm": "\ufffd", "raw_b64": {"comm": "gA=="}}


def _reference(event: Event) -> dict[str, Any]:
    """The JSON form written the slow, obvious way (for ASCII text): what event_dict must equal."""
    out: dict[str, Any] = {"event": event.kind.value}
    for f in dataclasses.fields(event):
        if f.name in ("process", "where"):  # the cache's record and the context: never in the JSON
            continue
        value = getattr(event, f.name)
        if dataclasses.is_dataclass(value):
            value = dataclasses.asdict(value)  # type: ignore[arg-type]
        out[f.name] = value.value if isinstance(value, Enum) else list(value) if isinstance(value, tuple) else value
    out["key"] = None if event.key is None else str(event.key)
    for name in type(event).json_derived:
        out[name] = getattr(event, name)
    return out


def test_fast_encoder_equals_the_obvious_one() -> None:
    sys.path.insert(0, str(Path(__file__).parent))
    from test_render import _full_events

    events = _full_events()
    assert {type(e) for e in events} == set(EVENT_CLASSES.values())
    for ev in events:
        assert event_dict(ev) == _reference(ev) and list(event_dict(ev)) == list(_reference(ev))  # type: ignore[arg-type]
        assert ev.to_dict() == event_dict(ev)  # type: ignore[attr-defined,arg-type]


def test_subclasses_get_their_own_plan() -> None:
    @dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
    class Tagged(Fork):
        tag: str = ""

    event = Tagged(**COMMON, parent_pid=1, tag=os.fsdecode(b"t\xff"))  # type: ignore[arg-type]
    obj = event_dict(event)
    assert obj["event"] == "fork" and obj["tag"] == "t\ufffd" and exact_bytes(obj, "tag") == b"t\xff"
    assert event_json(event) == _encoded(event)
    assert event_json(dataclasses.replace(event, tag="t")) == _encoded(dataclasses.replace(event, tag="t"))


# -- event_json: the same bytes as the dict, written directly ------------------------------------------------------


def _encoded(event: Event) -> str:
    """The NDJSON line as the JSON form defines it: event_dict, compact, ASCII-only."""
    return json.dumps(event_dict(event), ensure_ascii=True, separators=(",", ":"))


def test_event_json_is_the_encoded_dict() -> None:
    sys.path.insert(0, str(Path(__file__).parent))
    from test_render import _full_events

    events: list[Any] = _full_events()
    events += [dataclasses.replace(ev, start_ns=None) for ev in events]  # no key
    odd = exec_event(b"/bin/true", ODD, ESC, filename=b"/tmp/\xff", comm="é".encode())
    events += [odd, exec_event(b"caf\xc3\xa9", b'\x00\x01"\\', b"")]  # non-UTF-8, non-ASCII, control characters
    for ev in events:
        assert event_json(ev) == _encoded(ev)


_TEXT = st.one_of(st.text(max_size=6), st.binary(max_size=6).map(os.fsdecode), st.sampled_from(["", 'a\n"b\\']))
_INT = st.one_of(st.integers(-(1 << 70), 1 << 70), st.booleans())  # a bool where an int is declared: another form
_FLOAT = st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.integers(0, 1 << 40))
_ACCOUNTING = st.builds(Accounting, cpu_user_us=st.integers(0, 1 << 40), cpu_system_us=st.integers(0, 9),
                        peak_rss_kb=st.none() | st.integers(0, 9), per_process=st.booleans())  # fmt: skip


def _strategy(hint: Any) -> st.SearchStrategy[Any]:
    """Values of a declared field type, and some that only pass type checkers (bools as ints, NaN, ints as floats)."""
    if get_origin(hint) is not None and type(None) in get_args(hint):
        return st.none() | st.one_of(*(_strategy(t) for t in get_args(hint) if t is not type(None)))
    if hint is bool:
        return st.booleans()
    if hint is int:
        return _INT
    if hint is float:
        return _FLOAT
    if hint is str:
        return _TEXT
    if get_origin(hint) is tuple:
        return st.lists(_TEXT, max_size=3).map(tuple)
    if hint is Origin:
        return st.sampled_from(Origin)
    if hint is Accounting:
        return _ACCOUNTING
    raise AssertionError(f"no strategy for {hint}: add one")


def _events() -> st.SearchStrategy[Event]:
    def of(cls: type[Event]) -> st.SearchStrategy[Event]:
        hints = get_type_hints(cls)
        names = [f.name for f in dataclasses.fields(cls) if f.name not in ("process", "where")]
        values = {name: _strategy(hints[name]) for name in names}
        return st.fixed_dictionaries(values).map(lambda kw: cls(**kw))

    return st.one_of(*(of(cls) for cls in EVENT_CLASSES.values()))


@settings(max_examples=400)
@given(_events())
def test_event_json_equals_the_dict_for_any_values(event: Event) -> None:
    assert event_json(event) == _encoded(event)


def test_remembered_argv_lists_stay_exact() -> None:
    """The writer remembers argv lists it wrote (a storm repeats them): a second line, an equal argv, a non-ASCII
    one and items of the wrong type still come out as the dict's encoding."""
    plain = exec_event(b"echo", b"hi", filename=b"/bin/echo")
    odd = exec_event(b"echo", b"caf\xc3\xa9", b"\xff", filename=b"/bin/echo")
    for ev in (plain, plain, dataclasses.replace(plain, argv=("echo", "hi")), odd, odd):
        assert event_json(ev) == _encoded(ev)
    for argv in (("echo", 1), ("echo", ["x"])):  # only a type checker would stop these: the dict path decides
        ev = dataclasses.replace(plain, argv=argv)  # type: ignore[arg-type]
        try:
            expected = _encoded(ev)
        except TypeError:
            continue
        assert event_json(ev) == expected


def test_events_stay_frozen_with_their_signature() -> None:
    fork = Fork(**COMMON, parent_pid=1)  # type: ignore[arg-type]
    assert fork.is_thread is False and fork.comm is None and fork.process is None and fork.where is None
    assert fork == Fork(**COMMON, parent_pid=1, process=object())  # type: ignore[arg-type]  # process: compare=False
    with pytest.raises(dataclasses.FrozenInstanceError):
        fork.pid = 3  # type: ignore[misc]
    with pytest.raises(TypeError):
        Fork(**COMMON)  # type: ignore[arg-type,call-arg]  # parent_pid is required
    with pytest.raises(TypeError):
        Fork(**COMMON, parent_pid=1, bogus=2)  # type: ignore[arg-type,call-arg]
    with pytest.raises(TypeError):
        Fork("netlink", 5, 1.5, 42, 42, parent_pid=1)  # type: ignore[misc]  # keyword-only
    assert dataclasses.replace(fork, pid=9).pid == 9 and fork.pid == 42


# -- the command line, on real processes ---------------------------------------------------------------------------


def proctap(*args: str | bytes) -> list[str | bytes]:
    exe = Path(sys.executable).with_name("proctap")
    return [str(exe), *args] if exe.exists() else [sys.executable, "-m", "proctap", *args]


def test_run_json_html_and_report_keep_the_exact_bytes(tmp_path: Path) -> None:
    report, doc_path, page = tmp_path / "r.txt", tmp_path / "r.json", tmp_path / "r.html"
    done = subprocess.run(
        proctap("run", "--report", str(report), "--json", str(doc_path), "--html", str(page), "--",
                "sh", "-c", '/bin/true "$(printf "a\\377\\376b")" "$(printf "a\\033[2Jb")"'),
        capture_output=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr.decode(errors="replace")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.html", "r.json", "r.txt"]  # no temporary file left
    for output in (done.stderr, report.read_bytes(), page.read_bytes()):
        text = output.decode("utf-8")  # strict
        assert "\x1b" not in text and not any(ord(c) < 32 and c not in "\n" for c in text)
    lines = report.read_text().splitlines()
    true_line = next(line for line in lines if "] true " in line)
    assert true_line.endswith("true $'a\\xff\\xfeb' $'a\\x1b[2Jb'")

    doc = strict_json(doc_path.read_bytes())
    proc = next(p for p in doc["processes"] if p["argv"] and p["argv"][0] == "/bin/true")
    assert exact_bytes(proc, "argv") == [b"/bin/true", ODD, ESC]
    assert proc["argv"][1] == "a\ufffd\ufffdb" and proc["argv"][2] == ESC.decode()
    assert exact_bytes(proc["execs"][-1], "argv") == [b"/bin/true", ODD, ESC]
    assert "$'a\\\\xff\\\\xfeb'" in page.read_text()  # the label, formatted as in the report (JSON-escaped)


def test_run_command_itself_with_bytes(tmp_path: Path) -> None:
    doc_path = tmp_path / "r.json"
    done = subprocess.run(proctap("run", "-q", "--json", str(doc_path), "--", "/bin/true", ODD), capture_output=True,
                          timeout=120)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert b"true $'a\\xff\\xfeb'" in done.stderr  # the summary line quotes the command as the tree does
    done.stderr.decode("utf-8")
    doc = strict_json(doc_path.read_bytes())
    assert exact_bytes(doc, "command") == [b"/bin/true", ODD]
    assert exact_bytes(doc["processes"][0], "argv") == [b"/bin/true", ODD]


class Lines:
    """Lines of a pipe as they come, each parsed as strict JSON, with a deadline."""

    def __init__(self, fd: int) -> None:
        self.fd, self.buf, self.seen = fd, b"", []  # type: tuple[int, bytes, list[Any]]

    def until(self, predicate: Any, deadline: float) -> Any:
        while True:
            for obj in self.seen:
                if predicate(obj):
                    return obj
            assert time.monotonic() < deadline, f"not seen in time; last lines {self.seen[-5:]}"
            if select.select([self.fd], [], [], 1)[0]:
                chunk = os.read(self.fd, 65536)
                assert chunk, "proctap watch ended"
                *lines, self.buf = (self.buf + chunk).split(b"\n")
                self.seen.extend(strict_json(line) for line in lines)


def test_watch_json_is_strict_utf8_with_the_exact_bytes() -> None:
    argv = [b"/bin/sh", b"-c", b"read x", ODD, ESC, b"\xe2\x82"]
    watcher = subprocess.Popen(proctap("watch", "--json", "--pid", str(os.getpid())), stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE)  # fmt: skip
    assert watcher.stdout is not None and watcher.stderr is not None
    try:
        deadline = time.monotonic() + WAIT
        started = b""
        while b"proctap: watching" not in started and time.monotonic() < deadline:
            if select.select([watcher.stderr], [], [], 1)[0]:
                started += os.read(watcher.stderr.fileno(), 4096)
        assert b"proctap: watching" in started, started
        out = Lines(watcher.stdout.fileno())
        child = subprocess.Popen(argv, stdin=subprocess.PIPE)
        assert child.stdin is not None
        execd = out.until(lambda e: e["event"] == "exec" and e["pid"] == child.pid, deadline)
        child.stdin.close()
        child.wait(WAIT)
        out.until(lambda e: e["event"] == "exit" and e["pid"] == child.pid, deadline)
    finally:
        watcher.send_signal(signal.SIGINT)
        watcher.communicate(timeout=WAIT)
    assert exact_bytes(execd, "argv") == argv
    assert execd["argv"][3:] == ["a\ufffd\ufffdb", ESC.decode(), "\ufffd\ufffd"]  # one U+FFFD per byte
    assert set(execd["raw_b64"]) == {"argv"}


def test_positional_constructors_make_the_same_events() -> None:
    """events.constructor(cls, "names..."): the named fields in that order, the others at their defaults; names checked
    when it is made (unknown, missing required, repeated)."""
    from proctap.events import constructor

    sys.path.insert(0, str(Path(__file__).parent))
    from test_render import _full_events

    for event in _full_events():
        cls = type(event)
        names = [f.name for f in dataclasses.fields(cls) if getattr(event, f.name) != f.default]
        names.reverse()  # any order
        made = constructor(cls, " ".join(names))(*(getattr(event, n) for n in names))  # type: ignore[type-var]
        assert made == event and type(made) is cls
        assert all(getattr(made, f.name) is getattr(event, f.name) for f in dataclasses.fields(cls))
    for bad in ("source pid", "source timestamp_ns wall_time pid tid parent_pid bogus", "pid pid"):
        with pytest.raises(TypeError, match="constructor"):
            constructor(Fork, bad)
