"""Host discovery: against the shipped big.LITTLE snapshot, broken trees, and this machine."""

from __future__ import annotations

import json
import os
import resource
import shutil
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kvmspe import abi
from kvmspe.host.discovery import (
    HostInfo,
    discover,
    fixture_roots,
    format_cpulist,
    parse_cpulist,
    read_spe_instances,
    read_vm_lck,
)

NO_KVM = "/nonexistent/kvm"


@pytest.fixture
def fixture_tree(tmp_path: Path) -> dict[str, str]:
    """A writable copy of the shipped snapshot, to break on purpose."""
    roots = fixture_roots()
    shutil.copytree(roots["sysfs_root"], tmp_path / "sys")
    shutil.copytree(roots["procfs_root"], tmp_path / "proc")
    return {"sysfs_root": str(tmp_path / "sys"), "procfs_root": str(tmp_path / "proc")}


def _spe_dir(roots: dict[str, str], n: int) -> Path:
    return Path(roots["sysfs_root"], "bus", "event_source", "devices", f"arm_spe_{n}")


# -- CPU lists ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "cpus"),
    [
        ("0-3,8", [0, 1, 2, 3, 8]),
        ("0-3\n", [0, 1, 2, 3]),
        ("5", [5]),
        ("", []),
        ("4-7,0-1", [0, 1, 4, 5, 6, 7]),
    ],
)
def test_parse_cpulist(text: str, cpus: list[int]) -> None:
    assert parse_cpulist(text) == cpus


@pytest.mark.parametrize("text", ["a-b", "3-1", "0-", "-1", "0x3"])
def test_parse_cpulist_rejects_with_a_one_line_reason(text: str) -> None:
    with pytest.raises(ValueError, match="expected") as info:
        parse_cpulist(text)
    assert "\n" not in str(info.value)


@settings(max_examples=200)
@given(st.sets(st.integers(0, 300), max_size=40))
def test_format_cpulist_is_the_inverse_of_parse_cpulist(cpus: set[int]) -> None:
    text = format_cpulist(cpus)
    assert parse_cpulist(text) == sorted(cpus)
    # Kernel style: no range of one CPU, no two ranges that touch.
    for part in filter(None, text.split(",")):
        lo, _, hi = part.partition("-")
        assert not hi or int(lo) < int(hi)


@pytest.mark.parametrize(
    ("cpus", "text"),
    [([], ""), ([3], "3"), ([0, 1, 2, 3, 8], "0-3,8"), ([5, 4, 7, 6, 4], "4-7"), ([1, 3], "1,3")],
)
def test_format_cpulist(cpus: list[int], text: str) -> None:
    assert format_cpulist(cpus) == text


# -- the shipped snapshot ---------------------------------------------------------------------


def test_fixture_has_two_spe_instances_on_big_and_little() -> None:
    spes, reason = read_spe_instances(fixture_roots()["sysfs_root"])
    assert reason is None
    assert [(s.name, s.type, s.cpus) for s in spes] == [
        ("arm_spe_0", 10, [0, 1, 2, 3]),
        ("arm_spe_1", 11, [4, 5, 6, 7]),
    ]
    little, big = spes
    assert little.caps == {"arch_inst": 1, "count_size": 12, "ernd": 1, "min_interval": 256}
    assert little.max_buff_size is None
    assert big.max_buff_size == 4 << 20
    assert big.formats["ts_enable"] == "config:0"
    assert big.formats["event_filter"] == "config1:0-63"
    assert little.problems == [] and big.problems == []


def test_discover_on_fixture_reads_vm_lck_and_instances() -> None:
    info = discover(**fixture_roots(), dev_kvm=NO_KVM)
    assert [s.name for s in info.spe_instances] == ["arm_spe_0", "arm_spe_1"]
    assert info.vm_lck == 8192 * 1024 and info.vm_lck_reason is None


def test_unknown_fixture_name_lists_the_shipped_ones() -> None:
    with pytest.raises(ValueError, match="arm64-big-little"):
        fixture_roots("sparc")


def test_non_spe_pmus_are_passed_over() -> None:
    spes, _ = read_spe_instances(fixture_roots()["sysfs_root"])
    assert all(s.name.startswith("arm_spe_") for s in spes)


# -- broken trees: reasons, not exceptions ------------------------------------------------------


def test_missing_sysfs_is_a_reason(tmp_path: Path) -> None:
    info = discover(sysfs_root=str(tmp_path / "nosys"), procfs_root=str(tmp_path), dev_kvm=NO_KVM)
    assert info.spe_instances == []
    assert info.spe_instances_reason and "cannot list" in info.spe_instances_reason
    assert info.vm_lck is None and info.vm_lck_reason and "cannot read" in info.vm_lck_reason


def test_no_spe_pmu_is_a_reason(tmp_path: Path) -> None:
    (tmp_path / "bus" / "event_source" / "devices" / "software").mkdir(parents=True)
    spes, reason = read_spe_instances(str(tmp_path))
    assert spes == [] and reason and "no arm_spe_N PMU" in reason


def test_unreadable_files_become_problems(fixture_tree: dict[str, str]) -> None:
    spe0 = _spe_dir(fixture_tree, 0)
    (spe0 / "type").unlink()
    (spe0 / "cpumask").write_text("four\n")
    (spe0 / "caps" / "ernd").write_text("yes\n")
    shutil.rmtree(_spe_dir(fixture_tree, 1) / "caps")
    spes, _ = read_spe_instances(fixture_tree["sysfs_root"])
    little, big = spes
    assert little.type is None
    assert any(p.startswith("type:") for p in little.problems)
    assert any(p.startswith("cpumask:") for p in little.problems)
    assert any("caps/ernd" in p for p in little.problems)
    assert "ernd" not in little.caps and little.caps["count_size"] == 12
    assert big.caps == {} and any(p.startswith("caps/") for p in big.problems)


@pytest.mark.parametrize(
    ("status", "expected", "why"),
    [
        ("Name:\tx\nVmLck:\t      12 kB\n", 12 * 1024, None),
        ("Name:\tkthreadd\n", None, "no VmLck line"),
        ("VmLck:\tlots\n", None, "cannot parse"),
    ],
)
def test_vm_lck_parsing(tmp_path: Path, status: str, expected: int | None, why: str | None) -> None:
    (tmp_path / "77").mkdir()
    (tmp_path / "77" / "status").write_text(status)
    value, reason = read_vm_lck(str(tmp_path), 77)
    assert value == expected
    assert (reason is None) if why is None else (reason is not None and why in reason)


def test_memlock_of_a_pid_that_is_gone_is_a_reason(tmp_path: Path) -> None:
    pid = 2**22 + 12345  # above the default pid_max, so never a live process
    info = discover(sysfs_root=str(tmp_path), procfs_root=str(tmp_path), dev_kvm=NO_KVM, pid=pid)
    assert info.memlock_soft is None and info.memlock_reason and str(pid) in info.memlock_reason


def test_missing_dev_kvm_is_a_reason() -> None:
    info = discover(**fixture_roots(), dev_kvm=NO_KVM)
    assert not info.kvm_present and not info.kvm_usable
    assert info.kvm_reason and "does not exist" in info.kvm_reason
    assert info.api_version is None and not info.spe_supported
    assert info.spe_reason.startswith("not probed")


def test_a_device_that_is_not_kvm_is_present_but_unusable() -> None:
    info = discover(**fixture_roots(), dev_kvm="/dev/null")
    assert info.kvm_present and not info.kvm_usable
    assert info.kvm_reason and "KVM_GET_API_VERSION" in info.kvm_reason


def test_to_dict_has_stable_keys_and_is_json() -> None:
    info = discover(**fixture_roots(), dev_kvm=NO_KVM)
    data = info.to_dict()
    assert list(data) == [f for f in HostInfo.__dataclass_fields__]
    instance_keys = ["name", "type", "cpumask", "cpus", "caps", "formats", "problems"]
    assert list(data["spe_instances"][0]) == instance_keys
    assert json.loads(json.dumps(data)) == data


# -- this machine ---------------------------------------------------------------------------------


def test_this_machine_basics() -> None:
    info = discover()
    assert info.machine == os.uname().machine and info.kernel_release == os.uname().release
    assert info.page_size == os.sysconf("SC_PAGE_SIZE")
    soft, hard = resource.getrlimit(resource.RLIMIT_MEMLOCK)
    assert info.memlock_soft == (None if soft == resource.RLIM_INFINITY else soft)
    assert info.memlock_hard == (None if hard == resource.RLIM_INFINITY else hard)
    assert info.vm_lck is not None and info.vm_lck >= 0


def test_this_machine_kvm_and_spe_answer_with_reasons() -> None:
    info = discover()
    if not info.kvm_usable:
        assert info.kvm_reason
        pytest.skip(f"/dev/kvm is not usable here: {info.kvm_reason}")
    assert info.api_version == abi.KVM_API_VERSION
    assert set(info.spe_attrs) == {i.name for i in abi.ATTRS.values()}
    if info.spe_supported:
        pytest.skip("this host's KVM supports SPE; the not-supported reason cannot be seen")
    assert "SPE not supported on this host" in info.spe_reason
    if info.arch == "x86_64":
        assert info.cap_arm_spe is None and info.cap_arm_spe_reason
        assert "x86_64" in info.spe_reason
        assert info.spe_instances == [] and info.spe_instances_reason
