"""The transcript of a shim run: every SPE call a process made, the model's answer, and why.

One :class:`Entry` per call, in the order the model saw them. Its human form
is one line::

    SET KVM_ARM_VCPU_SPE_MAX_BUFFER_SIZE=0x400000 on VCPU 0 -> ENODEV (spu-assigned: no SPU ...)

and :func:`to_dict` gives the JSON form (schema ``kvmspe-shim-transcript``,
documented in ``docs/shim.md``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

__all__ = ["SCHEMA", "Entry", "render", "to_dict"]

SCHEMA = "kvmspe-shim-transcript"
SCHEMA_VERSION = 1


@dataclass
class Entry:
    """One call: what (``call``, ``target``, ``value``), where (``pid``, ``vm``,
    ``vcpu``), the answer (``result``), the rule that decided it and why,
    and the ``--fail`` spec when the answer was injected."""

    seq: int
    pid: int
    call: str
    target: str
    value: int | None = None
    vcpu: int | None = None
    vm: int | None = None
    result: str = ""
    rule: str = ""
    why: str = ""
    injected: str | None = None
    bad_address: bool = False

    def answer(self, result: str, *, rule: str = "", why: str = "", injected: str | None = None) -> None:
        self.result = result
        self.rule = rule
        self.why = why
        self.injected = injected

    def line(self, *, with_pid: bool = False) -> str:
        what = self.call
        if self.target:
            what += f" {self.target}"
        if self.bad_address:
            what += "=<unreadable addr>" if self.call == "SET" else " into <unwritable addr>"
        elif self.value is not None:
            # Sizes in hex, as the kernel's docs give them; interrupts and SPU ids in decimal.
            what += f"={self.value:#x}" if self.value >= 4096 else f"={self.value}"
        if self.vcpu is not None:
            what += f" on VCPU {self.vcpu}"
        if with_pid:
            what = f"[pid {self.pid}] {what}"
        detail = ""
        if self.injected is not None:
            detail = f"injected by --fail {self.injected}"
        elif self.rule and self.why:
            detail = f"{self.rule}: {self.why}"
        elif self.why:
            detail = self.why
        return f"{what} -> {self.result}" + (f" ({detail})" if detail else "")


def render(entries: Sequence[Entry]) -> str:
    """The transcript, one line per call; the pid leads each line when several processes called."""
    several = len({e.pid for e in entries}) > 1
    if not entries:
        return "no SPE call was made (the command never used KVM, or not through the C library's ioctl)"
    return "\n".join(e.line(with_pid=several) for e in entries)


def to_dict(entries: Sequence[Entry], **extra: Any) -> dict[str, Any]:
    """The JSON form: schema, version, ``extra`` (the run's facts) and the entries."""
    return {
        "schema": SCHEMA,
        "version": SCHEMA_VERSION,
        **extra,
        "calls": [asdict(e) for e in entries],
    }
