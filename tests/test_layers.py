"""The package's layers import one way only (README, Architecture), runtime never imports torch, no cycles.

Every module under ``edgeflow/`` is parsed with ``ast``; every import (module-level or inside a function)
of an ``edgeflow`` module is checked against the layer order below.
"""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Dict, List, Set, Tuple

import edgeflow

ROOT = Path(edgeflow.__file__).parent

#: Lowest first; a module may import its own layer or lower ones.
LAYERS = ("core", "targets", "audio", "text", "flows", "models", "data", "train", "compress", "export", "quant",
          "runtime", "validate", "passes", "pipeline", "cli")
#: edgeflow/__init__.py (the version only) is core; ``python -m edgeflow`` is cli; other top-level modules
#: (pipeline.py and its helpers, bench.py) are the pipeline layer.
TOP = {"__init__": "core", "__main__": "cli"}
#: packages that only hold data files (read with importlib.resources from any layer).
DATA_PACKAGES = {"recipes": "core"}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def layer_of(module: str) -> str:
    parts = module.split(".")
    if len(parts) == 1:
        return "core"
    name = parts[1]
    if name in TOP:
        return TOP[name]
    if name in DATA_PACKAGES:
        return DATA_PACKAGES[name]
    return name if (ROOT / name).is_dir() else "pipeline"


def imports_of(path: Path, module: str = "") -> List[Tuple[str, int]]:
    """(imported module, line) for every import in the file, at any depth (relative imports resolved
    against ``module``, by default the file's own module name)."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    pkg = (module or module_name(path)).split(".")
    if path.name != "__init__.py":
        pkg = pkg[:-1]
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(a.name, node.lineno) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(pkg[:len(pkg) - node.level + 1] + ([base] if base else []))
            out.append((base, node.lineno))
            out += [(f"{base}.{a.name}", node.lineno) for a in node.names]   # "from edgeflow import x"
    return out


def modules() -> Dict[str, Path]:
    return {module_name(p): p for p in sorted(ROOT.rglob("*.py"))}


def edgeflow_imports() -> Dict[str, List[Tuple[str, int]]]:
    mods = modules()
    graph = {}
    for name, path in mods.items():
        deps = []
        for imp, line in imports_of(path):
            if imp.split(".")[0] != "edgeflow":
                continue
            while imp not in mods and "." in imp:       # "from edgeflow.x import func" -> edgeflow.x
                imp = imp.rsplit(".", 1)[0]
            if imp in mods and imp != name:
                deps.append((imp, line))
        graph[name] = deps
    return graph


def test_every_module_is_in_a_layer():
    unknown = sorted({layer_of(m) for m in modules()} - set(LAYERS))
    assert not unknown, f"modules outside the layer order: {unknown}"


def test_no_upward_import():
    bad = []
    for name, deps in edgeflow_imports().items():
        mine = LAYERS.index(layer_of(name))
        for imp, line in deps:
            if imp == "edgeflow":
                continue
            if LAYERS.index(layer_of(imp)) > mine:
                bad.append(f"{modules()[name].relative_to(ROOT.parent)}:{line} ({layer_of(name)}) imports "
                           f"{imp} ({layer_of(imp)})")
    assert not bad, "upward imports:\n" + "\n".join(sorted(set(bad)))


def test_runtime_never_imports_torch():
    """No module under edgeflow/runtime imports torch, directly or through the edgeflow modules it imports."""
    graph, mods = edgeflow_imports(), modules()
    bad = []
    for name in (m for m in mods if layer_of(m) == "runtime"):
        seen, todo, via = {name}, [name], {name: name}
        while todo:
            cur = todo.pop()
            for imp, line in imports_of(mods[cur]):
                if imp.split(".")[0] == "torch":
                    bad.append(f"{name} imports torch through {via[cur]} ({mods[cur].relative_to(ROOT.parent)}:{line})")
            for dep, _ in graph[cur]:
                if dep not in seen:
                    seen.add(dep)
                    via[dep] = f"{via[cur]} -> {dep}"
                    todo.append(dep)
    assert not bad, "\n".join(sorted(set(bad)))


def _cycles(graph: Dict[str, Set[str]]) -> List[List[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_no_import_cycle():
    graph = {name: {imp for imp, _ in deps if not name.startswith(imp + ".") and imp != "edgeflow"}
             for name, deps in edgeflow_imports().items()}
    cycles = _cycles(graph)
    assert not cycles, "import cycles: " + "; ".join(" <-> ".join(c) for c in cycles)


def test_the_checks_can_fail(tmp_path):
    """The scanner sees function-level and relative imports, the order ranks them, the cycle finder finds one."""
    f = tmp_path / "m.py"
    f.write_text("import numpy\n\ndef f():\n    from edgeflow.pipeline import optimize\n    import torch.nn\n"
                 "    from ..runtime import bundle\n")
    found = [imp for imp, _ in imports_of(f, "edgeflow.export.m")]
    assert "edgeflow.pipeline" in found and "torch.nn" in found and "edgeflow.runtime.bundle" in found
    assert LAYERS.index(layer_of("edgeflow.pipeline")) > LAYERS.index(layer_of("edgeflow.export.m"))
    assert LAYERS.index(layer_of("edgeflow.runtime.bundle")) > LAYERS.index(layer_of("edgeflow.export.m"))
    assert layer_of("edgeflow.bench") == "pipeline" and layer_of("edgeflow.__main__") == "cli"
    assert _cycles({"a": {"b"}, "b": {"a"}, "c": {"a"}}) == [["a", "b"]] and _cycles({"a": {"b"}, "b": set()}) == []


def test_readme_lists_the_layers_in_order():
    """The README's architecture block names every layer, in this test's order."""
    text = (ROOT.parent / "README.md").read_text(encoding="utf-8")
    block = text[text.index("## Architecture"):]
    names = [n if n != "pipeline" else "pipeline.py" for n in LAYERS]
    found = [block.find(f"\nedgeflow/{n} ") for n in names]
    assert -1 not in found, [n for n, i in zip(names, found) if i == -1]
    assert found == sorted(found), "README lists the layers in another order than tests/test_layers.py"
