"""proctap.text: every human format, pure functions (quoting is checked against bash itself)."""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from proctap.events import Accounting
from proctap.text import (
    elide,
    format_accounting,
    format_command,
    format_cpu_us,
    format_elapsed,
    format_program,
    format_size,
    format_status,
    quote_arg,
    sanitize,
)

ODD = os.fsdecode(b"a\xff\xfeb")


def test_quote_arg_forms() -> None:
    assert quote_arg("plain") == "plain"
    assert quote_arg("two words") == "'two words'"
    assert quote_arg("") == "''"
    assert quote_arg(ODD) == "$'a\\xff\\xfeb'"
    assert quote_arg("a\x1b[2Jb") == "$'a\\x1b[2Jb'"
    assert quote_arg("it's\n") == "$'it\\'s\\n'"
    assert quote_arg("back\\slash\t") == "$'back\\\\slash\\t'"  # a backslash before a control char stays itself
    assert quote_arg("\u202eevil") == "$'\\u202eevil'"  # bidi override: not printable


@pytest.mark.parametrize("arg", [ODD, "a\x1b[2Jb", "it's\n", "back\\slash\t", "x\x7fy", os.fsdecode(b"\xc3"), "é\x01"])
def test_bash_reads_quote_arg_back(arg: str) -> None:
    bash = shutil.which("bash")
    assert bash is not None
    out = subprocess.run([bash, "-c", f"printf %s {quote_arg(arg)}"], capture_output=True, check=True).stdout
    assert out == os.fsencode(arg)


@settings(max_examples=300)
@given(st.binary(max_size=40))
def test_quoted_and_sanitized_text_is_valid_utf8_without_control_chars(raw: bytes) -> None:
    text = os.fsdecode(raw)
    for out in (quote_arg(text), sanitize(text), format_command((text, text)), format_program(None, text, None)):
        out.encode("utf-8")  # no surrogates
        assert out.isprintable(), out


def test_sanitize_escapes_control_and_bytes_only() -> None:
    assert sanitize("héllo wörld") == "héllo wörld"
    assert sanitize(ODD) == "a\\xff\\xfeb"
    assert sanitize("a\x1b[2Jb\n") == "a\\x1b[2Jb\\n"
    assert sanitize("\ud800") == "\\ud800"  # a lone surrogate proctap never makes still cannot leak


def test_format_command_and_program() -> None:
    assert format_command(("/bin/true", ODD)) == "/bin/true $'a\\xff\\xfeb'"
    assert format_command(("/usr/bin/cc", "-c", "x y.c"), short_program=True) == "cc -c 'x y.c'"
    assert format_program(("/usr/bin/cc", "a\nb"), "/usr/bin/cc", "cc") == "cc $'a\\nb'"
    assert format_program(None, "/usr/bin/x\x1b", "x") == "x\\x1b"
    assert format_program(None, None, "kworker\x1b") == "[kworker\\x1b]"
    assert format_program((), None, None) == "?"


def test_elide_keeps_both_ends() -> None:
    assert elide("short", 10) == "short"
    text = elide("a" * 50 + "b" * 50, 31)
    assert len(text) == 31 and text.startswith("a" * 20) and text.endswith("b" * 10) and "…" in text


def test_durations_sizes_and_accounting() -> None:
    assert [format_elapsed(ns) for ns in (None, 0, 850_000, 12_345_678, 1_234_000_000, 123_400_000_000)] == [
        "?", "0us", "850us", "12.3ms", "1.234s", "123.4s",
    ]  # fmt: skip
    assert [format_cpu_us(us) for us in (0, 12_345, 1_234_567)] == ["0.0ms", "12.3ms", "1.23s"]
    assert [format_size(n) for n in (None, 0, 512, 1536, 348_160, 3_565_158, 12 << 30, 2 << 40)] == [
        "-", "0", "512", "1.5K", "340K", "3.4M", "12G", "2.0T",
    ]  # fmt: skip
    acct = Accounting(cpu_user_us=12_000, cpu_system_us=1_000, peak_rss_kb=3482, read_bytes=0, write_bytes=4096,
                      voluntary_switches=3, involuntary_switches=1)  # fmt: skip
    assert format_accounting(acct) == "cpu 12.0ms+1.0ms rss 3.4M io 0/4.0K csw 3+1"
    assert format_accounting(Accounting(cpu_user_us=0, cpu_system_us=2_000_000)) == "cpu 0.0ms+2.00s"


def test_format_status() -> None:
    assert format_status(3, None, False) == "exit 3"
    assert format_status(None, 11, True) == "SIGSEGV (core)"
    assert format_status(None, 11, True, core=" core") == "SIGSEGV core"
    assert format_status(None, None, False) == "?"
