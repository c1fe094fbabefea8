"""The golden vectors: they parse, follow the documented schema, round-trip
through the codec, and replay on the model from the JSON alone (as a VMM in
another language would replay them against its own code)."""

from __future__ import annotations

import errno
import json
from pathlib import Path
from typing import Any

import pytest

from kvmspe import abi
from kvmspe.arch import maxbuf
from kvmspe.arch.registers import PMBIDR_EL1, PMBSR_EL1
from kvmspe.arch.stage1 import Stage1
from kvmspe.conformance.cases import CASES, SOURCES
from kvmspe.errors import KvmError, NotRepresentableError
from kvmspe.export import vectors
from kvmspe.model import kernel as model


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
    assert isinstance(text, str) and text.startswith("0x") and text == text.lower(), text
    return int(text, 16)


def _walk(doc: Any, path: str = "") -> Any:
    """Every (path, key, value) of a JSON document."""
    if isinstance(doc, dict):
        for k, v in doc.items():
            yield path, k, v
            yield from _walk(v, f"{path}.{k}")
    elif isinstance(doc, list):
        for i, v in enumerate(doc):
            yield from _walk(v, f"{path}[{i}]")


# --- codec ------------------------------------------------------------------------------------


def test_codec_header(codec: dict[str, Any]) -> None:
    assert codec["schema"] == "kvmspe-vectors-codec"
    assert codec["schema_version"] == vectors.SCHEMA_VERSION
    assert _u64(codec["largest"]) == 1023 << 42
    given = [_u64(v["size"]) for v in codec["vectors"]]
    sizes = [s for s in given if s is not None]
    assert sizes == given and sizes == sorted(set(sizes))


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
        assert (info.value.below, info.value.above) == (_u64(v.get("below")), _u64(v.get("above")))
        assert [r["page_size"] for r in v["page_aligned"]] == list(maxbuf.PAGE_SIZES)
        for rounded in v["page_aligned"]:
            page = rounded["page_size"]
            down, up = _u64(rounded["down"]), _u64(rounded.get("up"))
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
    assert "above" not in by_size[maxbuf.LARGEST + 1]


def test_codec_decode_table_is_every_valid_field(codec: dict[str, Any]) -> None:
    table = codec["decode_table"]
    assert len(table) == maxbuf.FIELD_MAX + 1 == 1 << 14
    assert [_u64(t) for t in table] == [maxbuf.decode(f) for f in range(1 << 14)]


def test_codec_reserved_bits_are_invalid(codec: dict[str, Any]) -> None:
    tops = set()
    for r in codec["reserved_fields"]:
        assert r["valid"] is False and r["field"] >> 14 in (1, 2, 3)
        tops.add(r["field"] >> 14)
        with pytest.raises(ValueError, match="reserved"):
            maxbuf.decode(r["field"])
        assert PMBIDR_EL1.get(_u64(r["pmbidr_el1"]) or 0, "MaxBuffSize") == r["field"]
    assert tops == {1, 2, 3}


@pytest.mark.parametrize("name", [vectors.CODEC_FILE, vectors.SCENARIO_FILE])
def test_types_are_one_per_kind(written: dict[str, Any], name: str) -> None:
    """No null anywhere, no number as a key, every u64 a lowercase hex string."""
    u64_keys = {
        "size",
        "below",
        "above",
        "down",
        "up",
        "largest",
        "pmbidr_el1",
        "max_buffer_size",
        "memlock_limit",
        "locked",
        "base",
        "guest_buffer_base",
    }
    for path, key, value in _walk(written[name]):
        assert value is not None, f"null at {path}.{key}"
        assert not key.lstrip("-").isdigit(), f"number as a key at {path}.{key}"
        if key in u64_keys:
            _u64(value["model"] if isinstance(value, dict) else value)
        if isinstance(value, dict) and "expr" in value:
            assert isinstance(value["expr"], str)
            typed = value["model"]
            assert isinstance(typed, int) and not isinstance(typed, bool) or _u64(typed) is not None
    for value in written[name].get("decode_table", []):
        _u64(value)


# --- scenarios ---------------------------------------------------------------------------------


def test_scenarios_cover_every_case_once(scenarios: dict[str, Any]) -> None:
    assert scenarios["schema"] == "kvmspe-vectors-scenarios"
    assert scenarios["schema_version"] == vectors.SCHEMA_VERSION
    assert [s["name"] for s in scenarios["scenarios"]] == [c.name for c in CASES]
    guest_ops = {"enable", "disable", "guest_read", "vm_lck"}
    for s in scenarios["scenarios"]:
        assert s["requires"]["guest"] == any(c["op"] in guest_ops for c in s["calls"])
        assert s["source"] in SOURCES


def _model_value(v: dict[str, Any], ctype: str = "__u64") -> int:
    model_value = v["model"]
    if ctype == "int":
        assert isinstance(model_value, int)
        return model_value
    return _u64(model_value) or 0


def _replay(s: dict[str, Any], base: int) -> list[str]:
    """Run one scenario on the model from its JSON alone; return the mismatches."""
    h = s["model_host"]
    spus = [model.Spu(spu["id"], pmbidr=_u64(spu["pmbidr_el1"])) for spu in h["spus"]]
    locked = _u64(h["locked"]) or 0
    host = model.Host(h["page_size"], spus, _u64(h.get("memlock_limit")), locked=locked)
    # A VM without an in-kernel irqchip only where the scenario asks for one.
    vm = host.create_vm(**({} if s["requires"]["irqchip"] else {"irqchip": False}))
    vcpus = [vm.create_vcpu(v["index"], spe=v["spe"]) for v in s["vcpus"]]
    problems = []
    for i, call in enumerate(s["calls"]):
        vcpu, op, exp = vcpus[call["vcpu"]], call["op"], call["expect"]
        got: dict[str, Any]
        try:
            if op == "set":
                addr = call["addr"]
                value = (
                    abi.BAD_ADDRESS
                    if addr == "bad-address"
                    else None
                    if addr == "null"
                    else _model_value(call["value"], call["value_type"])
                )
                vcpu.set_device_attr(call["group"], call["attr"], value)
                got = {"ok": True}
            elif op == "get":
                bad = abi.BAD_ADDRESS if call["addr"] == "bad-address" else None
                got = {"value": vcpu.get_device_attr(call["group"], call["attr"], bad)}
                if "value" in exp:
                    exp = {"value": _model_value(exp["value"], call["value_type"])}
            elif op == "has":
                got = {"has": vcpu.has_device_attr(call["group"], call["attr"])}
            elif op == "run":
                ex = vcpu.run()
                got = {"exit": ex.name}
                if exp.get("exit") == "any":
                    got = {"exit": "any"}
                elif ex.is_rlimit:
                    got["rlimit_excess"] = ex.rlimit_excess
                    exp = {**exp, "rlimit_excess": _model_value(exp["rlimit_excess"])}
            elif op == "create_vcpu":
                vcpus.append(vm.create_vcpu(len(vcpus), spe=call["spe"]))
                got = {"ok": True}
            elif op == "setrlimit":
                host.set_memlock_limit(host.locked_bytes + _model_value(call["memlock_room"]))
                got = {"ok": True}
            elif op == "enable":
                size = _model_value(call["size"])
                hole = ((base, size),) if call["stage1"] == "unmapped" else ()
                vcpu.enable_buffer(_u64(call["base"]) or 0, size, Stage1(unmapped=hole))
                got = {"ok": True}
            elif op == "disable":
                vcpu.disable_buffer()
                got = {"ok": True}
            elif op == "guest_read":
                reg = {"PMBIDR_EL1": PMBIDR_EL1, "PMBSR_EL1": PMBSR_EL1}[call["register"]]
                got = {"value": reg.get(vcpu.guest_read(call["register"]), call["field"])}
                exp = {"value": _model_value(exp["value"])}
            elif op == "vm_lck":
                got = {"value": host.vm_lck}
                exp = {"value": _model_value(exp["value"])}
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


def test_values_are_typed_by_their_c_type(scenarios: dict[str, Any]) -> None:
    seen = set()
    for s in scenarios["scenarios"]:
        for c in s["calls"]:
            for v in (c.get("value"), c["expect"].get("value")):
                if v is None or c["op"] not in ("set", "get"):
                    continue
                seen.add(c["value_type"])
                if c["value_type"] == "int":
                    assert isinstance(v["model"], int), (s["name"], c)
                else:
                    assert c["value_type"] == "__u64" and _u64(v["model"]) is not None, (s["name"], c)
    assert seen >= {"int", "__u64"}


def test_an_attribute_without_a_value_is_passed_addr_null(scenarios: dict[str, Any]) -> None:
    for s in scenarios["scenarios"]:
        for c in s["calls"]:
            if c["op"] == "set" and c["value_type"] == "none":
                assert c["addr"] in ("null", "bad-address") and "value" not in c, (s["name"], c)
            if c["op"] == "set" and c["addr"] == "null":
                assert c["value_type"] == "none", (s["name"], c)


# --- the committed copy ------------------------------------------------------------------------------

COMMITTED = Path(__file__).resolve().parent.parent / "vectors"


@pytest.mark.parametrize("name", [vectors.CODEC_FILE, vectors.SCENARIO_FILE])
def test_committed_vectors_are_what_the_code_writes(tmp_path: Path, name: str) -> None:
    """A change of rule, case or codec changes these files: it must come with
    the regenerated vectors, so that review sees the difference."""
    vectors.write(tmp_path)
    fresh = (tmp_path / name).read_bytes()
    committed = COMMITTED / name
    how = "regenerate them with: kvmspe vectors --out vectors/ (then review and commit the diff)"
    assert committed.is_file(), f"vectors/{name} is missing; {how}"
    if committed.read_bytes() != fresh:
        old, new = committed.read_text().splitlines(), fresh.decode().splitlines()
        first = next(
            (i for i, (a, b) in enumerate(zip(old, new, strict=False)) if a != b), min(len(old), len(new))
        )
        pytest.fail(
            f"vectors/{name} differs from what the code writes now (first at line {first + 1}); {how}"
        )
