"""The kit's imports go one way: no cycle among kit's modules (counting imports made inside
functions), and the leaves (configuration, data, the memory plan, console and plotting code, the
command line) load without torch, Unsloth or transformers."""

from __future__ import annotations

import ast
import json
import subprocess
import sys

import pytest
from conftest import ROOT

LEAVES = ("kit.config", "kit.data", "kit.plan", "kit.families", "kit.report", "kit.plots", "kit.cli",
          "kit.recipe", "kit.ranks", "kit.checks", "kit.metrics", "kit.choice", "kit.serve", "kit.multi")
HEAVY = ("torch", "unsloth", "transformers")


def kit_modules() -> dict[str, str]:
    """Module name → source, for kit/ and the recipes (kit.recipes, as a wheel installs them)."""
    out = {}
    for path in sorted((ROOT / "kit").glob("*.py")):
        out["kit" if path.stem == "__init__" else f"kit.{path.stem}"] = path.read_text()
    for path in sorted((ROOT / "recipes").glob("*.py")):
        out["kit.recipes" if path.stem == "__init__" else f"kit.recipes.{path.stem}"] = path.read_text()
    return out


def _target(name: str, known: set[str]) -> str | None:
    """The kit module an imported name lives in: `kit.showplan.show_plan` → kit.showplan."""
    while name and name not in known:
        name = name.rpartition(".")[0]
    return name or None


def import_graph(modules: dict[str, str]) -> dict[str, set[str]]:
    """Module → the kit modules it imports anywhere in its source (top level, in functions,
    under `if`), relative imports resolved. `kit` itself (the package) is no dependency."""
    known = set(modules)
    graph: dict[str, set[str]] = {}
    for module, source in modules.items():
        package = module if module in ("kit", "kit.recipes") else module.rpartition(".")[0]
        deps = set()
        for node in ast.walk(ast.parse(source)):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    parts = package.split(".")
                    base = ".".join(parts[:len(parts) - node.level + 1] + ([base] if base else []))
                names = [f"{base}.{a.name}" for a in node.names] + [base]
            for name in names:
                if name == "kit" or name.startswith("kit."):
                    target = _target(name, known)
                    if target not in (None, "kit", module):
                        deps.add(target)
        graph[module] = deps
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle as [a, b, ..., a], or None (depth-first search, white/grey/black)."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for dep in sorted(graph.get(node, ())):
            if state.get(dep) == 1:
                return stack[stack.index(dep):] + [dep]
            if dep not in state and (cycle := visit(dep)):
                return cycle
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_kit_imports_have_no_cycle():
    graph = import_graph(kit_modules())
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_the_cycle_finder_finds_cycles_made_inside_functions():
    """The check itself can fail: an import inside a function closes a cycle it reports."""
    modules = {
        "kit.a": "from kit import b\n",
        "kit.b": "import os\n\ndef f():\n    from kit.c import thing\n    return thing\n",
        "kit.c": "def g():\n    if True:\n        import kit.a\n",
        "kit.d": "from . import a\n",
    }
    graph = import_graph(modules)
    assert graph == {"kit.a": {"kit.b"}, "kit.b": {"kit.c"}, "kit.c": {"kit.a"}, "kit.d": {"kit.a"}}
    assert find_cycle(graph) == ["kit.a", "kit.b", "kit.c", "kit.a"]
    assert find_cycle({"kit.a": {"kit.b"}, "kit.b": set()}) is None


def test_leaves_import_no_stage():
    """config, data, the family table and the plan import no pipeline stage, even inside a
    function; report and plots are console and plotting code; cli dispatches to the stages only
    when a command needs one."""
    graph = import_graph(kit_modules())
    stages = {"kit.models", "kit.device", "kit.choice", "kit.memory", "kit.gpus", "kit.runplan",
              "kit.showplan", "kit.train", "kit.evaluate", "kit.export", "kit.gguf", "kit.hub",
              "kit.checkpoints", "kit.classify", "kit.code", "kit.verify", "kit.embedded", "kit.preflight",
              "kit.multi", "kit.serve"}
    assert stages <= set(graph), sorted(stages - set(graph))
    for leaf in ("kit.config", "kit.data", "kit.plan", "kit.families", "kit.report", "kit.plots"):
        assert not graph[leaf] & stages, f"{leaf} imports {sorted(graph[leaf] & stages)}"


@pytest.mark.parametrize("module", LEAVES)
def test_leaf_loads_without_torch(module):
    """Each leaf imported alone in a fresh interpreter leaves torch, Unsloth and transformers
    unloaded (the checkout first on the path, as in every test)."""
    code = (f"import sys, json; import {module}; "
            f"print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in {HEAVY!r})))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-2000:]
    heavy = json.loads(proc.stdout.strip().splitlines()[-1])
    assert heavy == [], f"import {module} loaded {heavy[:8]}"
