"""What an errno, an attribute or KVM_RUN means for SPE: the search ``kvmspe explain`` shows.

One query, an errno (``EDOM``, ``33``) or a name (an attribute in either
spelling, ``KVM_RUN``, the group ``KVM_ARM_VCPU_SPE_CTRL``), answered from the
one table of meanings, :data:`kvmspe.abi.ERRNO_TABLE`.
"""

from __future__ import annotations

import errno as errno_mod
import os
import re
from dataclasses import dataclass, field
from typing import Any

from ..errors import InvalidArgumentError
from .constants import KVM_ARM_VCPU_SPE_CTRL
from .errnos import ATTRS, ERRNO_TABLE, AttrInfo
from .structs import U64

__all__ = ["Explanation", "Meaning", "explain_topic"]

#: The name of the attribute group, as a query.
GROUP = "KVM_ARM_VCPU_SPE_CTRL"


@dataclass(frozen=True)
class Meaning:
    """What errno ``errno`` (named ``name``) means when ``call`` of ``attribute`` answers it."""

    attribute: str
    call: str
    errno: int
    name: str
    meaning: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "attribute": self.attribute,
            "call": self.call,
            "errno": self.errno,
            "name": self.name,
            "meaning": self.meaning,
        }


@dataclass(frozen=True)
class Explanation:
    """The answer to one query.

    ``kind`` is ``"errno"`` or ``"name"``. For an errno: ``errno``, its ``name``
    and ``strerror``, and every call that answers it (none is a "no"). For a
    name: ``name`` as the table spells it, ``info`` for an attribute,
    ``group`` for the attribute group, and the meaning of every errno of
    every call it names; ``attributes`` is how many attributes those are.
    """

    query: str
    kind: str
    name: str
    meanings: tuple[Meaning, ...]
    errno: int | None = None
    strerror: str | None = None
    info: AttrInfo | None = None
    group: int | None = None
    attributes: int = field(default=1)

    @property
    def value_type(self) -> str | None:
        """The C type of the attribute's value (``__u64``, ``int``, ``none``); None if not an attribute."""
        if self.info is None:
            return None
        return "none" if self.info.value is None else "__u64" if self.info.value is U64 else "int"

    def to_dict(self) -> dict[str, Any]:
        """The answer as ``kvmspe explain --json`` prints it."""
        doc: dict[str, Any] = {"query": self.query, "kind": self.kind}
        if self.kind == "errno":
            doc |= {"errno": self.errno, "name": self.name, "strerror": self.strerror}
        elif self.info is not None:
            info = self.info
            doc |= {"group": info.group, "attr": info.attr, "names": list(info.names)}
            doc["value_type"] = self.value_type
        elif self.group is not None:
            doc["group"] = self.group
        doc["meanings"] = [m.to_dict() for m in self.meanings]
        return doc


def _errno_of(topic: str) -> int | None:
    """The errno ``topic`` names, by number or by name; None if it names none."""
    if re.fullmatch(r"[0-9]{1,9}", topic):
        return int(topic)
    key = topic.upper()
    value = errno_mod.__dict__.get(key)
    if key.startswith("E") and isinstance(value, int):
        return value
    return None


def _explain_errno(topic: str, code: int) -> Explanation:
    name = errno_mod.errorcode.get(code)
    if name is None:
        raise InvalidArgumentError(f"{topic} is not an errno this system knows; try a name such as EDOM")
    meanings = tuple(
        Meaning(attribute, call, code, name, table[code])
        for attribute, calls in ERRNO_TABLE.items()
        for call, table in calls.items()
        if code in table
    )
    return Explanation(topic, "errno", name, meanings, errno=code, strerror=os.strerror(code))


def explain_topic(topic: str) -> Explanation:
    """What ``topic`` (surrounding blanks ignored, any case) means for SPE.

    Raises :class:`~kvmspe.errors.InvalidArgumentError` for an errno number
    this system does not know, or a name that is neither an errno nor in the table.
    """
    topic = topic.strip()
    code = _errno_of(topic)
    if code is not None:
        return _explain_errno(topic, code)
    key = topic.upper()
    by_name = {n: info for info in ATTRS.values() for n in info.names}
    info: AttrInfo | None = None
    group: int | None = None
    if key in by_name:
        info = by_name[key]
        name, tables = info.name, [(info.name, info.errnos)]
    elif key in ERRNO_TABLE:
        name, tables = key, [(key, ERRNO_TABLE[key])]
    elif key == GROUP:
        name, group = key, KVM_ARM_VCPU_SPE_CTRL
        tables = [(attr.name, attr.errnos) for attr in ATTRS.values()]
    else:
        names = ", ".join(sorted({*by_name, *ERRNO_TABLE, GROUP}))
        raise InvalidArgumentError(
            f"unknown errno or name {topic!r}; accepted: an errno (EDOM, 33) or one of {names}"
        )
    meanings = tuple(
        Meaning(attribute, call, c, errno_mod.errorcode.get(c, str(c)), meaning)
        for attribute, calls in tables
        for call, table in calls.items()
        for c, meaning in sorted(table.items())
    )
    return Explanation(topic, "name", name, meanings, info=info, group=group, attributes=len(tables))
