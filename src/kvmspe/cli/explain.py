"""``kvmspe explain``: what an errno or a name means, as :mod:`kvmspe.abi.meanings` answers it."""

from __future__ import annotations

from .output import emit

TYPE_CHECKING = False
if TYPE_CHECKING:
    import argparse

    from ..abi.meanings import Explanation

__all__ = ["cmd_explain"]


def cmd_explain(args: argparse.Namespace) -> int:
    from ..abi import meanings

    answer = meanings.explain_topic(args.topic)
    if answer.kind == "errno":
        return emit(args, answer.to_dict(), _errno_lines(answer), 0 if answer.meanings else 1)
    return emit(args, answer.to_dict(), _name_lines(answer))


def _errno_lines(answer: Explanation) -> list[str]:
    """An errno's line, then each call that answers it and what it means there."""
    lines = [f'{answer.name} (errno {answer.errno}, "{answer.strerror}")']
    lines += [f"  {m.attribute} {m.call}: {m.meaning}" for m in answer.meanings]
    if not answer.meanings:
        lines.append("  no SPE attribute call or KVM_RUN answers this errno")
    return lines


def _name_lines(answer: Explanation) -> list[str]:
    """A name's line (for an attribute: its group, number, value and spellings), then
    each errno of each call; the attribute is named too when there are several."""
    info = answer.info
    if info is not None:
        where = (
            "takes no value (addr 0, not read)"
            if info.value is None
            else f"value {answer.value_type} at kvm_device_attr.addr"
        )
        header = f"{info.name} (group {info.group}, attribute {info.attr}, {where})"
        if len(info.names) > 1:
            header += f"; also spelled {', '.join(info.names[1:])}"
    elif answer.group is not None:
        header = f"{answer.name} (VCPU device attribute group {answer.group})"
    else:
        header = answer.name
    lines = [header]
    for m in answer.meanings:
        prefix = f"{m.attribute} {m.call}" if answer.attributes > 1 else m.call
        lines.append(f"  {prefix:<5} {m.name:<7} {m.meaning}")
    return lines
