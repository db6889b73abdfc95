"""The package's import rules, read from the source with ``ast`` (no module is imported).

The layout is a one-way house (README, "Layout"): ground floor (config, engines, io, errors)
→ data → prep → stream → train → evaluation → flows → cli. Each rule below is one function that
returns its violations, so a test can also plant a bad import and see the rule catch it.
"""
from __future__ import annotations

import ast
import os
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "pipeline"

# Third-party modules heavy enough that importing them inside a function (to keep start-up and
# `imbalance --help` fast, or to keep a plain process free of them) is worth the exception.
HEAVY = {"torch", "pyspark", "ray", "matplotlib", "mlflow", "petastorm", "scipy", "sklearn", "pandas",
         "pyarrow", "PIL"}
# What the per-worker training loop may import, transitively: no engines, no flows, no evaluation.
WORKER_ROOTS = ("pipeline.train.loop", "pipeline.train.losses", "pipeline.train.models",
                "pipeline.train.methods", "pipeline.train.hooks")


@dataclass(frozen=True)
class Import:
    source: str        # importing module, dotted
    target: str        # imported module, dotted (pipeline.* resolved to a module, not a name)
    line: int
    in_function: bool
    commented: bool    # a comment on the line or on the line just above the import block


def module_name(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def package_modules(files: dict[str, str] | None = None) -> dict[str, str]:
    """module name → source text, for every file under pipeline/ (or the given mapping)."""
    if files is not None:
        return files
    return {module_name(p): p.read_text() for p in sorted(PACKAGE.rglob("*.py"))}


def _resolve(target: str, names: list[str], modules: set[str]) -> list[str]:
    """``from pipeline.x import y``: y is a module when pipeline.x.y is one, else a name in pipeline.x."""
    out = []
    for n in names:
        full = f"{target}.{n}"
        out.append(full if full in modules else target)
    return out or [target]


def _absolute(module: str, is_package: bool, level: int, target: str | None) -> str:
    base = module.split(".")
    if not is_package:
        base = base[:-1]
    if level > 1:
        base = base[: len(base) - (level - 1)]
    return ".".join(base + ([target] if target else []))


def imports_of(modules: dict[str, str], packages: set[str] | None = None) -> list[Import]:
    names = set(modules)
    packages = packages if packages is not None else {m for m in names if (PACKAGE.parent / m.replace(".", os.sep) / "__init__.py").exists()}
    found: list[Import] = []
    for mod, text in modules.items():
        lines = text.splitlines()
        tree = ast.parse(text)
        func_nodes = set()
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                for sub in ast.walk(node):
                    if sub is not node:
                        func_nodes.add(id(sub))
        type_checking = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
                for sub in ast.walk(node):
                    type_checking.add(id(sub))
        for node in ast.walk(tree):
            if id(node) in type_checking:
                continue
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = _absolute(mod, mod in packages, node.level, node.module)
                else:
                    base = node.module or ""
                targets = _resolve(base, [a.name for a in node.names], names) if base.startswith("pipeline") else [base]
            else:
                continue
            ln = node.lineno
            k = ln - 1                      # 0-based index of the import's line
            while k > 0 and lines[k - 1].strip().startswith(("from ", "import ")):
                k -= 1                      # the first line of a block of consecutive imports
            block = lines[k:node.end_lineno]
            commented = any("#" in b for b in block) or (k > 0 and lines[k - 1].strip().startswith("#"))
            for t in targets:
                found.append(Import(mod, t, ln, id(node) in func_nodes, commented))
    return found


def graph(imports: list[Import], modules: set[str]) -> dict[str, set[str]]:
    g: dict[str, set[str]] = {m: set() for m in modules}
    for imp in imports:
        if imp.target in modules and imp.target != imp.source:
            g[imp.source].add(imp.target)
    return g


def cycles(g: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on, out = {}, {}, [], set(), []
    counter = [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in sorted(g[v]):
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

    for v in sorted(g):
        if v not in index:
            visit(v)
    return out


def closure(g: dict[str, set[str]], roots) -> set[str]:
    seen, todo = set(), list(roots)
    while todo:
        m = todo.pop()
        if m in seen:
            continue
        seen.add(m)
        todo.extend(g.get(m, ()))
    return seen


def _under(mod: str, pkg: str) -> bool:
    return mod == pkg or mod.startswith(pkg + ".")


FORBIDDEN = [  # (importer package, imported package)
    ("pipeline.train", "pipeline.flows"), ("pipeline.train", "pipeline.evaluation"), ("pipeline.train", "pipeline.cli"),
    ("pipeline.evaluation", "pipeline.train"), ("pipeline.evaluation", "pipeline.flows"),
    ("pipeline.prep", "pipeline.train"), ("pipeline.prep", "pipeline.stream"), ("pipeline.prep", "pipeline.flows"),
    ("pipeline.prep", "pipeline.evaluation"),
    ("pipeline.data", "pipeline.train"), ("pipeline.data", "pipeline.stream"), ("pipeline.data", "pipeline.flows"),
    ("pipeline.data", "pipeline.prep"), ("pipeline.data", "pipeline.evaluation"),
    ("pipeline.stream", "pipeline.train"), ("pipeline.stream", "pipeline.flows"), ("pipeline.stream", "pipeline.evaluation"),
]
GROUND = ("pipeline.config", "pipeline.engines", "pipeline.io", "pipeline.errors")


def violations(modules: dict[str, str] | None = None, packages: set[str] | None = None) -> list[str]:
    modules = package_modules(modules)
    names = set(modules)
    imps = imports_of(modules, packages)
    g = graph(imps, names)
    bad: list[str] = []
    for comp in cycles(g):
        bad.append("import circle: " + " -> ".join(comp))
    for imp in imps:
        if not imp.target.startswith("pipeline") or imp.target not in names:
            continue
        for src_pkg, dst_pkg in FORBIDDEN:
            if _under(imp.source, src_pkg) and _under(imp.target, dst_pkg):
                bad.append(f"{imp.source}:{imp.line} imports {imp.target} ({src_pkg} must not import {dst_pkg})")
        if imp.target == "pipeline.cli" or imp.target.startswith("jobs"):
            bad.append(f"{imp.source}:{imp.line} imports {imp.target} (nothing in the library imports the CLI or jobs/)")
        if imp.source in GROUND and imp.target not in GROUND:
            bad.append(f"{imp.source}:{imp.line} imports {imp.target} (the ground floor imports only the ground floor)")
    worker = closure(g, [r for r in WORKER_ROOTS if r in names])
    if "pipeline.engines" in worker:
        bad.append("the per-worker loop reaches pipeline.engines through: "
                   + ", ".join(sorted(m for m in worker if "pipeline.engines" in g[m])))
    for m in sorted(worker):
        for dst in ("pipeline.flows", "pipeline.evaluation", "pipeline.cli"):
            if _under(m, dst):
                bad.append(f"the per-worker loop reaches {m}")
    # an import inside a function only defers something heavy, and says so
    heavy_top = {}
    top_graph = graph([i for i in imps if not i.in_function], names)
    for m in names:
        reach = closure(top_graph, [m])
        heavy_top[m] = any(i.target.split(".")[0] in HEAVY for i in imps if i.source in reach and not i.in_function)
    for imp in imps:
        if not imp.in_function:
            continue
        root = imp.target.split(".")[0]
        if root == "pipeline":
            if imp.target in names and not heavy_top.get(imp.target, False):
                bad.append(f"{imp.source}:{imp.line} imports {imp.target} inside a function, but it defers nothing heavy")
        elif root not in HEAVY:
            bad.append(f"{imp.source}:{imp.line} imports {imp.target} inside a function (not a heavy dependency)")
        if not imp.commented:
            bad.append(f"{imp.source}:{imp.line} imports {imp.target} inside a function without a comment saying why")
    # private helpers stay in their module
    for mod, text in modules.items():
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("pipeline") or (
                    isinstance(node, ast.ImportFrom) and node.level):
                for a in node.names:
                    if a.name.startswith("_") and not a.name.startswith("__"):
                        bad.append(f"{mod}:{node.lineno} imports the private name {a.name} from {node.module}")
    return bad


def test_pipeline_keeps_its_import_rules():
    bad = violations()
    assert not bad, "\n".join(bad)


def test_every_stage_package_exists():
    for pkg in ("data", "prep", "stream", "train", "evaluation", "flows"):
        assert (PACKAGE / pkg / "__init__.py").exists(), pkg


# The rules must be able to fail: plant each kind of bad import in a copy of the real sources.
PLANTS = {
    "circle": ("pipeline.prep.keys", "from pipeline.prep.split import split_dataset\n", "import circle"),
    "train->flows": ("pipeline.train.losses", "from pipeline.flows.run import run_pipeline\n", "must not import pipeline.flows"),
    "evaluation->train": ("pipeline.evaluation.metrics", "from pipeline.train.models import build_model\n", "must not import pipeline.train"),
    "loop->engines": ("pipeline.train.models", "from pipeline.engines import get_spark\n", "reaches pipeline.engines"),
    "cli": ("pipeline.flows.run", "import pipeline.cli\n", "imports the CLI"),
    "prep->stream": ("pipeline.prep.sampling", "from pipeline.stream.readers import make_loader\n", "must not import pipeline.stream"),
    "private": ("pipeline.flows.run", "from pipeline.io import _private_helper\n", "private name"),
    "dodge": ("pipeline.flows.run", "def f():\n    from pipeline.errors import InputError  # planted\n    return InputError\n", "defers nothing heavy"),
    "uncommented": ("pipeline.flows.run", "def g():\n    import torch\n    return torch\n", "without a comment"),
}


@pytest.mark.parametrize("name", sorted(PLANTS))
def test_a_planted_bad_import_is_caught(name):
    modules = package_modules()
    target, code, expected = PLANTS[name]
    modules = dict(modules)
    modules[target] = modules[target] + "\n\n" + code
    bad = violations(modules)
    assert any(expected in b for b in bad), (name, bad)
