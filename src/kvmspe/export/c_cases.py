"""The conformance cases in C: one renderer of their expressions, calls and expectations,
shared by the C harnesses (``c-selftest``: raw ioctls; ``kselftest``: the kernel's kvm_util).

A harness is a C template in ``templates/`` (package data) with placeholder lines
that :func:`program` fills through :func:`kvmspe.export.template.fill`, the driver
of every export's template:

``@GENERATED@``
    the line saying what generated the file;
``@KVMSPE_H@``
    the C header (``kvmspe export --lang c``): numbers, the MaxBuffSize codec;
``@NUMBERS@``
    the numbers the shared code needs, from kvmspe's data (``KS_*``);
``@CASES_HEAD@``
    ``templates/cases_head.c``: the names of the case language, its functions
    (``next_size``, ``unrep``, ``enc``), the table's types, the host, why a case
    cannot run on it (as :mod:`kvmspe.conformance.runner` decides);
``@CASE_TABLE@``
    every case expression translated to C (``eval_expr``), the calls of every
    case and what each must give, one ``struct kcase`` per case;
``@CASES_RUN@``
    ``templates/cases_run.c``: performing a case's calls through the harness's
    VM, VCPU, device attribute and KVM_RUN functions and comparing each result.

The case logic is written once, here and in those two files; a harness only says
how a VM, a VCPU, an attribute call and a run are made, and how results are printed.
"""

from __future__ import annotations

import errno
import json
from collections.abc import Iterable

from .. import abi
from ..conformance import runner as conformance
from ..conformance.cases import CASES, Case, Step
from ..conformance.expr import NAMES, NOSPU_OFFSET, Expr, parse
from ..version import __version__
from . import c_header, template

__all__ = ["case_table", "numbers", "program"]

_OPS = ("set", "get", "has", "run", "setrlimit", "create_vcpu")
_VALUE_TYPES = {"int": "VT_INT", "none": "VT_NONE", "__u64": "VT_U64"}
_LIMITS = {None: "LIM_ANY", 0: "LIM_NONE"}


def _cstr(text: str) -> str:
    return json.dumps(text)  # a JSON string is a valid C string literal for ASCII text


class _Exprs:
    """Every distinct expression, numbered in the order first met; ``-1`` is "no expression"."""

    def __init__(self) -> None:
        self.exprs: dict[str, tuple[int, Expr]] = {}

    def id(self, expr: Expr | None) -> int:
        if expr is None:
            return -1
        return self.exprs.setdefault(expr.text, (len(self.exprs), expr))[0]

    def render(self) -> list[str]:
        lines = ["static uint64_t eval_expr(int id, struct env *e)", "{", "\tswitch (id) {"]
        for i, expr in self.exprs.values():
            lines += [f"\tcase {i}: /* {expr.text} */", f"\t\treturn {expr.to_c()};"]
        lines += ["\t}", '\te->error = "unknown expression";', "\treturn 0;", "}", ""]
        lines += ["static const char *const expr_texts[] = {"]
        lines += [f"\t{_cstr(t)}," for t in self.exprs] + ["};"]
        return lines


def _expect(step: Step, exprs: _Exprs) -> tuple[str, int, int, int]:
    """(kind, errno, has, expression id) of a step's expected result."""
    exp = step.expectation
    if exp.kind == "errno":
        return "EXP_ERRNO", getattr(errno, exp.errno_name), 0, -1
    if exp.kind == "has":
        return "EXP_HAS", 0, int(exp.flag), -1
    if exp.kind == "value":
        return "EXP_VALUE", 0, 0, exprs.id(exp.expr)
    if exp.kind == "exit" and exp.exit_name is None:
        return "EXP_EXIT_ANY", 0, 0, -1
    if exp.kind == "exit":
        return "EXP_EXIT_RLIMIT", 0, 0, exprs.id(exp.expr)
    return "EXP_OK", 0, 0, -1


def _value(step: Step) -> Expr | None:
    """The expression a step passes: a SET value, a setrlimit room (0 when not given)."""
    if step.op == "setrlimit":
        return step.amount or parse(0)
    return step.amount if step.op in ("set", "get") else None


def _addr(step: Step) -> str:
    if step.op not in ("set", "get") or step.amount is not None:
        return "ADDR_VALID"
    if step.value == "BAD":
        return "ADDR_BAD"
    return "ADDR_VALID" if step.op == "get" else "ADDR_NULL"


def _step(step: Step, exprs: _Exprs) -> str:
    kind = f"OP_{step.op.upper()}" if step.op in _OPS else "OP_GUEST"
    ek, eerr, ehas, eexpr = _expect(step, exprs)
    group, attr = step.attribute or (0, 0)
    vtype = _VALUE_TYPES[abi.value_type(*step.attribute)] if step.attribute else "VT_U64"
    spe = int(step.op == "create_vcpu" and step.target == "spe")
    return (
        f"{{ {kind}, {step.vcpu}, {group}, {attr}, {vtype}, {_addr(step)},"
        f" {exprs.id(_value(step))}, {spe}, {ek}, {eerr}, {ehas}, {eexpr}, {_cstr(step.describe())} }}"
    )


def _case(case: Case, index: int, exprs: _Exprs) -> tuple[list[str], str]:
    setup, rule = case.setup, case.rule
    assert rule is not None, case.name
    spus = setup.spus
    limit = _LIMITS.get(spus[0].limit, "LIM_SOME") if spus else "LIM_ANY"
    steps = [_step(s, exprs) for s in case.calls]
    arr = f"steps_{index}"
    lines = [f"static const struct step {arr}[] = {{"] + [f"\t{x}," for x in steps] + ["};"]
    vcpus = "".join("1" if spe else "0" for spe in setup.vcpus)
    entry = (
        f"\t{{ {_cstr(case.name)}, {_cstr(rule.key)}, {_cstr(rule.source)}, {int(bool(spus))},"
        f" {len(spus)}, {limit}, {setup.page_size or 0}, {int(case.needs_guest)},"
        f" {int(setup.irqchip)}, {int(case.needs_irqchip)}, {_cstr(vcpus)},"
        f" {exprs.id(setup.room)}, {arr}, {len(steps)} }},"
    )
    return lines, entry


def case_table(cases: Iterable[Case] = CASES) -> str:
    """The C of ``cases`` (by default every case of :mod:`kvmspe.conformance.cases`):
    ``eval_expr``, ``expr_texts``, the steps and ``cases[]``, in their order."""
    exprs = _Exprs()
    tables: list[str] = []
    entries: list[str] = []
    for i, case in enumerate(cases):
        lines, entry = _case(case, i, exprs)
        tables += lines
        entries.append(entry)
    out = exprs.render() + [""] + tables + ["", "static const struct kcase cases[] = {"] + entries + ["};"]
    return "\n".join(out)


def _names() -> str:
    enum = ", ".join(f"ENV_{n}" for n in NAMES)
    quoted = ", ".join(_cstr(n) for n in NAMES)
    return (
        "/* The names a case expression may use (kvmspe.conformance.cases). */\n"
        f"enum {{ {enum}, ENV_N }};\n"
        f"static const char *const env_names[ENV_N] = {{ {quoted} }};\n"
    )


def numbers() -> dict[str, int]:
    """The ``KS_*`` numbers the shared C uses, from kvmspe's data."""
    return {
        "KS_UNMAPPED_ADDRESS": abi.UNMAPPED_ADDRESS,
        "KS_RUN_TIMEOUT_US": int(conformance.RUN_TIMEOUT * 1_000_000),
        "KS_EXIT_REASON_OFFSET": abi.KVM_RUN_EXIT_REASON_OFFSET,
        "KS_RLIMIT_EXCESS_OFFSET": abi.KVM_RUN_RLIMIT_EXCESS_OFFSET,
        "KS_VGIC_DIST_BASE": abi.VGIC_V3_DIST_BASE,
        "KS_VGIC_REDIST_BASE": abi.VGIC_V3_REDIST_BASE,
        "KS_NOSPU_OFFSET": NOSPU_OFFSET,
    }


def program(
    harness: str, lang: str, extra: dict[str, int] | None = None, cases: Iterable[Case] = CASES
) -> str:
    """The harness template ``harness`` filled with ``cases`` (see the module docstring);
    ``lang`` names the export in the generated line, ``extra`` adds numbers."""
    defined = {**numbers(), **(extra or {})}
    parts: dict[str, str | list[str]] = {
        "@GENERATED@": f"// Generated by kvmspe {__version__} (kvmspe export --lang {lang})."
        " Do not edit: regenerate.",
        "@KVMSPE_H@": c_header.render(),
        "@NUMBERS@": [f"#define {k} UINT64_C({v:#x})" for k, v in defined.items()],
        "@CASES_HEAD@": _names() + "\n" + template.text("cases_head.c"),
        "@CASE_TABLE@": case_table(cases),
        "@CASES_RUN@": template.text("cases_run.c"),
    }
    return template.fill(harness, parts)
