"""The package's import graph, read from the source with `ast`: no circles, `model/` never imports `data/`,
nothing but `__main__` imports the CLI (DESIGN.md, "Layout").

Every import statement counts, module-level or inside a function (a local import is still a dependency,
only a later one), in all its forms: `import batman.x`, `from batman.x import y` (an edge to batman.x.y
where that is a module, else to batman.x) and relative imports. A package's `__init__` that Python runs
on the way to one of its modules is not an edge: only what a module names is.
"""
from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "batman"


def module_names(root: Path) -> dict[str, tuple[Path, bool]]:
    """Dotted name -> (file, is a package's __init__) of every module under the package folder `root`."""
    modules = {}
    for path in sorted(root.rglob("*.py")):
        parts = list(path.relative_to(root.parent).with_suffix("").parts)
        is_package = parts[-1] == "__init__"
        modules[".".join(parts[:-1] if is_package else parts)] = (path, is_package)
    return modules


def imports_of(name: str, path: Path, is_package: bool, modules: dict) -> set[str]:
    """The modules of the package that module `name` imports, anywhere in its file."""
    here = name.split(".") if is_package else name.split(".")[:-1]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: level 1 is this module's package, each further level one up
                base = here[:len(here) - (node.level - 1)]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module or ""
            for alias in node.names:
                submodule = f"{source}.{alias.name}"
                found.add(submodule if submodule in modules else source)
    return {m for m in found if m in modules and m != name}


def import_graph(root: Path = PACKAGE) -> dict[str, set[str]]:
    modules = module_names(root)
    return {name: imports_of(name, path, is_package, modules) for name, (path, is_package) in modules.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import circle as [a, b, ..., a], or None when the graph has none (depth-first search)."""
    state: dict[str, str] = {}  # "open" while on the current path, "done" once fully explored
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = "open"
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == "open":
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        path.pop()
        state[node] = "done"
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def crossings(graph: dict[str, set[str]], lower: str, upper: str) -> list[str]:
    """'a -> b' for every module a in package `lower` that imports a module b of package `upper`."""
    inside = lambda name, package: name == package or name.startswith(package + ".")  # noqa: E731
    return sorted(f"{a} -> {b}" for a, deps in graph.items() if inside(a, lower) for b in deps if inside(b, upper))


# --- the package ----------------------------------------------------------------------------------

def test_the_package_has_no_import_circle():
    cycle = find_cycle(import_graph())
    assert cycle is None, "import circle: " + " -> ".join(cycle)


def test_model_never_imports_data():
    assert crossings(import_graph(), "batman.model", "batman.data") == []


def test_only_main_imports_the_cli():
    graph = import_graph()
    assert sorted(a for a, deps in graph.items() if "batman.cli" in deps) == ["batman.__main__"]


def test_the_graph_covers_the_package():
    graph = import_graph()
    assert {"batman.cli", "batman.isp", "batman.infer", "batman.baselines", "batman.data.raw",
            "batman.model.net", "batman.bench", "batman.bench.quality"} <= set(graph)
    assert {"batman.data.drv", "batman.data.raw"} <= graph["batman.data.cache"]  # the one-way data chain
    assert "batman.data.cache" not in graph["batman.data.drv"]


# --- the checks themselves can fail ----------------------------------------------------------------

def test_find_cycle_reports_a_planted_circle():
    acyclic = {"a": {"b", "c"}, "b": {"c"}, "c": set(), "d": {"a"}}
    assert find_cycle(acyclic) is None
    planted = {**acyclic, "c": {"d"}}  # c -> d -> a -> (b ->) c
    cycle = find_cycle(planted)
    assert cycle[0] == cycle[-1] and {"a", "c", "d"} <= set(cycle)
    assert all(b in planted[a] for a, b in zip(cycle, cycle[1:]))  # every step an import of the graph
    assert find_cycle({"a": {"a"}}) == ["a", "a"]


def test_crossings_reports_an_upward_import():
    graph = {"batman.model.net": {"batman.isp", "batman.data.isp"}, "batman.data.raw": {"batman.model"},
             "batman.modelling": {"batman.data"}}
    assert crossings(graph, "batman.model", "batman.data") == ["batman.model.net -> batman.data.isp"]


def test_the_reader_sees_every_form_of_import(tmp_path):
    """A small package with each import form; plain circles through each of them are found."""
    pkg = tmp_path / "batman"
    (pkg / "sub").mkdir(parents=True)
    files = {
        "__init__.py": "",
        "a.py": "import os\nimport batman.b\n",
        "b.py": "from batman.sub import c\n",                # an edge to the module batman.sub.c
        "sub/__init__.py": "from . import c\n",
        "sub/c.py": "def f():\n    from ..d import thing\n",  # relative, two levels, inside a function
        "d.py": "from batman.sub.c import f as thing\nfrom batman import a\n",
    }
    for name, text in files.items():
        (pkg / name).write_text(text)
    graph = import_graph(pkg)
    assert graph == {"batman": set(), "batman.a": {"batman.b"}, "batman.b": {"batman.sub.c"},
                     "batman.sub": {"batman.sub.c"}, "batman.sub.c": {"batman.d"},
                     "batman.d": {"batman.sub.c", "batman.a"}}
    cycle = find_cycle(graph)
    assert {"batman.sub.c", "batman.d"} <= set(cycle) and all(b in graph[a] for a, b in zip(cycle, cycle[1:]))
