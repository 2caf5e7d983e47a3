"""Probe definitions and the parsers of tracefs' kprobe files, on text captured from Debian's 6.1 kernel in the
test VM (tests/vm/capture_kprobe_data.py: tests/data/kprobe-6.1/)."""

from __future__ import annotations

from pathlib import Path

import pytest

from proctap.linux.tracefs import kprobe_events as kprobes
from proctap.linux.tracefs.kprobe_events import ProbeNames

DATA = Path(__file__).parent.parent / "data" / "kprobe-6.1"
CAPTURE = ProbeNames(120, 2035)  # the capturing process in the VM: pid, start ticks
STALE = ProbeNames(4_000_000, 1)  # a pid that did not exist
REUSED = ProbeNames(120, 2036, 1)  # the capturing pid with another start time: an earlier owner of a reused pid


def captured(name: str) -> str:
    return (DATA / name).read_text()


def test_definitions_on_x86_64_are_what_the_6_1_kernel_accepted() -> None:
    names = CAPTURE
    accepted = captured("kprobe_events").splitlines()
    generated = [
        kprobes.fork_entry_probe(names, "kernel_clone", "6.1.0-56-amd64", "x86_64"),
        kprobes.fork_return_probe(names, "kernel_clone", 20),
        kprobes.exit_probe(names, "x86_64"),
        kprobes.exit_group_probe(names, "taskstats_exit", "x86_64"),
    ]
    assert generated == accepted[:4]


@pytest.mark.parametrize(
    ("machine", "expected_flags", "expected_code", "expected_group_dead"),
    [
        ("x86_64", "flags=+0(%di):u64", "code=%di:s64", "group_dead=%si:s32"),
        ("aarch64", "flags=+0(%x0):u64", "code=%x0:s64", "group_dead=%x1:s32"),
        ("riscv64", "flags=+0(%a0):u64", "code=%a0:s64", "group_dead=%a1:s32"),
    ],
)
def test_definitions_use_the_architecture_argument_registers(
    machine: str, expected_flags: str, expected_code: str, expected_group_dead: str
) -> None:
    names = ProbeNames(7, 5)
    assert kprobes.fork_entry_probe(names, "kernel_clone", "6.1.0", machine).endswith(" kernel_clone " + expected_flags)
    assert expected_code in kprobes.exit_probe(names, machine)
    assert kprobes.exit_group_probe(names, "acct_collect", machine) == (
        f"p:proctap_7_5_0/exitgrp_7_0 acct_collect {expected_group_dead}"
    )


def test_unknown_architecture_is_a_key_error() -> None:
    with pytest.raises(KeyError):
        kprobes.registers_for("vax")


@pytest.mark.parametrize(
    ("function", "release", "expected"),
    [
        ("kernel_clone", "5.10.0", "+0(%di):u64"),
        ("_do_fork", "5.4.0-150-generic", "+0(%di):u64"),  # 5.3 made _do_fork take struct kernel_clone_args *
        ("_do_fork", "4.19.0-27-amd64", "%di:u64"),
        ("do_fork", "4.1.0", "%di:u64"),
    ],
)
def test_clone_flags_fetch_follows_the_fork_function_signature(function: str, release: str, expected: str) -> None:
    assert kprobes.fork_flags_fetch(function, release, "%di") == expected


def test_return_probe_maxactive() -> None:
    names = ProbeNames(1, 2, 3)
    definition = kprobes.fork_return_probe(names, "kernel_clone", 20)
    assert definition.startswith("r20:proctap_1_2_3/forkret_1_3 kernel_clone ")
    assert kprobes.fork_return_probe(names, "_do_fork", 0).startswith("r:proctap_1_2_3/forkret_1_3 _do_fork ")


def test_parse_dynamic_events_captured() -> None:
    events = kprobes.parse_dynamic_events(captured("dynamic_events"))
    assert len(events) == 13
    first = events[0]
    assert (first.kind, first.group, first.event, first.target) == ("p", CAPTURE.group, "fork_120_0", "kernel_clone")
    assert first.args == "flags=+0(%di):u64"
    assert events[1].kind == "r20"
    assert events[-1].group == "someone_else"


def test_parse_dynamic_events_skips_synthetic_and_blank_lines() -> None:
    text = "wakeup_latency u64 lat; pid_t pid\n\np:proctap_5_9_0/exit_5_0 do_exit code=%di:s64\n"
    assert [e.event for e in kprobes.parse_dynamic_events(text)] == ["exit_5_0"]


def test_stale_events_are_proctap_groups_whose_owner_is_gone() -> None:
    events = kprobes.parse_dynamic_events(captured("dynamic_events"))
    alive = {(CAPTURE.owner, CAPTURE.start)}
    stale = kprobes.stale_events(events, lambda owner: owner in alive)
    assert {e.group for e in stale} == {STALE.group, REUSED.group}
    assert len(stale) == 8
    assert kprobes.removal_command(stale[0].group, stale[0].event) == f"-:{STALE.group}/{STALE.fork_entry}"


def test_group_owner() -> None:
    assert kprobes.group_owner(CAPTURE.group) == (120, 2035)
    assert kprobes.group_owner(REUSED.group) == (120, 2036)


@pytest.mark.parametrize("group", ["proctap", "proctap_", "proctap_12", "proctap_1_2", "proctap_1_x_0", "someone_else",
                                   "xproctap_1_2_0"])  # fmt: skip
def test_group_owner_ignores_foreign_groups(group: str) -> None:
    assert kprobes.group_owner(group) is None


def test_parse_kprobe_profile_captured() -> None:
    profile = kprobes.parse_kprobe_profile(captured("kprobe_profile"))
    assert profile[CAPTURE.fork_entry] == kprobes.ProbeProfile(CAPTURE.fork_entry, 5, 0)
    assert profile[CAPTURE.exit_group].hits == 5
    assert profile[STALE.exit].hits == 0
    assert profile["probe"].misses == 0
    assert len(profile) == 13


def test_parse_kprobe_profile_with_misses() -> None:
    # an r1 return probe while six threads vfork at once: 10 instances missing (captured in the VM)
    profile = kprobes.parse_kprobe_profile(captured("kprobe_profile.missed"))
    assert profile == {"fr_1": kprobes.ProbeProfile("fr_1", 4, 10)}
