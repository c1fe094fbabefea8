"""The run phase of the model: buffer enable outcomes, pinning, KVM_EXIT_RLIMIT, VmLck."""

from __future__ import annotations

import dataclasses

import pytest

from kvmspe import abi
from kvmspe.arch.registers import (
    PMBIDR_EL1,
    PMBLIMITR_EL1,
    PMBSR_BSC_FULL,
    PMBSR_BSC_SIZE,
    PMBSR_EC_BUF,
    PMBSR_EC_FAULT_S1,
    PMBSR_EL1,
)
from kvmspe.arch.stage1 import Stage1
from kvmspe.assumptions import DEFAULT
from kvmspe.model.kernel import Host, Spu, Vcpu, Vm

KiB, MiB, GiB = 1 << 10, 1 << 20, 1 << 30
SPE, IRQ, SPU, MAX = abi.KVM_ARM_VCPU_SPE_CTRL, 0, 1, 2
IDLE = DEFAULT.idle_exit
#: Pages of the 4 KiB, 4-level tables translating a buffer inside one 2 MiB chunk.
TABLES_4K = 4 * 4096


def make(
    size: int = 1 * MiB, limit: int | None = None, *, page: int = 4096, vcpus: int = 1, **host_kw: object
) -> tuple[Host, Vm, list[Vcpu]]:
    host = Host(page, [Spu(7, 0, align=host_kw.pop("align", 0))], limit, **host_kw)  # type: ignore[arg-type]
    vm = host.create_vm()
    cpus = [vm.create_vcpu() for _ in range(vcpus)]
    for v in cpus:
        v.set_device_attr(SPE, IRQ, 23)
    cpus[0].set_device_attr(SPE, SPU, 7)
    cpus[0].set_device_attr(SPE, MAX, size)
    for v in cpus:
        v.set_device_attr(SPE, abi.KVM_ARM_VCPU_SPE_INIT, None)
    return host, vm, cpus


def pmbsr(v: Vcpu) -> dict[str, int | str]:
    return PMBSR_EL1.decode(v.guest_read("PMBSR_EL1"))


def test_enable_pins_buffer_and_tables() -> None:
    host, _, (v,) = make()
    v.enable_buffer(GiB, MiB)
    assert v.run() == abi.Exit(IDLE)
    assert v.pinned_bytes == host.locked_bytes == MiB + TABLES_4K
    assert pmbsr(v)["S"] == 0


def test_nothing_is_pinned_before_run() -> None:
    host, _, (v,) = make()
    v.enable_buffer(GiB, MiB)
    assert v.pending and host.locked_bytes == 0


def test_size_above_max_buffer_size_is_a_buffer_management_event() -> None:
    host, _, (v,) = make(MiB)
    v.enable_buffer(GiB, MiB + 4 * KiB)
    assert v.run() == abi.Exit(IDLE)
    status = pmbsr(v)
    assert (status["EC"], status["MSS"], status["S"]) == ("BUF", PMBSR_BSC_SIZE, 1)
    assert host.locked_bytes == 0 and v.pinned_bytes == 0


def test_size_equal_to_max_buffer_size_is_pinned() -> None:
    host, _, (v,) = make(MiB)
    v.enable_buffer(GiB, MiB)
    v.run()
    assert pmbsr(v)["S"] == 0 and host.locked_bytes == MiB + TABLES_4K


def test_max_buffer_size_zero_means_no_limit() -> None:
    host, _, (v,) = make(0)
    v.enable_buffer(GiB, 64 * MiB)
    v.run()
    assert pmbsr(v)["S"] == 0 and v.pinned_bytes > 64 * MiB


def test_address_without_translation_is_a_stage1_fault() -> None:
    host, _, (v,) = make()
    v.enable_buffer(1 << 48, MiB)  # beyond a 48-bit VA
    v.run()
    status = pmbsr(v)
    assert (status["EC"], status["S"]) == ("FAULT_S1", 1)
    assert status["MSS"] == DEFAULT.stage1_fault_fsc  # translation fault, level 0
    assert host.locked_bytes == 0


def test_a_hole_in_the_buffer_is_a_last_level_stage1_fault() -> None:
    host, _, (v,) = make()
    v.enable_buffer(GiB, MiB, Stage1(unmapped=((GiB + 8 * KiB, 4096),)))
    v.run()
    assert PMBSR_EL1.get(v.guest_read("PMBSR_EL1"), "EC") == PMBSR_EC_FAULT_S1
    assert pmbsr(v)["MSS"] == DEFAULT.stage1_fault_fsc | 3
    assert host.locked_bytes == 0


def test_no_stage1_at_all_is_a_stage1_fault() -> None:
    _, _, (v,) = make()
    v.enable_buffer(GiB, MiB)
    v.guest_map(None)
    v.run()
    assert pmbsr(v)["EC"] == "FAULT_S1"


def test_empty_buffer_is_a_buffer_full_event() -> None:
    host, _, (v,) = make()
    v.guest_write("PMBPTR_EL1", GiB)
    v.guest_write("PMBLIMITR_EL1", PMBLIMITR_EL1.encode(LIMIT=GiB >> 12, E=1))
    v.guest_map(Stage1())
    v.run()
    status = pmbsr(v)
    assert (status["EC"], status["MSS"], status["S"]) == ("BUF", PMBSR_BSC_FULL, 1)
    assert host.locked_bytes == 0


def test_misaligned_pointer_low_bits_are_res0() -> None:
    host, _, (v,) = make(align=11)
    v.enable_buffer(GiB + 0x7FF, MiB - 0x7FF)
    assert v.guest_read("PMBPTR_EL1") == GiB
    v.run()
    assert v.pinned_bytes == MiB + TABLES_4K


def test_misaligned_pointer_kept_when_assumed_read_write() -> None:
    rw = dataclasses.replace(DEFAULT, pmbptr_low_bits="rw")
    host, _, (v,) = make(align=11, assumptions=rw)
    v.enable_buffer(GiB + 0x7FF, MiB - 0x7FF)
    assert v.guest_read("PMBPTR_EL1") == GiB + 0x7FF
    v.run()
    assert v.pinned_bytes == MiB + TABLES_4K  # pages are pinned whole either way


def test_limit_must_be_4k_aligned_and_low_bits_are_other_fields() -> None:
    _, _, (v,) = make()
    with pytest.raises(ValueError, match="4 KiB aligned"):
        v.enable_buffer(GiB, MiB + 1)
    v.guest_write("PMBLIMITR_EL1", GiB | 0xFD8)  # RES0 bits [11:6] and [4:3] ignored
    assert v.guest_read("PMBLIMITR_EL1") == GiB
    assert v.limit == GiB and not v.enabled


def test_guest_reads_advertised_pmbidr() -> None:
    _, _, (v,) = make(2 * MiB)
    assert v.guest_read("PMBIDR_EL1") == v.guest_pmbidr
    assert PMBIDR_EL1.get(v.guest_read("PMBIDR_EL1"), "MaxBuffSize") == 1 << 9


def test_bad_guest_register_names_are_refused() -> None:
    _, _, (v,) = make()
    with pytest.raises(ValueError, match="accepted"):
        v.guest_write("PMBIDR_EL1", 0)
    with pytest.raises(ValueError, match="accepted"):
        v.guest_read("PMSCR_EL1")
    with pytest.raises(ValueError, match="64-bit"):
        v.guest_write("PMBPTR_EL1", -1)


def test_whole_cycle_rlimit_raise_run_pin_disable_vmlck_kept() -> None:
    need = MiB + TABLES_4K
    host, vm, (v,) = make(MiB, MiB, locked=0)
    v.enable_buffer(GiB, MiB)
    exit_ = v.run()
    assert exit_.is_rlimit and exit_.reason == abi.ASSUMED.exit_rlimit
    assert exit_.name == "KVM_EXIT_RLIMIT"
    assert exit_.rlimit_excess == need - MiB
    assert host.locked_bytes == 0 and v.pinned_bytes == 0
    # Still over: the next run exits again.
    assert v.run().rlimit_excess == need - MiB
    host.set_memlock_limit(MiB + exit_.rlimit_excess)
    assert v.run() == abi.Exit(IDLE)
    assert v.pinned_bytes == host.locked_bytes == need
    assert host.vm_lck == need and host.memlock_room() == 0
    v.disable_buffer()
    assert host.locked_bytes == 0 and v.pinned_bytes == 0
    assert host.vm_lck == need
    v.run()
    assert host.vm_lck == need
    vm.close()
    assert host.vm_lck == 0


def test_excess_counts_what_is_locked_already() -> None:
    host, _, (v,) = make(MiB, MiB + 4 * KiB, locked=4 * KiB)
    v.enable_buffer(GiB, MiB)
    # Without the 4 KiB locked already, the excess would be 12 KiB.
    assert v.run().rlimit_excess == TABLES_4K


def test_two_vcpus_share_table_pages_once() -> None:
    host, _, (a, b) = make(MiB, vcpus=2)
    a.enable_buffer(GiB, MiB)
    b.enable_buffer(GiB + MiB, MiB)  # same 2 MiB chunk: all four table pages shared
    a.run()
    b.run()
    assert a.pinned_bytes == b.pinned_bytes == MiB + TABLES_4K
    assert host.locked_bytes == 2 * MiB + TABLES_4K
    a.disable_buffer()
    assert host.locked_bytes == MiB + TABLES_4K  # b still holds the shared tables
    b.disable_buffer()
    assert host.locked_bytes == 0


def test_tables_in_one_large_host_page_are_pinned_once() -> None:
    host, _, (v,) = make(MiB, page=65536)
    v.enable_buffer(GiB, MiB, Stage1(layout="contiguous"))
    v.run()
    # Data 1 MiB; 4 KiB tables: each level's run starts its own 64 KiB page.
    assert host.locked_bytes == MiB + 4 * 65536


def test_moving_an_enabled_buffer_repins() -> None:
    host, _, (v,) = make(4 * MiB)
    v.enable_buffer(GiB, MiB)
    v.run()
    v.guest_write("PMBLIMITR_EL1", PMBLIMITR_EL1.encode(LIMIT=(GiB + 2 * MiB) >> 12, E=1))
    assert host.locked_bytes == 0 and v.pending
    v.run()
    assert host.locked_bytes == 2 * MiB + TABLES_4K


def test_disable_processed_at_run_when_assumed() -> None:
    late = dataclasses.replace(DEFAULT, disable_unpins_at_write=False)
    host, _, (v,) = make(assumptions=late)
    v.enable_buffer(GiB, MiB)
    v.run()
    v.disable_buffer()
    assert host.locked_bytes == MiB + TABLES_4K
    v.run()
    assert host.locked_bytes == 0


def test_clearing_pmbsr_after_an_event_retries_the_enable() -> None:
    host, vm, (v,) = make(MiB)
    v.enable_buffer(1 << 48, MiB)
    v.run()
    assert pmbsr(v)["S"] == 1
    v.guest_write("PMBPTR_EL1", GiB)
    v.guest_write("PMBLIMITR_EL1", PMBLIMITR_EL1.encode(LIMIT=(GiB + MiB) >> 12, E=1))
    v.run()
    assert host.locked_bytes == 0  # S=1 still: profiling stays stopped
    v.guest_write("PMBSR_EL1", 0)
    v.run()
    assert host.locked_bytes == MiB + TABLES_4K


def test_held_mode_keeps_the_set_time_charge_and_pins_on_top() -> None:
    held = dataclasses.replace(DEFAULT, set_time_charge_mode="held")
    host, vm, (v,) = make(MiB, assumptions=held)
    assert host.locked_bytes == MiB
    v.enable_buffer(GiB, MiB)
    v.run()
    assert host.locked_bytes == 2 * MiB + TABLES_4K
    vm.close()
    assert host.locked_bytes == 0


def test_check_mode_set_time_charge_is_only_a_check() -> None:
    host, vm, (v,) = make(MiB)
    assert host.locked_bytes == 0


def test_release_on_vm_close_unpins() -> None:
    host, vm, (v,) = make()
    v.enable_buffer(GiB, MiB)
    v.run()
    vm.close()
    assert host.locked_bytes == 0 and v.pinned_bytes == 0


def test_buffer_event_bsc_constant_is_the_size_code() -> None:
    assert (PMBSR_EC_BUF, PMBSR_BSC_SIZE) == (0, 0x4)
