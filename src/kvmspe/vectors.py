"""Golden test vectors, as JSON, for VMMs written in other languages.

:func:`write` puts two files in a folder:

``maxbuffsize-codec.json``
    sizes and their PMBIDR_EL1.MaxBuffSize field values: both ends of every
    exponent band, the sizes either side of each end that have no encoding
    (with the nearest representable sizes below and above, and the nearest
    page-aligned ones per host page size), and the extremes of the u64 range.
``scenarios.json``
    every conformance case of :mod:`kvmspe.cases`, resolved on the model's
    host: the host, the VCPUs, and each call with the errno, value or exit it
    must give.

The schema of both is in ``docs/conformance.md``. A u64 is written as a hex
string (``"0x200000"``): many JSON readers hold numbers in doubles, which
lose bits above 2**53. Small numbers (field values, errnos, ids) are numbers.
"""

from __future__ import annotations

import errno
import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from . import abi, maxbuf
from .cases import CASES, Case, Step
from .conformance import GUEST_BUFFER_BASE, MODEL_SPU_IDS, _ModelRunner
from .errors import NotRepresentableError
from .rules import RULES

__all__ = ["CODEC_FILE", "SCENARIO_FILE", "SCHEMA_VERSION", "codec_vectors", "scenario_vectors", "write"]

SCHEMA_VERSION = 1
CODEC_FILE = "maxbuffsize-codec.json"
SCENARIO_FILE = "scenarios.json"
_U64_MAX = (1 << 64) - 1


def _hex(v: int | None) -> str | None:
    return None if v is None else f"{v:#x}"


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
    rounded: dict[str, dict[str, str | None]] = {}
    for page in maxbuf.PAGE_SIZES:
        try:
            up: int | None = maxbuf.round_up(size, page)
        except NotRepresentableError:
            up = None
        rounded[str(page)] = {"down": _hex(maxbuf.round_down(size, page)), "up": _hex(up)}
    return {
        "size": _hex(size),
        "representable": False,
        "below": _hex(below),
        "above": _hex(above),
        "page_aligned": rounded,
        "why": why,
    }


def codec_vectors() -> dict[str, Any]:
    """The codec vectors document (see the module docstring)."""
    sizes: dict[int, str] = {}
    for size, why in _boundaries():
        sizes.setdefault(size, why)
    for size, why in list(sizes.items()):
        for delta in (-1, 1, -4096, 4096):
            n = size + delta
            if 0 <= n <= _U64_MAX and not maxbuf.is_representable(n) and n not in sizes:
                sizes[n] = f"{delta:+d} from {size:#x} ({why.split(':')[0]}): no encoding"
    for size, why in (
        (maxbuf.LARGEST + 1, "one above the largest size"),
        (maxbuf.LARGEST + 4096, "a page above the largest size"),
        (1 << 63, "2**63: above the largest size"),
        (_U64_MAX, "the largest u64"),
    ):
        sizes.setdefault(size, why)
    return {
        "schema": "kvmspe-vectors-codec",
        "schema_version": SCHEMA_VERSION,
        "field": {
            "register": "PMBIDR_EL1",
            "bits": "47:32",
            "e_bits": "13:9",
            "m_bits": "8:0",
            "reserved_bits": "15:14",
            "decode": "E == 0: M * 4096; E > 0: (512 + M) << (E + 11); field 0 means no limit",
        },
        "largest": _hex(maxbuf.LARGEST),
        "page_sizes": list(maxbuf.PAGE_SIZES),
        "vectors": [_entry(s, sizes[s]) for s in sorted(sizes)],
    }


# --- scenarios ---------------------------------------------------------------------------------


def _expect(runner: _ModelRunner, step: Step) -> dict[str, Any]:
    exp = runner.expected(step)
    if isinstance(exp, bool):
        return {"has": exp}
    if isinstance(exp, int):
        return {"value": _hex(exp)}
    if exp in errno.errorcode.values():
        return {"errno": getattr(errno, exp), "errno_name": exp}
    if exp == "ok":
        return {"ok": True}
    if exp == "exit":
        return {"exit": "any"}
    name, _, excess = exp.partition(" excess=")
    out: dict[str, Any] = {"exit": name}
    if name == "KVM_EXIT_RLIMIT":
        out["exit_reason"] = abi.ASSUMED.exit_rlimit
    if excess:
        out["rlimit_excess"] = excess
    return out


def _call(runner: _ModelRunner, step: Step) -> dict[str, Any]:
    call: dict[str, Any] = {"vcpu": step.vcpu, "op": step.op}
    if step.op in ("set", "get", "has"):
        group, attr = (
            (abi.KVM_ARM_VCPU_SPE_CTRL, int(step.target))
            if step.target.isdigit()
            else abi.ATTR_BY_NAME[step.target]
        )
        ioctl = {"set": "KVM_SET_DEVICE_ATTR", "get": "KVM_GET_DEVICE_ATTR", "has": "KVM_HAS_DEVICE_ATTR"}
        call.update(ioctl=ioctl[step.op], group=group, attr=attr, attr_name=step.target)
        if step.op == "set":
            value = runner.value(step.value)
            call["value"] = "bad-address" if value is abi.BAD_ADDRESS else _hex(value)  # type: ignore[arg-type]
        elif step.op == "get":
            call["addr"] = "bad-address" if step.value == "BAD" else "valid"
    elif step.op == "run":
        call["ioctl"] = "KVM_RUN"
    elif step.op == "setrlimit":
        room = runner.value(step.value)
        assert isinstance(room, int)
        call["memlock_limit"] = _hex(runner.host.locked_bytes + room)
    elif step.op == "enable":
        size = runner.value(step.value)
        assert isinstance(size, int)
        call.update(
            base=_hex(GUEST_BUFFER_BASE), size=_hex(size), stage1="unmapped" if step.target else "mapped"
        )
    elif step.op == "guest_read":
        reg, _, name = step.target.partition(".")
        call.update(register=reg, field=name)
    call["expect"] = _expect(runner, step)
    return call


def _scenario(case: Case) -> dict[str, Any]:
    runner = _ModelRunner(case.setup, RULES)
    host = runner.host
    rule = case.rule
    assert rule is not None
    out = {
        "name": case.name,
        "rule": rule.key,
        "rule_text": rule.text,
        "source": rule.source,
        "where": rule.where,
        "needs_guest": case.needs_guest,
        "host": {
            "page_size": host.page_size,
            "spus": [
                {"id": s.id, "max_buffer_size": _hex(s.max_buffer_size), "pmbidr_el1": _hex(s.pmbidr)}
                for s in host.spus
            ],
            "memlock_limit": _hex(host.memlock_limit),
            "locked": _hex(host.locked_bytes),
        },
        "vcpus": [{"index": v.index, "spe": v.spe} for v in runner.vcpus],
        "calls": [_call(runner, s) for s in case.calls],
    }
    return out


def scenario_vectors() -> dict[str, Any]:
    """The scenario vectors document (see the module docstring)."""
    return {
        "schema": "kvmspe-vectors-scenarios",
        "schema_version": SCHEMA_VERSION,
        "assumed_numbers": {
            "spe_feature_bit": abi.ASSUMED.spe_feature_bit,
            "cap_arm_spe": abi.ASSUMED.cap_arm_spe,
            "exit_rlimit": abi.ASSUMED.exit_rlimit,
        },
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


def _temp_copy(folder: Path, name: str, data: bytes, writer: Writer) -> Path:
    """``data`` in a new temporary file next to ``folder/name``, flushed to disk."""
    fd, tmp = tempfile.mkstemp(prefix=f".{name}.", suffix=".tmp", dir=folder)
    try:
        os.fchmod(fd, 0o644)  # mkstemp's 0600 is for the temporary name only
        writer(fd, data)
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        os.unlink(tmp)
        raise
    os.close(fd)
    return Path(tmp)


def write(out_dir: str | Path, *, writer: Writer = _write_all) -> list[Path]:
    """Write both vector files into ``out_dir`` (created if missing); return their paths.

    All or nothing: both documents are built, then written to temporary files
    in ``out_dir``, and only when both are complete on disk do they replace
    the files (``os.replace``, atomic per file). A failure (a full disk, an
    interruption) leaves the files that were there untouched and no
    temporary file behind. ``out_dir`` must be a non-empty path without NUL
    (ValueError); failures of the file system raise OSError.
    """
    if not isinstance(out_dir, (str, Path)) or not str(out_dir).strip() or "\0" in str(out_dir):
        raise ValueError(f"bad output directory {out_dir!r}; accepted: a non-empty directory path")
    folder = Path(out_dir)
    if folder.exists() and not folder.is_dir():
        raise ValueError(f"{folder} exists and is not a directory; give a directory for the vectors")
    docs = ((CODEC_FILE, codec_vectors()), (SCENARIO_FILE, scenario_vectors()))
    blobs = [(name, (json.dumps(doc, indent=1) + "\n").encode("utf-8")) for name, doc in docs]
    folder.mkdir(parents=True, exist_ok=True)
    temps: list[tuple[Path, Path]] = []
    try:
        for name, data in blobs:
            temps.append((_temp_copy(folder, name, data, writer), folder / name))
        for tmp, path in temps:
            os.replace(tmp, path)
    finally:
        for tmp, _ in temps:
            try:
                os.unlink(tmp)
            except FileNotFoundError:
                pass
    return [path for _, path in temps]
