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

import json
from typing import Any

from .. import __version__, abi
from ..conformance import runner as conformance
from ..conformance.cases import Case, by_name
from ..conformance.expr import NAMES, NOSPU_OFFSET, parse
from . import c_header, template

__all__ = ["case_table", "numbers", "program"]

_OPS = ("set", "get", "has", "run", "setrlimit", "create_vcpu")
_ADDR = {"valid": "ADDR_VALID", "bad-address": "ADDR_BAD", "null": "ADDR_NULL"}


def _cstr(text: str) -> str:
    return json.dumps(text)  # a JSON string is a valid C string literal for ASCII text


class _Exprs:
    """Every distinct expression, numbered; ``-1`` is "no expression"."""

    def __init__(self) -> None:
        self.texts: list[str] = []

    def id(self, value: dict[str, Any] | None) -> int:
        if value is None:
            return -1
        text = value["expr"]
        if text not in self.texts:
            self.texts.append(text)
        return self.texts.index(text)

    def render(self) -> list[str]:
        lines = ["static uint64_t eval_expr(int id, struct env *e)", "{", "\tswitch (id) {"]
        for i, text in enumerate(self.texts):
            lines += [f"\tcase {i}: /* {text} */", f"\t\treturn {parse(text).to_c()};"]
        lines += ["\t}", '\te->error = "unknown expression";', "\treturn 0;", "}", ""]
        lines += ["static const char *const expr_texts[] = {"]
        lines += [f"\t{_cstr(t)}," for t in self.texts] + ["};"]
        return lines


def _expect(exp: dict[str, Any], exprs: _Exprs) -> tuple[str, int, int, int]:
    """(kind, errno, has, expression id) of an expected result."""
    if "errno" in exp:
        return "EXP_ERRNO", exp["errno"], 0, -1
    if "has" in exp:
        return "EXP_HAS", 0, int(exp["has"]), -1
    if "value" in exp:
        return "EXP_VALUE", 0, 0, exprs.id(exp["value"])
    if "exit" in exp and exp["exit"] == "any":
        return "EXP_EXIT_ANY", 0, 0, -1
    if "exit" in exp:
        return "EXP_EXIT_RLIMIT", 0, 0, exprs.id(exp.get("rlimit_excess"))
    return "EXP_OK", 0, 0, -1


def _step(c: dict[str, Any], exprs: _Exprs) -> str:
    op = c["op"]
    kind = f"OP_{op.upper()}" if op in _OPS else "OP_GUEST"
    value = c.get("value") or c.get("memlock_room")
    ek, eerr, ehas, eexpr = _expect(c["expect"], exprs)
    vtype = {"int": "VT_INT", "none": "VT_NONE"}.get(c.get("value_type", "__u64"), "VT_U64")
    addr = _ADDR.get(c.get("addr", "valid"), "ADDR_VALID")
    spe = int(bool(c.get("spe", False)))
    return (
        f"{{ {kind}, {c['vcpu']}, {c.get('group', 0)}, {c.get('attr', 0)}, {vtype}, {addr},"
        f" {exprs.id(value)}, {spe}, {ek}, {eerr}, {ehas}, {eexpr}, {_cstr(_describe(c))} }}"
    )


def _describe(c: dict[str, Any]) -> str:
    who = f"vcpu{c['vcpu']} " if c["vcpu"] else ""
    name = c.get("attr_name", "").removeprefix("KVM_ARM_VCPU_")
    if c["op"] == "set":
        v = c.get("value")
        shown = v["expr"] if v else {"bad-address": "BAD", "null": "(no value)"}.get(c.get("addr", ""), "")
        return f"{who}SET {name}={shown}"
    if c["op"] == "get":
        return f"{who}GET {name}" + (" addr=BAD" if c.get("addr") == "bad-address" else "")
    if c["op"] == "has":
        return f"{who}HAS {name}"
    if c["op"] == "setrlimit":
        return f"setrlimit room={c['memlock_room']['expr']}"
    return f"{who}{c['op']}"


def _case(s: dict[str, Any], case: Case, index: int, exprs: _Exprs) -> tuple[list[str], str]:
    req = s["requires"]
    limit = {"any": "LIM_ANY", "none": "LIM_NONE", "some": "LIM_SOME"}[req.get("spu_limit", "any")]
    steps = [_step(c, exprs) for c in s["calls"]]
    arr = f"steps_{index}"
    lines = [f"static const struct step {arr}[] = {{"] + [f"\t{x}," for x in steps] + ["};"]
    vcpus = "".join("1" if v["spe"] else "0" for v in s["vcpus"])
    entry = (
        f"\t{{ {_cstr(s['name'])}, {_cstr(s['rule'])}, {_cstr(s['source'])}, {int(req['spe'])},"
        f" {req.get('spus', 0)}, {limit}, {req.get('page_size', 0)}, {int(req['guest'])},"
        f" {int(req.get('irqchip', True))}, {int(case.needs_irqchip)}, {_cstr(vcpus)},"
        f" {exprs.id(s.get('memlock_room'))}, {arr}, {len(steps)} }},"
    )
    return lines, entry


def case_table(doc: dict[str, Any]) -> str:
    """The C of every case of a scenario vectors document
    (:func:`kvmspe.export.vectors.scenario_vectors`): ``eval_expr``,
    ``expr_texts``, the steps and ``cases[]``, in the document's order."""
    exprs = _Exprs()
    tables: list[str] = []
    entries: list[str] = []
    scenarios = doc["scenarios"]
    for i, (s, case) in enumerate(zip(scenarios, by_name(s["name"] for s in scenarios), strict=True)):
        lines, entry = _case(s, case, i, exprs)
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


def program(harness: str, doc: dict[str, Any], lang: str, extra: dict[str, int] | None = None) -> str:
    """The harness template ``harness`` filled with the cases of ``doc`` (see the module
    docstring); ``lang`` names the export in the generated line, ``extra`` adds numbers."""
    defined = {**numbers(), **(extra or {})}
    parts: dict[str, str | list[str]] = {
        "@GENERATED@": f"// Generated by kvmspe {__version__} (kvmspe export --lang {lang})."
        " Do not edit: regenerate.",
        "@KVMSPE_H@": c_header.render(),
        "@NUMBERS@": [f"#define {k} UINT64_C({v:#x})" for k, v in defined.items()],
        "@CASES_HEAD@": _names() + "\n" + template.text("cases_head.c"),
        "@CASE_TABLE@": case_table(doc),
        "@CASES_RUN@": template.text("cases_run.c"),
    }
    return template.fill(harness, parts)
