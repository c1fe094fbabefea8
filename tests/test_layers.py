"""Imports run one way: a module imports only from its own layer or below, and no modules import each other.

The layers, lowest first, are written here and in the README's table ("The
layers"), and the test checks that the two agree. Every import counts,
including those inside functions (the CLI's deferred ones) and those only for
type checkers: a lazy import that runs up a layer is still a dependency.
"""

from __future__ import annotations

import ast
import re
from collections import defaultdict
from pathlib import Path

import kvmspe

PACKAGE = Path(kvmspe.__file__).resolve().parent
README = PACKAGE.parent.parent / "README.md"

#: Lowest first: (name, the package's top-level modules and folders in it).
LAYERS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("base", ("errors", "validation", "units", "files", "assumptions", "version")),
    ("abi", ("abi",)),
    ("arch", ("arch",)),
    ("firmware", ("firmware",)),
    ("backends", ("model", "kvm", "backend")),
    ("host", ("host", "affinity", "perfaux")),
    ("operation", ("planner", "vmm", "shim", "status", "metrics", "prometheus", "plot")),
    ("conformance", ("conformance",)),
    ("export", ("export",)),
    ("cli", ("cli", "__main__", "__init__")),
)
RANK = {part: i for i, (_, parts) in enumerate(LAYERS) for part in parts}


def _module_name(path: Path) -> tuple[str, bool]:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    is_package = parts[-1] == "__init__"
    if is_package:
        parts.pop()
    return ".".join(parts), is_package


def _top(module: str) -> str:
    """kvmspe.host.discovery -> host; kvmspe -> __init__ (the package root)."""
    return module.split(".")[1] if "." in module else "__init__"


def _imports(runtime_only: bool = False) -> dict[str, set[str]]:
    """Module -> the kvmspe modules it imports (a name imported from a package counts as
    its submodule when there is one). ``runtime_only``: leave out the imports under
    ``if TYPE_CHECKING:``, which never run."""
    found: dict[str, set[str]] = defaultdict(set)
    for path in sorted(PACKAGE.rglob("*.py")):
        name, is_package = _module_name(path)
        here = name if is_package else name.rpartition(".")[0]
        tree = ast.parse(path.read_text(), str(path))
        typing_only = {
            id(n)
            for block in ast.walk(tree)
            if isinstance(block, ast.If) and "TYPE_CHECKING" in ast.unparse(block.test)
            for n in ast.walk(block)
        }
        for node in ast.walk(tree):
            if runtime_only and id(node) in typing_only:
                continue
            if isinstance(node, ast.Import):
                found[name].update(a.name for a in node.names if a.name.split(".")[0] == "kvmspe")
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = here.split(".")[: len(here.split(".")) - node.level + 1]
                    target = ".".join(base + ([node.module] if node.module else []))
                else:
                    target = node.module or ""
                if target.split(".")[0] != "kvmspe":
                    continue
                for alias in node.names:
                    sub = f"{target}.{alias.name}"
                    found[name].add(sub if _is_module(sub) else target)
        found.setdefault(name, set())
    return found


def _is_module(name: str) -> bool:
    rel = Path(*name.split(".")[1:])
    return (PACKAGE / rel).with_suffix(".py").is_file() or (PACKAGE / rel / "__init__.py").is_file()


IMPORTS = _imports()


def test_every_module_has_a_layer() -> None:
    assert sorted({_top(m) for m in IMPORTS} - set(RANK)) == []


def test_no_module_imports_from_a_layer_above_its_own() -> None:
    upward = [
        f"{m} ({LAYERS[RANK[_top(m)]][0]}) imports {t} ({LAYERS[RANK[_top(t)]][0]})"
        for m, targets in sorted(IMPORTS.items())
        for t in sorted(targets)
        if RANK[_top(t)] > RANK[_top(m)]
    ]
    assert upward == []


def test_no_import_cycle() -> None:
    """Depth-first search over the modules' imports as they run (a package's own __init__
    importing its submodules, to re-export them, is not a cycle with them). A child's
    annotation naming its parent's class (a Vcpu's ``vm: Vm``) is imported only for type
    checkers, under ``if TYPE_CHECKING:``, and is left out here; the layer test above
    counts it."""
    runtime = _imports(runtime_only=True)
    graph = {
        m: {t for t in ts if t in runtime and t != m and m != t.rpartition(".")[0]}
        for m, ts in runtime.items()
    }
    state: dict[str, int] = {}
    cycles: list[list[str]] = []

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycles.append(path[path.index(nxt) :] + [nxt] if nxt in path else [node, nxt])
            elif nxt not in state:
                visit(nxt, path + [nxt])
        state[node] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m, [m])
    assert cycles == []


def test_the_readme_lists_the_same_layers_in_the_same_order() -> None:
    text = README.read_text()
    section = text[text.index("## The layers") :]
    section = section[: section.index("\n## ", 1)]
    shown = re.findall(r"^\| \*\*(\w+)\*\* \|", section, re.M)
    assert shown == [name for name, _ in LAYERS]
