"""The golden vectors: they parse, follow the documented schema, round-trip
through the codec, and replay on the model from the JSON alone (as a VMM in
another language would replay them against its own code)."""

from __future__ import annotations

import errno
import json
from pathlib import Path
from typing import Any

import pytest

from kvmspe import abi, maxbuf, model, vectors
from kvmspe.cases import CASES
from kvmspe.errors import KvmError, NotRepresentableError
from kvmspe.registers import PMBIDR_EL1, PMBSR_EL1
from kvmspe.stage1 import Stage1


@pytest.fixture(scope="module")
def written(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    out = tmp_path_factory.mktemp("vectors")
    paths = vectors.write(out)
    assert [p.name for p in paths] == [vectors.CODEC_FILE, vectors.SCENARIO_FILE]
    return {p.name: json.loads(p.read_text()) for p in paths}


@pytest.fixture(scope="module")
def codec(written: dict[str, Any]) -> dict[str, Any]:
    return written[vectors.CODEC_FILE]  # type: ignore[no-any-return]


@pytest.fixture(scope="module")
def scenarios(written: dict[str, Any]) -> dict[str, Any]:
    return written[vectors.SCENARIO_FILE]  # type: ignore[no-any-return]


def _u64(text: str | None) -> int | None:
    if text is None:
        return None
    assert text.startswith("0x"), text
    return int(text, 16)


# --- codec ------------------------------------------------------------------------------------


def test_codec_header(codec: dict[str, Any]) -> None:
    assert codec["schema"] == "kvmspe-vectors-codec"
    assert codec["schema_version"] == vectors.SCHEMA_VERSION
    assert _u64(codec["largest"]) == 1023 << 42
    sizes = [_u64(v["size"]) for v in codec["vectors"]]
    assert sizes == sorted(set(sizes))


def test_codec_vectors_round_trip(codec: dict[str, Any]) -> None:
    for v in codec["vectors"]:
        size = _u64(v["size"])
        assert size is not None
        if v["representable"]:
            assert maxbuf.encode(size) == v["field"]
            assert maxbuf.decode(v["field"]) == size
            assert v["field"] == (v["e"] << 9) | v["m"]
            continue
        assert not maxbuf.is_representable(size)
        with pytest.raises(NotRepresentableError) as info:
            maxbuf.encode(size)
        assert (info.value.below, info.value.above) == (_u64(v["below"]), _u64(v["above"]))
        for page, rounded in v["page_aligned"].items():
            down, up = _u64(rounded["down"]), _u64(rounded["up"])
            assert down is not None and down <= size and down % int(page) == 0
            assert maxbuf.is_representable(down)
            if up is None:
                assert size > maxbuf.LARGEST
            else:
                assert up >= size and up % int(page) == 0 and maxbuf.is_representable(up)


def test_codec_has_both_ends_of_every_exponent_and_their_neighbours(codec: dict[str, Any]) -> None:
    by_size = {_u64(v["size"]): v for v in codec["vectors"]}
    for e in range(32):
        ends = [maxbuf.decode((e << 9) | (1 if e == 0 else 0)), maxbuf.decode((e << 9) | 511)]
        for end in ends:
            assert by_size[end]["representable"] and by_size[end]["e"] == e
            for n in (end - 1, end + 1):
                assert not by_size[n]["representable"], hex(n)
    assert by_size[0]["field"] == 0
    assert not by_size[(1 << 64) - 1]["representable"]
    assert by_size[maxbuf.LARGEST + 1]["above"] is None


# --- scenarios ---------------------------------------------------------------------------------


def test_scenarios_cover_every_case_once(scenarios: dict[str, Any]) -> None:
    assert scenarios["schema"] == "kvmspe-vectors-scenarios"
    assert scenarios["schema_version"] == vectors.SCHEMA_VERSION
    assert [s["name"] for s in scenarios["scenarios"]] == [c.name for c in CASES]
    guest_ops = {"enable", "disable", "guest_read", "vm_lck"}
    for s in scenarios["scenarios"]:
        assert s["needs_guest"] == any(c["op"] in guest_ops for c in s["calls"])
        assert s["source"] in ("seed", "series", "measured", "arch", "uapi", "assumed")
        assert isinstance(s["irqchip"], bool)


def _replay(s: dict[str, Any], base: int) -> list[str]:
    """Run one scenario on the model from its JSON alone; return the mismatches."""
    h = s["host"]
    spus = [model.Spu(spu["id"], pmbidr=_u64(spu["pmbidr_el1"])) for spu in h["spus"]]
    locked = _u64(h["locked"]) or 0
    host = model.Host(h["page_size"], spus, _u64(h["memlock_limit"]), locked=locked)
    vm = host.create_vm(irqchip=s["irqchip"])
    vcpus = [vm.create_vcpu(v["index"], spe=v["spe"]) for v in s["vcpus"]]
    problems = []
    for i, call in enumerate(s["calls"]):
        vcpu, op, exp = vcpus[call["vcpu"]], call["op"], call["expect"]
        got: dict[str, Any]
        try:
            if op == "set":
                value = abi.BAD_ADDRESS if call["value"] == "bad-address" else _u64(call["value"])
                vcpu.set_device_attr(call["group"], call["attr"], value)
                got = {"ok": True}
            elif op == "get":
                addr = abi.BAD_ADDRESS if call["addr"] == "bad-address" else None
                got = {"value": hex(vcpu.get_device_attr(call["group"], call["attr"], addr))}
            elif op == "has":
                got = {"has": vcpu.has_device_attr(call["group"], call["attr"])}
            elif op == "run":
                ex = vcpu.run()
                got = {"exit": ex.name}
                if ex.is_rlimit:
                    got.update(exit_reason=ex.reason, rlimit_excess=hex(ex.rlimit_excess or 0))
                if exp.get("exit") == "any":
                    got = {"exit": "any"}
            elif op == "create_vcpu":
                vcpus.append(vm.create_vcpu(spe=call["spe"]))
                got = {"ok": True}
            elif op == "setrlimit":
                host.set_memlock_limit(_u64(call["memlock_limit"]))
                got = {"ok": True}
            elif op == "enable":
                size = _u64(call["size"]) or 0
                hole = ((base, size),) if call["stage1"] == "unmapped" else ()
                vcpu.enable_buffer(_u64(call["base"]) or 0, size, Stage1(unmapped=hole))
                got = {"ok": True}
            elif op == "disable":
                vcpu.disable_buffer()
                got = {"ok": True}
            elif op == "guest_read":
                reg = {"PMBIDR_EL1": PMBIDR_EL1, "PMBSR_EL1": PMBSR_EL1}[call["register"]]
                got = {"value": hex(reg.get(vcpu.guest_read(call["register"]), call["field"]))}
            elif op == "vm_lck":
                got = {"value": hex(host.vm_lck)}
            else:
                raise AssertionError(f"unknown op {op}")
        except KvmError as exc:
            code = exc.errno or 0
            got = {"errno": code, "errno_name": errno.errorcode[code]}
        if got != exp:
            problems.append(f"{s['name']} call {i + 1} ({op}): expected {exp}, got {got}")
    return problems


def test_every_scenario_replays_on_the_model_from_json(scenarios: dict[str, Any]) -> None:
    base = _u64(scenarios["guest_buffer_base"]) or 0
    problems = [p for s in scenarios["scenarios"] for p in _replay(s, base)]
    assert not problems


def test_errno_numbers_match_their_names(scenarios: dict[str, Any]) -> None:
    seen = {
        (c["expect"]["errno"], c["expect"]["errno_name"])
        for s in scenarios["scenarios"]
        for c in s["calls"]
        if "errno" in c["expect"]
    }
    assert {n for _, n in seen} >= {
        "EBUSY",
        "EINVAL",
        "ENODEV",
        "EDOM",
        "ERANGE",
        "EFAULT",
        "ENXIO",
        "ENOMEM",
    }
    assert all(getattr(errno, name) == num for num, name in seen)


def test_scenarios_carry_init_the_irqchip_and_vcpu_creation(scenarios: dict[str, Any]) -> None:
    by = {s["name"]: s for s in scenarios["scenarios"]}
    init = by["init-configured"]["calls"][-1]
    assert (init["attr"], init["attr_name"], init["value"]) == (3, "KVM_ARM_VCPU_SPE_INIT", None)
    assert by["irq-without-irqchip"]["irqchip"] is False and by["irq-set-get"]["irqchip"] is True
    assert by["irq-without-irqchip"]["calls"][0]["expect"] == {"errno": errno.ENXIO, "errno_name": "ENXIO"}
    create = by["features-plain-in-spe-vm"]["calls"][0]
    assert (create["op"], create["ioctl"], create["spe"]) == ("create_vcpu", "KVM_CREATE_VCPU", False)
    assert create["expect"] == {"errno": errno.EINVAL, "errno_name": "EINVAL"}
    unknown = by["unknown-attr-set"]["calls"][-1]
    assert unknown["attr"] not in (0, 1, 2, 3)


def test_a_replayed_scenario_notices_a_wrong_expectation(scenarios: dict[str, Any]) -> None:
    s = json.loads(
        json.dumps(next(x for x in scenarios["scenarios"] if x["name"] == "unencodable-4m-plus-4k"))
    )
    s["calls"][-1]["expect"] = {"errno": errno.ERANGE, "errno_name": "ERANGE"}
    assert _replay(s, 0)


# --- writing -------------------------------------------------------------------------------------


def test_write_is_deterministic_and_creates_the_folder(tmp_path: Path) -> None:
    first = [p.read_bytes() for p in vectors.write(tmp_path / "a" / "b")]
    second = [p.read_bytes() for p in vectors.write(tmp_path / "a" / "b")]
    assert first == second


def test_write_refuses_a_file_as_the_folder(tmp_path: Path) -> None:
    target = tmp_path / "file"
    target.write_text("x")
    with pytest.raises(ValueError, match="not a directory"):
        vectors.write(target)
