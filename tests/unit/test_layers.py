"""The package's dependencies point one way (docs/contributing.md, "The layers"): spec parsing → claim kinds →
engines → model, with binding and running above the spec, and suggestion, reporting and the public
entry points above everything. Read from the source (every import, at module level or inside a
function), so that no import can hide from it."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

pytestmark = pytest.mark.torchfree

PACKAGE = Path(__file__).resolve().parents[2] / "interptest"

# Lowest first. A module may import modules of its own layer or of a lower one, never of a higher one.
LAYERS: list[tuple[str, set[str]]] = [
    (
        "foundation",
        {
            "version",
            "tl_compat",
            "errors",
            "files",
            "stats",
            "components",
            "graphs",
            "heatmap",
            "maps",
            "zoo",
            "model",
            "saes",
        },
    ),
    ("engines", {"patching"}),
    ("claim kinds", {"claims"}),
    ("spec parsing", {"spec", "families", "schema"}),
    ("binding and running", {"binding", "running", "shrinking", "outcomes"}),
    (
        "suggestion, reporting, entry points",
        {"suggest", "render", "results", "report", "baselines", "model_cache", "api", "session"},
    ),
    ("front ends", {"", "__main__", "plugin", "cli", "bench"}),
]
# Entry points may defer imports to keep `import interptest`, pytest's plugin discovery and `interptest
# --help` cheap; nothing else defers an import of the package unless its target imports torch.
ENTRY_POINTS = {"interptest", "interptest.plugin", "interptest.cli", "interptest.bench"}
HEAVY = ("torch", "transformer_lens", "transformers")


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


MODULES = {_module_name(path): path for path in PACKAGE.rglob("*.py")}


def _resolve(name: str) -> str | None:
    """The package module an import names (a module, or the package of a name imported from it)."""
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name or None


def _imports(module: str) -> list[tuple[str, bool, int]]:
    """(imported module, at module level, line) for every import of the package in ``module``."""
    path = MODULES[module]
    tree = ast.parse(path.read_text())
    top_level = {id(node) for node in tree.body}
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + [base]).strip(".")
            names = [f"{base}.{alias.name}" for alias in node.names]  # a submodule, or a name in ``base``
        else:
            continue
        for name in names:
            target = _resolve(name) if name.startswith("interptest") else None
            if target and target != module:
                found.append((target, id(node) in top_level, node.lineno))
    return found


def _layer(module: str) -> int:
    first = module.split(".")[1] if "." in module else ""
    for index, (_, members) in enumerate(LAYERS):
        if first in members:
            return index
    raise AssertionError(f"{module} is in no layer of tests/unit/test_layers.py: add it where it belongs")


def _heavy(module: str, seen: set[str] | None = None) -> bool:
    """True when importing ``module`` imports torch (or transformer_lens) at module level."""
    seen = seen if seen is not None else set()
    if module in seen:
        return False
    seen.add(module)
    tree = ast.parse(MODULES[module].read_text())
    for node in tree.body:
        if isinstance(node, ast.Import) and any(a.name.split(".")[0] in HEAVY for a in node.names):
            return True
        if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] in HEAVY:
            return True
    return any(_heavy(target, seen) for target, top, _ in _imports(module) if top)


def test_every_module_has_a_layer():
    for module in MODULES:
        _layer(module)


def test_no_module_imports_a_higher_layer():
    wrong = []
    for module in sorted(MODULES):
        for target, _, line in _imports(module):
            if _layer(target) > _layer(module):
                wrong.append(
                    f"{module}:{line} imports {target} ({LAYERS[_layer(module)][0]} -> {LAYERS[_layer(target)][0]})"
                )
    assert not wrong, "\n".join(wrong)


def test_the_import_graph_has_no_cycle():
    """Every import counted, deferred ones too: a cycle held together by an import inside a function is a
    cycle all the same."""
    graph = {module: sorted({t for t, _, _ in _imports(module)}) for module in MODULES}
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(module: str) -> None:
        state[module] = 1
        stack.append(module)
        for target in graph[module]:
            if state.get(target) == 1:
                cycle = stack[stack.index(target) :] + [target]
                raise AssertionError("import cycle: " + " -> ".join(cycle))
            if target not in state:
                visit(target)
        stack.pop()
        state[module] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module)


def test_deferred_imports_only_defer_torch():
    """An import of the package inside a function is there only to put off importing torch (or to keep an
    entry point's start-up cheap), never to break a cycle (the graph has none)."""
    wrong = [
        f"{module}:{line} imports {target} inside a function, but {target} does not import torch"
        for module in sorted(MODULES)
        if module not in ENTRY_POINTS
        for target, top, line in _imports(module)
        if not top and not _heavy(target)
    ]
    assert not wrong, "\n".join(wrong)


def test_claim_kinds_import_nothing_above_them():
    """The issue's rule in its own words: a claim kind imports nothing from suggest, the pipeline, spec or
    families (it offers suggestions through ``Claim.suggest`` and reads seeds from the run)."""
    banned = {
        "interptest.suggest",
        "interptest.spec",
        "interptest.families",
        "interptest.binding",
        "interptest.running",
        "interptest.outcomes",
        "interptest.api",
    }
    wrong = [
        f"{module}:{line} imports {target}"
        for module in sorted(MODULES)
        if module.startswith("interptest.claims")
        for target, _, line in _imports(module)
        if target in banned
    ]
    assert not wrong, "\n".join(wrong)


def test_the_layering_test_sees_imports():
    """The reader itself: a deferred import and a relative import are both found."""
    assert ("interptest.patching", False) in {(t, top) for t, top, _ in _imports("interptest.running")}
    assert any(t == "interptest.claims.grammar" for t, _, _ in _imports("interptest.claims.nodes"))
