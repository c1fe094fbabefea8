"""The expressions of the case language: parsed once, evaluated on a host, rendered to C.

A case value such as ``"PAGE * 2"`` or ``"unrep(LIMIT)"`` means the same on the
model and on a real host whose page size, SPU ids and SPU limit are whatever they
are. :func:`parse` turns its text into an :class:`Expr` when the case is defined,
so a malformed or unknown expression stops the import of the case data, not a run.
The grammar is the one table below: integer constants that fit a u64, the
:data:`NAMES`, the operators of :data:`OPERATORS` and calls of one argument to
the :data:`FUNCTIONS`. Everything else is refused.

:meth:`Expr.evaluate` gives the integer on a host described by an :class:`Env`
(the conformance runner); :meth:`Expr.to_c` the same computation as C over the
``struct env *e`` of the exported self-tests, u64 arithmetic: as ``+``, ``-`` and
``*`` are exact mod 2**64, a result that fits a u64 is the Python value.
"""

from __future__ import annotations

import ast
import functools
import operator
from collections.abc import Callable
from dataclasses import dataclass

from ..arch import maxbuf

__all__ = ["FUNCTIONS", "NAMES", "NOSPU_OFFSET", "OPERATORS", "Env", "Expr", "Function", "Operator", "parse"]

#: The names an expression may use, in the order of the C ``ENV_*`` enum:
#: ``PAGE`` the host page size, ``SPU``/``SPU2`` the first and second SPU's
#: ids, ``NOSPU`` an id no SPU has, ``LIMIT`` the first SPU's own max buffer
#: size, ``LARGEST`` the largest representable size, and three units.
NAMES = ("PAGE", "SPU", "SPU2", "NOSPU", "LIMIT", "LARGEST", "KiB", "MiB", "GiB")
#: ``NOSPU`` is this far above the largest SPU id of the host.
NOSPU_OFFSET = 1000
_U64_LIMIT = 1 << 64


@dataclass(frozen=True)
class Env:
    """The host an expression is evaluated on: its page size, its SPU ids (the
    first is ``SPU``) and the first SPU's own limit (None: ``LIMIT`` is unknown)."""

    page: int
    spu_ids: tuple[int, ...] = ()
    limit: int | None = None

    def name(self, name: str) -> int:
        """The value of ``name`` here; ValueError when this host has none (a
        second SPU on a host with one, ``LIMIT`` when it cannot be read)."""
        fixed = {"PAGE": self.page, "LARGEST": maxbuf.LARGEST, "KiB": 1 << 10, "MiB": 1 << 20, "GiB": 1 << 30}
        if name in fixed:
            return fixed[name]
        if name == "NOSPU":
            return max(self.spu_ids, default=0) + NOSPU_OFFSET
        index = {"SPU": 0, "SPU2": 1}.get(name)
        if index is not None and index < len(self.spu_ids):
            return self.spu_ids[index]
        if name == "LIMIT" and self.limit is not None:
            return self.limit
        raise ValueError(f"{name} has no value on this host")


def _next_size(env: Env, x: int) -> int:
    return maxbuf.round_up(x + 1, env.page)


def _unrep(env: Env, x: int) -> int:
    size = (x // env.page + 1) * env.page
    while maxbuf.is_representable(size):
        if maxbuf.step_at(size) <= env.page:
            # Every page multiple of this band is representable: try the next band.
            size = (1 << size.bit_length()) + env.page
        else:
            size += env.page
    return size


def _enc(env: Env, x: int) -> int:
    return maxbuf.encode(x)


@dataclass(frozen=True)
class Function:
    """A function of the language: its C name (``ks_*`` of ``cases_head.c``) and its
    Python meaning on a host."""

    c_name: str
    apply: Callable[[Env, int], int]


@dataclass(frozen=True)
class Operator:
    """A binary operator: its Python meaning and its C form (``{}`` for the operands)."""

    apply: Callable[[int, int], int]
    c_form: str


#: ``next_size(x)``: the smallest page-aligned, representable size above ``x``;
#: ``unrep(x)``: the smallest page-aligned size above ``x`` without a MaxBuffSize
#: encoding; ``enc(x)``: the MaxBuffSize field value of ``x``.
FUNCTIONS: dict[str, Function] = {
    "next_size": Function("ks_next_size", _next_size),
    "unrep": Function("ks_unrep", _unrep),
    "enc": Function("ks_enc", _enc),
}
#: The operators, by the Python syntax node that spells them.
OPERATORS: dict[type[ast.operator], Operator] = {
    ast.Add: Operator(operator.add, "({} + {})"),
    ast.Sub: Operator(operator.sub, "({} - {})"),
    ast.Mult: Operator(operator.mul, "({} * {})"),
    ast.FloorDiv: Operator(operator.floordiv, "({} / {})"),
    ast.Pow: Operator(operator.pow, "ks_pow({}, {})"),
}


@dataclass(frozen=True)
class _Num:
    value: int

    def evaluate(self, env: Env) -> int:
        return self.value

    def to_c(self) -> str:
        return f"UINT64_C({self.value:#x})"


@dataclass(frozen=True)
class _Name:
    name: str

    def evaluate(self, env: Env) -> int:
        return env.name(self.name)

    def to_c(self) -> str:
        return f"env_get(e, ENV_{self.name})"


@dataclass(frozen=True)
class _BinOp:
    op: Operator
    left: _Node
    right: _Node

    def evaluate(self, env: Env) -> int:
        return self.op.apply(self.left.evaluate(env), self.right.evaluate(env))

    def to_c(self) -> str:
        return self.op.c_form.format(self.left.to_c(), self.right.to_c())


@dataclass(frozen=True)
class _Call:
    function: Function
    arg: _Node

    def evaluate(self, env: Env) -> int:
        return self.function.apply(env, self.arg.evaluate(env))

    def to_c(self) -> str:
        return f"{self.function.c_name}(e, {self.arg.to_c()})"


_Node = _Num | _Name | _BinOp | _Call


def _node(node: ast.AST, text: str) -> _Node:
    """The tree of one syntax node; ValueError for anything outside the language."""
    if isinstance(node, ast.Constant) and type(node.value) is int:
        if not 0 <= node.value < _U64_LIMIT:
            raise ValueError(f"case expression {text!r}: constant {node.value} does not fit a u64")
        return _Num(node.value)
    if isinstance(node, ast.Name) and node.id in NAMES:
        return _Name(node.id)
    if isinstance(node, ast.BinOp) and type(node.op) in OPERATORS:
        return _BinOp(OPERATORS[type(node.op)], _node(node.left, text), _node(node.right, text))
    if (
        isinstance(node, ast.Call)
        and isinstance(node.func, ast.Name)
        and node.func.id in FUNCTIONS
        and len(node.args) == 1
        and not node.keywords
    ):
        return _Call(FUNCTIONS[node.func.id], _node(node.args[0], text))
    raise ValueError(f"case expression {text!r}: {ast.unparse(node)!r} is not part of the case language")


@dataclass(frozen=True)
class Expr:
    """One parsed expression; ``text`` is how the case wrote it (and how the
    vectors and the C comments show it)."""

    text: str
    tree: _Node

    def evaluate(self, env: Env) -> int:
        """The integer the expression stands for on the host ``env``."""
        return self.tree.evaluate(env)

    def to_c(self) -> str:
        """The expression as C over ``struct env *e`` (see the module docstring)."""
        return self.tree.to_c()

    def __str__(self) -> str:
        return self.text


@functools.cache
def _parse_text(text: str) -> Expr:
    try:
        tree = ast.parse(text, mode="eval")
    except SyntaxError as exc:
        raise ValueError(f"case expression {text!r} is not an expression: {exc.msg}") from None
    return Expr(text, _node(tree.body, text))


def parse(written: int | str) -> Expr:
    """The expression ``written`` (an int, or text in the language) stands for;
    ValueError for text outside the language. Each text is parsed once: the
    same text gives the same :class:`Expr`."""
    if type(written) is int:
        return _parse_text(str(written))
    if not isinstance(written, str):
        raise ValueError(f"case expression {written!r}: an int or an expression text is needed")
    return _parse_text(written)
