"""What a VMM developer scripts for a shim run: faults to inject, and the guest's buffer.

A fault (``--fail``) makes a chosen call answer a chosen result instead of
the model, to exercise a VMM's error paths::

    set:max_buffer_size@3=ERANGE   the 3rd SET of the max buffer size answers ERANGE
    has:irq=ENXIO                  every HAS of the SPE interrupt answers ENXIO
    init@1=EINVAL                  the 1st KVM_ARM_VCPU_INIT with the SPE feature
    run@1=rlimit:8M                the 1st KVM_RUN exits with KVM_EXIT_RLIMIT, 8 MiB over

``CALL`` is ``set``, ``get`` or ``has`` with an attribute (``irq``, ``spu``,
``max_buffer_size``, ``init``, or a full ``KVM_ARM_VCPU_SPE_*`` name), or
``run``, ``init`` (KVM_ARM_VCPU_INIT), ``check_extension``. ``@N`` counts
such calls in the process from 1 (over all VCPUs); without it every such
call fails. A result is an errno name or number, or for ``run``
``rlimit:SIZE``. A faulted call does not reach the model: nothing changes.

The guest (``--guest``) is scripted, since no guest program runs SPE here::

    0@2=enable:4M:0x0     VCPU 0, on its 2nd KVM_RUN, enables a 4 MiB buffer at VA 0
    all@1=enable:64K      every VCPU, on its 1st KVM_RUN, enables 64 KiB at VA index*size
    1@3=disable           VCPU 1 disables its buffer on its 3rd KVM_RUN

The action happens before the model handles that entry, as a guest that ran
until then would have written its buffer registers.
"""

from __future__ import annotations

import errno
from dataclasses import dataclass

from .. import abi
from ..errors import KvmspeError
from ..units import parse_size

__all__ = ["Fault", "GuestAction", "parse_fault", "parse_guest"]

_CALLS_WITH_ATTR = ("set", "get", "has")
_CALLS = ("run", "init", "check_extension")
_SHORT_ATTRS = {
    info.name.removeprefix("KVM_ARM_VCPU_SPE_").lower(): attr
    for (group, attr), info in abi.ATTRS.items()
    if group == abi.KVM_ARM_VCPU_SPE_CTRL
}


class ScriptError(KvmspeError, ValueError):
    """A ``--fail`` or ``--guest`` spec that cannot be read; the message says what is accepted."""


def _count(text: str, spec: str, what: str) -> int:
    if not text.isdecimal() or int(text) < 1 or len(text) > 9:
        raise ScriptError(f"{spec!r}: {what} must be a call number from 1, got {text!r}")
    return int(text)


def _attr(name: str, spec: str) -> int:
    key = name.strip()
    short = key.lower().removeprefix("kvm_arm_vcpu_spe_").removeprefix("kvm_arm_vcpu_")
    if short in _SHORT_ATTRS:
        return _SHORT_ATTRS[short]
    accepted = ", ".join(_SHORT_ATTRS)
    raise ScriptError(f"{spec!r}: unknown attribute {name!r}; accepted: {accepted}")


def _errno(text: str, spec: str) -> int:
    if text.isdecimal() and 0 < int(text) < 4096:
        return int(text)
    code = getattr(errno, text.upper(), None) if text.upper().startswith("E") else None
    if not isinstance(code, int):
        raise ScriptError(f"{spec!r}: {text!r} is not an errno; accepted: a name such as ERANGE, or 1..4095")
    return code


@dataclass(frozen=True)
class Fault:
    """One injected result: ``call`` (and ``attr``) on the ``nth`` such call (None: every one)."""

    spec: str
    call: str
    attr: int | None
    nth: int | None
    errno: int | None = None
    rlimit_excess: int | None = None

    def matches(self, call: str, attr: int | None, count: int) -> bool:
        return self.call == call and self.attr == attr and (self.nth is None or self.nth == count)


def parse_fault(spec: str) -> Fault:
    """A :class:`Fault` from ``CALL[:ATTR][@N]=RESULT`` (see the module docstring)."""
    if not isinstance(spec, str):
        raise ScriptError(f"a fault is a string such as 'set:max_buffer_size@3=ERANGE', got {spec!r}")
    where, eq, result = spec.partition("=")
    if not eq or not result:
        raise ScriptError(f"{spec!r}: expected CALL[:ATTR][@N]=RESULT, e.g. set:max_buffer_size@3=ERANGE")
    where, at, nth_text = where.partition("@")
    call, colon, attr_text = where.strip().lower().partition(":")
    nth = _count(nth_text, spec, "N") if at else None
    attr: int | None = None
    if call in _CALLS_WITH_ATTR:
        if not colon:
            raise ScriptError(f"{spec!r}: {call} needs an attribute, e.g. {call}:max_buffer_size")
        attr = _attr(attr_text, spec)
    elif call in _CALLS:
        if colon:
            raise ScriptError(f"{spec!r}: {call} takes no attribute")
    else:
        accepted = ", ".join((*(f"{c}:ATTR" for c in _CALLS_WITH_ATTR), *_CALLS))
        raise ScriptError(f"{spec!r}: unknown call {call!r}; accepted: {accepted}")
    kind, colon, amount = result.strip().partition(":")
    if kind.lower() == "rlimit":
        if call != "run":
            raise ScriptError(f"{spec!r}: only run can end in rlimit:SIZE")
        try:
            excess = parse_size(amount)
        except ValueError as exc:
            raise ScriptError(f"{spec!r}: {exc}") from None
        if excess <= 0:
            raise ScriptError(f"{spec!r}: rlimit:SIZE takes a size above 0")
        return Fault(spec, call, attr, nth, rlimit_excess=excess)
    return Fault(spec, call, attr, nth, errno=_errno(result.strip(), spec))


@dataclass(frozen=True)
class GuestAction:
    """The guest writes its buffer registers on VCPU ``vcpu`` (None: every VCPU) before entry ``entry``."""

    spec: str
    vcpu: int | None
    entry: int
    op: str  # "enable" or "disable"
    size: int = 0
    base: int | None = None

    def base_for(self, index: int) -> int:
        """The buffer's VA on VCPU ``index``: the given one, else ``index * size``."""
        return self.base if self.base is not None else index * self.size


def parse_guest(spec: str) -> GuestAction:
    """A :class:`GuestAction` from ``VCPU@ENTRY=enable:SIZE[:VA]`` or ``VCPU@ENTRY=disable``."""
    if not isinstance(spec, str):
        raise ScriptError(f"a guest action is a string such as '0@2=enable:4M:0x0', got {spec!r}")
    where, eq, action = spec.partition("=")
    who, at, entry_text = where.strip().partition("@")
    if not eq or not at:
        raise ScriptError(f"{spec!r}: expected VCPU@ENTRY=enable:SIZE[:VA] or VCPU@ENTRY=disable")
    vcpu = None if who.lower() == "all" else _count_id(who, spec)
    entry = _count(entry_text, spec, "ENTRY")
    op, _, rest = action.strip().partition(":")
    if op == "disable" and not rest:
        return GuestAction(spec, vcpu, entry, "disable")
    if op != "enable" or not rest:
        raise ScriptError(f"{spec!r}: the action is enable:SIZE[:VA] or disable")
    size_text, _, base_text = rest.partition(":")
    try:
        size = parse_size(size_text)
        base = parse_size(base_text) if base_text else None
    except ValueError as exc:
        raise ScriptError(f"{spec!r}: {exc}") from None
    if size <= 0 or size % 4096 or (base is not None and base % 4096):
        raise ScriptError(f"{spec!r}: a buffer's size and VA are multiples of 4 KiB, the size above 0")
    return GuestAction(spec, vcpu, entry, "enable", size, base)


def _count_id(text: str, spec: str) -> int:
    if not text.isdecimal() or len(text) > 9:
        raise ScriptError(f"{spec!r}: VCPU must be a VCPU id or 'all', got {text!r}")
    return int(text)
