"""The package's layout is its pipeline: each stage imports only from the stages before it, and nothing imports
itself back (README "Architecture")."""

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "legr"
STAGES = [{"errors", "paths", "hardware", "registry", "progress", "settings"}, {"data", "models"}, {"graph"}, {"engine"},
          {"training"}, {"methods"}, {"reporting"}, {"pipeline"}, {"cli"}]
RANK = {name: i for i, names in enumerate(STAGES) for name in names}


def _imports() -> dict[str, set[str]]:
    """Module -> the legr modules it imports (at module level or inside functions)."""
    out = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE).with_suffix("").parts
        name = ".".join(("legr", *parts)).removesuffix(".__init__")
        found = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("legr"):
                found |= {f"{node.module}.{a.name}" for a in node.names} | {node.module}
            elif isinstance(node, ast.Import):
                found |= {a.name for a in node.names if a.name.startswith("legr")}
        out[name] = found
    return {m: {d for d in deps if d in out and d != m} for m, deps in out.items()}


def _stage(module: str) -> str:
    return module.split(".")[1] if "." in module else ""


def test_every_module_belongs_to_a_stage():
    assert {_stage(m) for m in _imports() if m != "legr"} <= set(RANK) | {"configs"}


def test_no_stage_imports_a_later_stage():
    bad = [f"{m} -> {d}" for m, deps in _imports().items() if m != "legr" for d in deps
           if RANK[_stage(d)] > RANK[_stage(m)]]
    assert not bad, bad


def test_no_import_cycles():
    graph = _imports()
    # a package's __init__ importing its own submodules is how packages re-export; count module -> module edges only
    edges = {m: {d for d in deps if not m.startswith(d + ".") and not d.startswith(m + ".")} for m, deps in graph.items()}
    state: dict[str, int] = {}
    cycle: list[str] = []

    def visit(m: str, path: list[str]) -> None:
        state[m] = 1
        for d in edges[m]:
            if state.get(d) == 1:
                cycle.extend(path[path.index(d):] + [m, d] if d in path else [m, d])
            elif d not in state:
                visit(d, path + [m])
        state[m] = 2

    for m in sorted(edges):
        if m not in state:
            visit(m, [])
    assert not cycle, " -> ".join(cycle)


def test_every_module_reads_in_one_sitting():
    long = {str(p.relative_to(PACKAGE)): n for p in PACKAGE.rglob("*.py") if (n := len(p.read_text().splitlines())) > 350}
    assert not long, long
