"""What the guest's firmware is told about SPE: the device-tree node and the ACPI field.

The node printed by ``kvmspe guest --dt`` is compiled with ``dtc`` (Debian's
device-tree-compiler) inside a minimal tree whose root's interrupt parent is a
GIC with ``#interrupt-cells = <3>``; any dtc warning fails the test, and the
checks that matter here (the interrupt specifier's size against the parent's
``#interrupt-cells``, the interrupt provider, node names) are errors. The
.dtb is decompiled again and its ``compatible`` and ``interrupts`` must be what
the library says. Without dtc these tests skip, saying so; under CI (CI=true,
where ``tests/export/setup-tools.sh`` installs it) a missing dtc fails.
"""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
import struct
import subprocess
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from test_cli import assert_bad_input, kvmspe

from kvmspe import abi
from kvmspe.assumptions import DEFAULT
from kvmspe.errors import InvalidArgumentError, KvmError
from kvmspe.firmware import acpi, devicetree
from kvmspe.firmware.interrupt import check_spe_ppi, ppi_range
from kvmspe.model.kernel import Host, Spu

TIMEOUT = 60
#: dtc checks promoted to errors (every other check's warning fails the test too).
DTC_ERRORS = ("interrupts_property", "interrupt_provider", "node_name_chars", "node_name_format")


def guest_json(*args: str) -> Any:
    r = kvmspe("guest", *args, "--json")
    assert r.returncode == 0, r.stderr
    assert r.stderr == ""
    return json.loads(r.stdout)


# --- dtc -------------------------------------------------------------------------------------------


def need_dtc() -> str:
    dtc = shutil.which("dtc")
    if dtc is None:
        reason = "dtc is missing: apt-get install device-tree-compiler (tests/export/setup-tools.sh does)"
        if os.environ.get("CI") == "true":
            pytest.fail(reason)
        pytest.skip(reason)
    return dtc


def minimal_tree(node: str, gic: str) -> str:
    """A whole tree: root cells, a GIC as the root's interrupt parent, and ``node`` under /."""
    if gic == "v3":
        intc = (
            "\tgic: interrupt-controller@8000000 {\n"
            '\t\tcompatible = "arm,gic-v3";\n'
            "\t\t#interrupt-cells = <3>;\n"
            "\t\t#address-cells = <2>;\n"
            "\t\t#size-cells = <2>;\n"
            "\t\tranges;\n"
            "\t\tinterrupt-controller;\n"
            "\t\treg = <0x0 0x8000000 0x0 0x10000>, <0x0 0x80a0000 0x0 0xf60000>;\n"
            "\t};\n"
        )
    else:
        intc = (
            "\tgic: interrupt-controller@8000000 {\n"
            '\t\tcompatible = "arm,cortex-a15-gic";\n'
            "\t\t#interrupt-cells = <3>;\n"
            "\t\t#address-cells = <0>;\n"
            "\t\tinterrupt-controller;\n"
            "\t\treg = <0x0 0x8000000 0x0 0x10000>, <0x0 0x8010000 0x0 0x10000>;\n"
            "\t};\n"
        )
    indented = "".join(f"\t{line}\n" if line else "\n" for line in node.splitlines())
    return (
        "/dts-v1/;\n\n/ {\n\t#address-cells = <2>;\n\t#size-cells = <2>;\n"
        f"\tinterrupt-parent = <&gic>;\n\n{intc}\n{indented}}};\n"
    )


def compile_tree(dtc: str, source: str, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    (tmp_path / "guest.dts").write_text(source)
    errors = [arg for check in DTC_ERRORS for arg in ("-E", check)]
    cmd = [dtc, "-I", "dts", "-O", "dtb", *errors, "-o", "guest.dtb", "guest.dts"]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=TIMEOUT, cwd=tmp_path)


def decompiled_node(dtc: str, tmp_path: Path, name: str) -> dict[str, Any]:
    """The properties of ``/name`` in the compiled tree, read back with ``dtc -O dts``."""
    r = subprocess.run(
        [dtc, "-I", "dtb", "-O", "dts", "guest.dtb"],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        cwd=tmp_path,
    )
    assert r.returncode == 0, r.stderr
    block = re.search(rf"^\t{re.escape(name)} \{{\n(.*?)^\t\}};", r.stdout, re.S | re.M)
    assert block, r.stdout
    props: dict[str, Any] = {}
    for key, value in re.findall(r"^\t\t([#\w,-]+) = (.*);$", block.group(1), re.M):
        if value.startswith('"'):
            props[key] = json.loads(value)
        else:
            cells = re.fullmatch(r"<([^>]*)>", value)
            assert cells, value
            props[key] = [int(c, 0) for c in cells.group(1).split()]
    return props


CASES = [
    ("v3", 1, 21, []),
    ("v3", 64, 16, ["--label", "spe"]),
    ("v3", 512, 31, ["--node-name", "spe"]),
    ("v2", 1, 21, []),
    ("v2", 4, 23, ["--label", "spe0"]),
    ("v2", 8, 31, []),
]


@pytest.mark.parametrize(("gic", "vcpus", "irq", "extra"), CASES)
def test_dt_node_compiles_and_reads_back(
    gic: str, vcpus: int, irq: int, extra: list[str], tmp_path: Path
) -> None:
    dtc = need_dtc()
    args = ["guest", "--dt", "--gic", gic, "--vcpus", str(vcpus), "--irq", str(irq), *extra]
    r = kvmspe(*args)
    assert r.returncode == 0 and r.stderr == "", r.stderr
    done = compile_tree(dtc, minimal_tree(r.stdout, gic), tmp_path)
    assert done.returncode == 0, done.stderr
    assert "Warning" not in done.stderr and "ERROR" not in done.stderr, done.stderr
    name = extra[1] if extra[:1] == ["--node-name"] else "spe-pmu"
    props = decompiled_node(dtc, tmp_path, name)
    flags = 4 | ((1 << vcpus) - 1) << 8 if gic == "v2" else 4
    assert props == {
        "compatible": "arm,statistical-profiling-extension-v1",
        "interrupts": [1, irq - 16, flags],
    }
    node = devicetree.spe_node(irq, gic=gic, vcpus=vcpus)
    assert props == node.properties()
    assert guest_json(*args[1:])["node"]["properties"] == props


def test_dtc_refuses_a_specifier_of_the_wrong_size(tmp_path: Path) -> None:
    """The compile check can fail: two cells where the GIC takes three is an error."""
    dtc = need_dtc()
    bad = devicetree.spe_node(21).to_dts().replace("<1 5 4>", "<1 5>")
    done = compile_tree(dtc, minimal_tree(bad, "v3"), tmp_path)
    assert done.returncode != 0
    assert "interrupts_property" in done.stderr


def test_dt_human_output_is_the_node() -> None:
    r = kvmspe("guest", "--dt")
    assert r.returncode == 0
    assert r.stdout == (
        "spe-pmu {\n"
        '\tcompatible = "arm,statistical-profiling-extension-v1";\n'
        "\tinterrupts = <1 5 4>;\t/* PPI 5: INTID 21, level-sensitive, active high */\n"
        "};\n"
    )
    r = kvmspe("guest", "--dt", "--gic", "v2", "--vcpus", "2", "--label", "spe")
    assert r.stdout.startswith("spe: spe-pmu {\n")
    assert "interrupts = <1 5 0x304>;" in r.stdout and "CPU mask 0x03" in r.stdout


def test_dt_json_keys() -> None:
    doc = guest_json("--dt", "--gic", "v2", "--vcpus", "3")
    assert doc == {
        "description": "devicetree",
        "irq": 21,
        "ppi": 5,
        "gic": "v2",
        "vcpus": 3,
        "cpu_mask": 7,
        "trigger": "level-high",
        "node": {
            "name": "spe-pmu",
            "label": None,
            "properties": {"compatible": devicetree.COMPATIBLE, "interrupts": [1, 5, 0x704]},
        },
        "dts": devicetree.spe_node(21, gic="v2", vcpus=3).to_dts(),
    }
    assert guest_json("--dt")["cpu_mask"] is None


def test_dt_default_irq_is_configures() -> None:
    from kvmspe.cli import DEFAULT_IRQ, build_parser

    assert guest_json("--dt")["irq"] == DEFAULT_IRQ
    assert build_parser().parse_args(["configure"]).irq == DEFAULT_IRQ


@given(st.integers(16, 31), st.sampled_from(["v3", "v2"]), st.integers(1, 8))
def test_dt_cells(irq: int, gic: str, vcpus: int) -> None:
    node = devicetree.spe_node(irq, gic=gic, vcpus=vcpus)
    kind, number, flags = node.interrupts
    assert (kind, number, flags & 0xF) == (1, irq - 16, 4)
    assert flags >> 8 == ((1 << vcpus) - 1 if gic == "v2" else 0)
    assert flags >> 16 == 0


# --- bad input ------------------------------------------------------------------------------------


@pytest.mark.parametrize("irq", ["0", "15", "32", "40", "1020", "2147483647"])
@pytest.mark.parametrize("mode", ["--dt", "--acpi"])
def test_non_ppi_refused(irq: str, mode: str) -> None:
    assert_bad_input(kvmspe("guest", mode, "--irq", irq), f"SPE interrupt {irq} is not a PPI", "16..31")


@pytest.mark.parametrize(
    ("args", "needles"),
    [
        (["--dt", "--irq", "-1"], ["IRQ"]),
        (["--dt", "--irq", "x"], ["IRQ"]),
        (["--dt", "--gic", "v2", "--vcpus", "9"], ["GICv2", "1..8"]),
        (["--dt", "--gic", "v4"], ["--gic"]),
        (["--dt", "--vcpus", "0"], ["VCPU count"]),
        (["--acpi", "--vcpus", "513"], ["VCPU count"]),
        (["--dt", "--node-name", "spe@0"], ["node name"]),
        (["--dt", "--node-name", "x" * 32], ["node name"]),
        (["--dt", "--node-name", ""], ["node name", "a letter"]),
        (["--dt", "--node-name", "1spe"], ["node name", "a letter"]),
        (["--dt", "--node-name=-spe"], ["node name", "a letter"]),
        (["--dt", "--node-name", ",spe"], ["node name", "a letter"]),
        (["--dt", "--label", "1spe"], ["label"]),
        (["--acpi", "--gic", "v2"], ["--gic", "--dt"]),
        (["--acpi", "--label", "spe"], ["--label"]),
        (["--dt", "--acpi"], ["--acpi"]),
        ([], ["--dt", "--acpi"]),
    ],
)
def test_bad_usage(args: list[str], needles: list[str]) -> None:
    assert_bad_input(kvmspe("guest", *args), *needles)


def test_the_ppi_rule_is_the_models() -> None:
    """Every INTID the firmware description refuses, the model's KVM_ARM_VCPU_SPE_IRQ
    refuses with EINVAL, and the other way round."""
    assert ppi_range() == DEFAULT.irq_ppi_range == (16, 31)
    for irq in range(-2, 64):
        vcpu = Host(spus=[Spu(8, 0)]).create_vm().create_vcpu()
        try:
            vcpu.set_device_attr(abi.KVM_ARM_VCPU_SPE_CTRL, abi.KVM_ARM_VCPU_SPE_IRQ, irq)
            model_ok = True
        except KvmError as exc:
            assert exc.errno == errno.EINVAL
            model_ok = False
        try:
            check_spe_ppi(irq)
            ours = True
        except InvalidArgumentError:
            ours = False
        assert ours == model_ok, irq


@pytest.mark.parametrize("value", [True, 21.0, "21", None])
def test_library_refuses_non_int(value: object) -> None:
    with pytest.raises(InvalidArgumentError):
        devicetree.spe_node(value)  # type: ignore[arg-type]
    with pytest.raises(InvalidArgumentError):
        acpi.gicc_spe_fields(value)  # type: ignore[arg-type]


# --- ACPI -----------------------------------------------------------------------------------------


def test_gicc_layout() -> None:
    """The field's place, from the ctypes declaration: what Linux's
    ACPI_MADT_GICC_SPE and ACPI_MADT_GICC_TRBE come to."""
    assert (acpi.SPE_OFFSET, acpi.SPE_WIDTH) == (78, 2)
    assert acpi.ACPI_MADT_GICC_SPE == 80
    assert acpi.ACPI_MADT_GICC_TRBE == 82
    assert acpi.acpi_madt_generic_interrupt.efficiency_class.offset == 76
    assert acpi.acpi_madt_generic_interrupt.performance_interrupt.offset == 20


@given(st.integers(16, 31), st.integers(1, 512))
def test_gicc_fields(irq: int, vcpus: int) -> None:
    fields = acpi.gicc_spe_fields(irq, vcpus)
    assert [f.gicc for f in fields] == list(range(vcpus))
    assert {f.value for f in fields} == {irq}
    assert {f.to_bytes() for f in fields} == {struct.pack("<H", irq)}
    assert {(f.offset, f.width) for f in fields} == {(78, 2)}


def test_field_written_into_a_gicc() -> None:
    """Written at its offset into a whole GICC, the bytes read back as spe_interrupt."""
    (field,) = acpi.gicc_spe_fields(22)
    raw = bytearray(acpi.ACPI_MADT_GICC_TRBE)
    raw[0:2] = bytes([acpi.ACPI_MADT_TYPE_GENERIC_INTERRUPT, acpi.ACPI_MADT_GICC_SPE])
    raw[field.offset : field.offset + field.width] = field.to_bytes()
    gicc = acpi.acpi_madt_generic_interrupt.from_buffer(raw)
    assert (gicc.type, gicc.length, gicc.spe_interrupt, gicc.trbe_interrupt) == (11, 80, 22, 0)
    assert gicc.efficiency_class == 0 and gicc.arm_mpidr == 0


def test_acpi_json() -> None:
    doc = guest_json("--acpi", "--vcpus", "3", "--irq", "22")
    gicc = [{"gicc": i, "offset": 78, "value": 22, "bytes": [22, 0]} for i in range(3)]
    assert doc == {
        "description": "acpi",
        "irq": 22,
        "vcpus": 3,
        "table": "APIC",
        "structure": "GICC",
        "structure_type": 11,
        "field": "SPE overflow interrupt",
        "since": "ACPI 6.3",
        "offset": 78,
        "width": 2,
        "min_gicc_length": 80,
        "gicc_length_with_trbe": 82,
        "value": 22,
        "bytes": [22, 0],
        "trigger": "level",
        "polarity": "active-high",
        "gicc": gicc,
    }


def test_acpi_human() -> None:
    r = kvmspe("guest", "--acpi", "--vcpus", "2")
    assert r.returncode == 0 and r.stderr == ""
    lines = r.stdout.splitlines()
    assert 'field "SPE overflow interrupt" (ACPI 6.3 and later)' in lines[0]
    assert lines[1].startswith("offset 78 (0x4e), 2 bytes; a GICC of length >= 80")
    assert lines[3] == "bytes at offset 78, little-endian: 15 00"
    assert lines[-2:] == ["GICC 0: 21  (15 00)", "GICC 1: 21  (15 00)"]
