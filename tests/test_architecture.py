"""The package's layout is its pipeline: each stage imports only from the stages before it, and nothing imports
itself back (README "Architecture")."""

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "legr"
STAGES = [{"errors", "paths", "hardware", "registry", "progress", "settings"}, {"data", "models"}, {"graph"}, {"engine"},
          {"training"}, {"methods"}, {"reporting"}, {"pipeline"},
          {"cli", "cli_options", "cli_stream", "__main__"}]
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




def test_methods_import_nothing_from_the_pipeline():
    bad = [f"{m} -> {d}" for m, deps in _imports().items() if _stage(m) == "methods" for d in deps
           if _stage(d) in ("pipeline", "cli", "reporting")]
    assert not bad, bad


def test_a_method_folder_imports_no_other_methods_folder():
    """A method is one folder (methods/<name>/): it uses the shared interface (base, folders, stages), never another
    method's code."""
    def folder(module: str) -> str | None:
        parts = module.split(".")
        return parts[2] if len(parts) > 3 and parts[1] == "methods" else None  # legr.methods.<folder>.<module>

    bad = [f"{m} -> {d}" for m, deps in _imports().items() if folder(m) for d in deps
           if folder(d) and folder(d) != folder(m)]
    assert not bad, bad


def test_the_pipeline_imports_no_specific_method():
    """Above methods/, only the shared interface is imported (a method is reached through the METHODS registry)."""
    generic = {"legr.methods", "legr.methods.base", "legr.methods.folders", "legr.methods.stages"}
    found = {m: sorted(d for d in deps if _stage(d) == "methods" and d not in generic)
             for m, deps in _imports().items() if _stage(m) in ("pipeline", "cli", "reporting")}
    assert not {m: d for m, d in found.items() if d}, found


def test_the_import_paths_the_readme_documented_before_the_filters_package_still_work():
    import importlib

    for old, new in [("allocate", "filters.allocate"), ("criteria", "filters.criteria"), ("legr", "filters.legr"),
                     ("legr.ranking", "filters.legr.ranking"), ("legr.fitness", "filters.legr.fitness")]:
        assert importlib.import_module(f"legr.methods.{old}") is importlib.import_module(f"legr.methods.{new}")
