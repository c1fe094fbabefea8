"""Golden test vectors, as JSON, for VMMs written in other languages.

:func:`write` puts two files in a folder (the repository keeps them in
``vectors/``, and a test fails when regenerating them changes a byte):

``maxbuffsize-codec.json``
    the PMBIDR_EL1.MaxBuffSize codec: the size of every valid field value,
    field values with the reserved bits [15:14] set (invalid), and sizes
    worth pinning down (both ends of every exponent band, their neighbours
    without an encoding with the nearest representable sizes, page-aligned
    roundings per host page size, the extremes of the u64 range).
``scenarios.json``
    every conformance case of :mod:`kvmspe.conformance.cases`, in a form a VMM test can
    replay against its own KVM backend: what the host must have, the VCPUs,
    and each call (ioctl, group, attribute, value) with the result it must
    give. A value is given as the case's expression over the host's numbers
    (``"PAGE * 2"``) and as resolved on the model's host.

The schema of both is in ``docs/conformance.md``. Types are fixed by C type:
every ``__u64`` (sizes, addresses, register values, limits, values of
``__u64`` attributes) is a string ``"0x..."`` in lowercase hex, since many
JSON readers hold numbers in doubles and lose bits above 2**53; every other
number (field values, ``int`` attribute values, errnos, groups, attribute
numbers, ids, page sizes) is a JSON integer. Keys are names, never numbers;
something that does not exist is an absent key, never ``null``.
"""

from __future__ import annotations

import errno
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

from .. import abi
from ..arch import maxbuf
from ..arch.registers import PMBIDR_EL1
from ..conformance.cases import CASES, Case, Step, attribute_of
from ..conformance.expr import Expr, parse
from ..conformance.runner import GUEST_BUFFER_BASE, MODEL_SPU_IDS, RUN_TIMEOUT, ModelRunner
from ..errors import InvalidArgumentError, NotRepresentableError
from ..model.rules import RULES
from ..validation import U64_MAX
from .abidata import assumed_numbers

__all__ = ["CODEC_FILE", "SCENARIO_FILE", "SCHEMA_VERSION", "codec_vectors", "scenario_vectors", "write"]

#: 2: one type per C type (no null, no numbers as keys), every valid field
#: value, the reserved field bits, scenarios replayable on a real kernel.
SCHEMA_VERSION = 2
CODEC_FILE = "maxbuffsize-codec.json"
SCENARIO_FILE = "scenarios.json"
#: Where the reserved bits [15:14] of the MaxBuffSize field start.
_RESERVED_SHIFT = maxbuf.M_BITS + maxbuf.E_BITS


def _hex(v: int) -> str:
    return f"{v:#x}"


# --- codec --------------------------------------------------------------------------------------


def _boundaries() -> list[tuple[int, str]]:
    """Representable sizes worth pinning down, with why each is there."""
    out: list[tuple[int, str]] = [(0, "field 0: no limit"), (4096, "E=0 M=1: the smallest non-zero size")]
    for e in range(32):
        lo, hi = (e << maxbuf.M_BITS) | (1 if e == 0 else 0), (e << maxbuf.M_BITS) | maxbuf.M_MASK
        if e:
            out.append((maxbuf.decode(lo), f"E={e} M=0: lowest of its band"))
        out.append((maxbuf.decode(hi), f"E={e} M=511: highest of its band"))
    out.append((maxbuf.decode((1 << maxbuf.M_BITS) | 1), "E=1 M=1: second size of band 1"))
    out.append((12 << 20, "12 MiB, in band 3 (step 16 KiB)"))
    return out


def _entry(size: int, why: str) -> dict[str, Any]:
    if maxbuf.is_representable(size):
        field = maxbuf.encode(size)
        return {
            "size": _hex(size),
            "representable": True,
            "field": field,
            "e": field >> maxbuf.M_BITS,
            "m": field & maxbuf.M_MASK,
            "why": why,
        }
    try:
        maxbuf.encode(size)
    except NotRepresentableError as exc:
        below, above = exc.below, exc.above
    out: dict[str, Any] = {"size": _hex(size), "representable": False}
    if below is not None:
        out["below"] = _hex(below)
    if above is not None:
        out["above"] = _hex(above)
    rounded = []
    for page in maxbuf.PAGE_SIZES:
        one: dict[str, Any] = {"page_size": page, "down": _hex(maxbuf.round_down(size, page))}
        try:
            one["up"] = _hex(maxbuf.round_up(size, page))
        except NotRepresentableError:
            pass
        rounded.append(one)
    out["page_aligned"] = rounded
    out["why"] = why
    return out


def _reserved() -> list[dict[str, Any]]:
    """Field values with bits [15:14] set: the codec refuses every one."""
    out = []
    for top in range(1, 4):
        for low in (0, 1, 1 << maxbuf.M_BITS, maxbuf.FIELD_MAX):
            field = (top << _RESERVED_SHIFT) | low
            out.append(
                {
                    "field": field,
                    "valid": False,
                    "pmbidr_el1": _hex(PMBIDR_EL1.encode(MaxBuffSize=field)),
                    "why": f"bits [15:14] = {top:#04b}: reserved, so the field has no size"
                    " (decode refuses it; an encoder never produces it)",
                }
            )
    return out


def codec_vectors() -> dict[str, Any]:
    """The codec vectors document (see the module docstring)."""
    sizes: dict[int, str] = {}
    for size, why in _boundaries():
        sizes.setdefault(size, why)
    for size, why in list(sizes.items()):
        for delta in (-1, 1, -4096, 4096):
            n = size + delta
            if 0 <= n <= U64_MAX and not maxbuf.is_representable(n) and n not in sizes:
                sizes[n] = f"{delta:+d} from {size:#x} ({why.split(':')[0]}): no encoding"
    for size, why in (
        (maxbuf.LARGEST + 1, "one above the largest size"),
        (maxbuf.LARGEST + 4096, "a page above the largest size"),
        (1 << 63, "2**63: above the largest size"),
        (U64_MAX, "the largest u64"),
    ):
        sizes.setdefault(size, why)
    field = PMBIDR_EL1.field("MaxBuffSize")
    return {
        "schema": "kvmspe-vectors-codec",
        "schema_version": SCHEMA_VERSION,
        "u64": "string, 0x-prefixed lowercase hex",
        "field": {
            "register": PMBIDR_EL1.name,
            "msb": field.msb,
            "lsb": field.lsb,
            "e": {"msb": maxbuf.M_BITS + maxbuf.E_BITS - 1, "lsb": maxbuf.M_BITS},
            "m": {"msb": maxbuf.M_BITS - 1, "lsb": 0},
            "reserved": {"msb": field.width - 1, "lsb": _RESERVED_SHIFT},
            "decode": "E == 0: M * 4096; E > 0: (512 + M) << (E + 11); field 0 means no limit",
        },
        "largest": _hex(maxbuf.LARGEST),
        "page_sizes": list(maxbuf.PAGE_SIZES),
        "decode_table": [_hex(maxbuf.decode(f)) for f in range(maxbuf.FIELD_MAX + 1)],
        "reserved_fields": _reserved(),
        "vectors": [_entry(s, sizes[s]) for s in sorted(sizes)],
    }


# --- scenarios ---------------------------------------------------------------------------------


def _value_type(target: str) -> str:
    """The C type behind ``addr`` for an attribute: ``__u64``, ``int`` or ``none``."""
    return abi.value_type(*attribute_of(target))


def _typed(value: int, ctype: str) -> int | str:
    return value if ctype == "int" else _hex(value % (1 << 64))


def _both(runner: ModelRunner, expr: Expr | None, ctype: str = "__u64") -> dict[str, Any]:
    """A case value: its expression over the host's names, and its value on the model
    host; a value the case does not give is 0."""
    expr = parse(0) if expr is None else expr
    return {"expr": expr.text, "model": _typed(runner.value(expr), ctype)}


def _expect(runner: ModelRunner, step: Step, ctype: str) -> dict[str, Any]:
    exp = step.expectation
    if exp.kind == "has":
        return {"has": exp.flag}
    if exp.kind == "errno":
        return {"errno": getattr(errno, exp.errno_name), "errno_name": exp.errno_name}
    if exp.kind == "ok":
        return {"ok": True}
    if exp.kind == "exit":
        if exp.exit_name is None:
            return {"exit": "any"}
        out: dict[str, Any] = {"exit": exp.exit_name}
        if exp.expr is not None:
            out["rlimit_excess"] = _both(runner, exp.expr)
        return out
    assert exp.expr is not None
    return {"value": _both(runner, exp.expr, ctype)}


def _call(runner: ModelRunner, step: Step) -> dict[str, Any]:
    call: dict[str, Any] = {"vcpu": step.vcpu, "op": step.op}
    ctype = "__u64"
    if step.attribute is not None:
        group, attr = step.attribute
        ioctl = {"set": "KVM_SET_DEVICE_ATTR", "get": "KVM_GET_DEVICE_ATTR", "has": "KVM_HAS_DEVICE_ATTR"}
        ctype = _value_type(step.target)
        call.update(ioctl=ioctl[step.op], group=group, attr=attr, attr_name=step.target, value_type=ctype)
        if step.op in ("set", "get"):
            if step.value == "BAD":
                call["addr"] = "bad-address"
            elif step.value is None:
                call["addr"] = "valid" if step.op == "get" else "null"
            else:
                call["addr"] = "valid"
                call["value"] = _both(runner, step.amount, ctype)
    elif step.op == "run":
        call.update(ioctl="KVM_RUN", timeout_ms=int(RUN_TIMEOUT * 1000))
    elif step.op == "create_vcpu":
        call.update(ioctl="KVM_CREATE_VCPU", spe=step.target == "spe")
    elif step.op == "setrlimit":
        call["memlock_room"] = _both(runner, step.amount)
    elif step.op == "enable":
        call.update(
            base=_hex(GUEST_BUFFER_BASE),
            size=_both(runner, step.amount),
            stage1="unmapped" if step.target else "mapped",
        )
    elif step.op == "guest_read":
        reg, _, name = step.target.partition(".")
        call.update(register=reg, field=name)
    call["expect"] = _expect(runner, step, ctype)
    return call


def _requires(case: Case) -> dict[str, Any]:
    """What a real host must offer for the case to apply (see docs/conformance.md)."""
    setup = case.setup
    out: dict[str, Any] = {"spe": bool(setup.spus)}
    if setup.spus:
        limit = setup.spus[0].limit
        out["spus"] = len(setup.spus)
        out["spu_limit"] = "any" if limit is None else "none" if limit == 0 else "some"
    if setup.page_size is not None:
        out["page_size"] = setup.page_size
    out["guest"] = case.needs_guest
    out["irqchip"] = getattr(setup, "irqchip", True)
    return out


def _scenario(case: Case) -> dict[str, Any]:
    runner = ModelRunner(case.setup, RULES)
    host = runner.host
    rule = case.rule
    assert rule is not None
    model_host: dict[str, Any] = {
        "page_size": host.page_size,
        "spus": [
            {"id": s.id, "max_buffer_size": _hex(s.max_buffer_size), "pmbidr_el1": _hex(s.pmbidr)}
            for s in host.spus
        ],
        "locked": _hex(host.locked_bytes),
    }
    if host.memlock_limit is not None:
        model_host["memlock_limit"] = _hex(host.memlock_limit)
    out: dict[str, Any] = {
        "name": case.name,
        "rule": rule.key,
        "rule_text": rule.text,
        "source": rule.source,
        "where": rule.where,
        "requires": _requires(case),
        "vcpus": [{"index": i, "spe": spe} for i, spe in enumerate(case.setup.vcpus)],
    }
    if case.setup.room is not None:
        out["memlock_room"] = _both(runner, case.setup.room)
    out["model_host"] = model_host
    out["calls"] = [_call(runner, s) for s in case.calls]
    return out


def scenario_vectors() -> dict[str, Any]:
    """The scenario vectors document (see the module docstring)."""
    return {
        "schema": "kvmspe-vectors-scenarios",
        "schema_version": SCHEMA_VERSION,
        "u64": "string, 0x-prefixed lowercase hex",
        # Names only: their numbers are unknown, and a VMM gives its own.
        "assumed_numbers": [a.name for a in assumed_numbers()],
        "model_spu_ids": list(MODEL_SPU_IDS),
        "guest_buffer_base": _hex(GUEST_BUFFER_BASE),
        "scenarios": [_scenario(c) for c in CASES],
    }


#: ``writer(fd, data)``: write all of ``data`` to ``fd`` (os.write by default;
#: tests inject a failing one to play a full disk).
Writer = Callable[[int, bytes], None]


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def write(out_dir: str | Path, *, writer: Writer = _write_all) -> list[Path]:
    """Write both vector files into ``out_dir`` (created if missing); return their paths.

    All or nothing: both documents are built, then written by
    :func:`kvmspe.files.replace_whole`: to temporary files in ``out_dir``,
    renamed over the old ones only when both are complete on disk, with
    SIGINT, SIGTERM, SIGHUP and SIGQUIT held back meanwhile. A failure (a
    full disk) or such a signal leaves the old files, or the new ones, both,
    and no temporary file. ``out_dir`` must be a non-empty path without NUL
    (ValueError); failures of the file system raise OSError.
    """
    from .. import files

    if not isinstance(out_dir, (str, Path)) or not str(out_dir).strip() or "\0" in str(out_dir):
        raise InvalidArgumentError(f"bad output directory {out_dir!r}; accepted: a non-empty directory path")
    folder = Path(out_dir)
    if folder.exists() and not folder.is_dir():
        raise InvalidArgumentError(
            f"{folder} exists and is not a directory; give a directory for the vectors"
        )
    docs = ((CODEC_FILE, codec_vectors()), (SCENARIO_FILE, scenario_vectors()))
    blobs = [(name, (json.dumps(doc, indent=1) + "\n").encode("utf-8")) for name, doc in docs]
    folder.mkdir(parents=True, exist_ok=True)

    def filler(data: bytes) -> Callable[[BinaryIO], None]:
        return lambda f: writer(f.fileno(), data)

    files.replace_whole([(folder / name, filler(data)) for name, data in blobs])
    return [folder / name for name, _ in blobs]
