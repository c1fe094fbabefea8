"""What the command line shows is computed by the library, and tested there: probe's
verdict (:mod:`kvmspe.host.verdict`), what an errno or a name means
(:mod:`kvmspe.abi.meanings`), the ACPI document (:func:`kvmspe.firmware.acpi.madt_document`)
and the kinds of the bring-up's steps (:class:`kvmspe.vmm.StepKind`). The CLI's own
tests (test_cli.py, test_guest.py, test_docs_cli.py) check how it renders them."""

from __future__ import annotations

import errno
import os
from typing import Any

import pytest

from kvmspe import abi, vmm
from kvmspe.abi import meanings
from kvmspe.errors import InvalidArgumentError
from kvmspe.firmware import acpi
from kvmspe.host import discovery
from kvmspe.host.discovery import HostInfo, SpeInstance
from kvmspe.host.verdict import verdict


def _host(**facts: Any) -> HostInfo:
    """An arm64 host with ``facts`` found about it."""
    return HostInfo(
        machine="aarch64", arch="aarch64", kernel_release="7.2", page_size=4096, dev_kvm="/dev/kvm", **facts
    )


# --- probe's verdict ------------------------------------------------------------------------


def test_a_host_without_a_usable_kvm_cannot_whatever_spe_says() -> None:
    v = verdict(_host(kvm_usable=False, kvm_reason="/dev/kvm: no such file", spe_supported=True))
    assert (v.can_run_spe_guests, v.reason, v.exit_status) == (False, "/dev/kvm: no such file", 1)
    unexplained = verdict(_host(kvm_usable=False))
    assert unexplained.reason == "KVM is not usable"


def test_a_usable_kvm_can_exactly_when_it_supports_spe() -> None:
    yes = verdict(_host(kvm_usable=True, spe_supported=True, spe_reason="KVM_HAS_DEVICE_ATTR answers 0"))
    assert (yes.can_run_spe_guests, yes.reason, yes.exit_status) == (True, "KVM_HAS_DEVICE_ATTR answers 0", 0)
    no = verdict(_host(kvm_usable=True, spe_supported=False, spe_reason="ENXIO for the group"))
    assert (no.can_run_spe_guests, no.reason, no.exit_status) == (False, "ENXIO for the group", 1)


def test_the_verdicts_document_counts_each_units_cpus() -> None:
    info = _host(spe_instances=[SpeInstance("arm_spe_0", type=10, cpus=[0, 1, 2]), SpeInstance("arm_spe_1")])
    doc = verdict(info).to_dict()
    assert list(doc) == ["can_run_spe_guests", "reason", "host"]
    assert [u["cpu_count"] for u in doc["host"]["spe_instances"]] == [3, 0]
    assert info.to_dict()["spe_instances"][0].get("cpu_count") is None  # the host's own data is untouched


def test_the_verdict_of_a_snapshot_is_the_one_probe_prints() -> None:
    info = discovery.discover(**discovery.fixture_roots("arm64-big-little"))
    v = verdict(info)
    assert v.can_run_spe_guests == (info.kvm_usable and info.spe_supported)
    assert v.exit_status == (0 if v.can_run_spe_guests else 1)


# --- what an errno or a name means ------------------------------------------------------------


def test_an_errno_by_name_number_or_case_means_the_same() -> None:
    by_name, by_number, lower = (meanings.explain_topic(t) for t in ("EDOM", "33", " edom "))
    assert by_name.meanings == by_number.meanings == lower.meanings
    assert (by_name.kind, by_name.errno, by_name.name) == ("errno", errno.EDOM, "EDOM")
    assert by_name.strerror == os.strerror(errno.EDOM)
    assert [(m.attribute, m.call) for m in by_name.meanings] == [("KVM_ARM_VCPU_SPE_MAX_BUFFER_SIZE", "set")]
    assert lower.query == "edom"


def test_every_call_answering_an_errno_is_found_and_none_is_an_empty_answer() -> None:
    found = meanings.explain_topic("ENXIO")
    expected = [(a, c) for a, calls in abi.ERRNO_TABLE.items() for c, t in calls.items() if errno.ENXIO in t]
    assert [(m.attribute, m.call) for m in found.meanings] == expected and len(expected) > 4
    assert meanings.explain_topic("EPERM").meanings == ()


def test_an_unknown_errno_or_name_is_refused_with_what_is_accepted() -> None:
    with pytest.raises(InvalidArgumentError, match="not an errno this system knows"):
        meanings.explain_topic("999999")
    with pytest.raises(InvalidArgumentError, match=r"accepted: an errno \(EDOM, 33\) or one of .*KVM_RUN"):
        meanings.explain_topic("KVM_NOPE")


def test_an_attribute_in_either_spelling_lists_every_errno_of_every_call() -> None:
    a = meanings.explain_topic("KVM_ARM_VCPU_MAX_BUFFER_SIZE")
    b = meanings.explain_topic("KVM_ARM_VCPU_SPE_MAX_BUFFER_SIZE")
    assert a.meanings == b.meanings and a.name == b.name == "KVM_ARM_VCPU_SPE_MAX_BUFFER_SIZE"
    assert a.info is not None and a.value_type == "__u64" and a.attributes == 1
    sets = [m.errno for m in a.meanings if m.call == "set"]
    assert sets == sorted(sets) and errno.ERANGE in sets
    assert meanings.explain_topic("KVM_ARM_VCPU_SPE_INIT").value_type == "none"
    assert meanings.explain_topic("KVM_ARM_VCPU_SPE_IRQ").value_type == "int"


def test_the_group_covers_every_attribute_and_kvm_run_its_own_table() -> None:
    group = meanings.explain_topic("KVM_ARM_VCPU_SPE_CTRL")
    assert group.group == abi.KVM_ARM_VCPU_SPE_CTRL and group.attributes == len(abi.ATTRS)
    assert {m.attribute for m in group.meanings} == {info.name for info in abi.ATTRS.values()}
    run = meanings.explain_topic("kvm_run")
    assert run.info is None and run.group is None and {m.call for m in run.meanings} == {"run"}
    assert run.to_dict()["kind"] == "name" and "group" not in run.to_dict()


# --- the ACPI document ------------------------------------------------------------------------


def test_the_madt_document_has_one_entry_per_gicc_and_the_fields_bytes() -> None:
    doc = acpi.madt_document(22, 3)
    assert (doc["offset"], doc["width"], doc["value"], doc["bytes"]) == (acpi.SPE_OFFSET, 2, 22, [22, 0])
    assert [g["gicc"] for g in doc["gicc"]] == [0, 1, 2]
    assert all(g["value"] == 22 and g["bytes"] == [22, 0] for g in doc["gicc"])
    assert doc["min_gicc_length"] == acpi.ACPI_MADT_GICC_SPE
    with pytest.raises(InvalidArgumentError):
        acpi.madt_document(40)  # not a PPI


# --- the kinds of the bring-up's steps -----------------------------------------------------------


def test_the_configurations_steps_carry_their_kind_and_no_other_step_does() -> None:
    choice = vmm.choose_backend("model", profile="default-4k")
    r = vmm.bring_up(choice, vcpus=2, irq=21, max_buffer_size=4 << 20)
    kinds = {st.step: st.kind for st in r.steps}
    assert kinds["has KVM_ARM_VCPU_SPE_IRQ"] is vmm.StepKind.HAS
    assert kinds["set KVM_ARM_VCPU_SPE_IRQ=21"] is vmm.StepKind.SET
    assert kinds["KVM_CREATE_VM"] is vmm.StepKind.OTHER
    configured = [st for st in r.steps if st.kind is not vmm.StepKind.OTHER]
    assert len(configured) == 2 * len(vmm.planned_steps(21, r.spu, r.max_buffer_size))


def test_a_refused_set_is_a_set_step() -> None:
    choice = vmm.choose_backend("model", profile="default-4k")
    r = vmm.bring_up(choice, vcpus=1, irq=21, max_buffer_size=0x401000)  # no MaxBuffSize encoding: EDOM
    refused = [st for st in r.steps if not st.ok]
    assert [(st.kind, st.errno_name) for st in refused] == [(vmm.StepKind.SET, "EDOM")]
