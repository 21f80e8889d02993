"""The package's import structure: no import circles, and imports that follow the layer order.

The imports of every ``smoothseg/**/*.py`` file are read with :mod:`ast` (no smoothseg module is imported), including
function-local imports, imports under ``if TYPE_CHECKING:`` and ``importlib.import_module`` calls (with literal module
names, e.g. a PEP 562 lazy-export table), so that none of them can hide a dependency. Three things are checked:

* no import circle between files (modules) of smoothseg;
* no import circle between units: the sub-packages ``smoothseg/<name>/`` and top-level modules ``smoothseg/<name>.py``
  (and ``smoothseg`` itself for ``smoothseg/__init__.py``);
* every import goes to the importer's own layer group or to a group listed above it in :data:`LAYERS`.

The layer order is the one of ``../shared/DESIGN.md`` §2 (package layout). A new unit must be added to both.
"""

from __future__ import annotations

import ast
from collections import defaultdict, deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

PACKAGE_ROOT = Path(__file__).resolve().parents[1] / "smoothseg"

#: Top = lowest layer. A unit may import only from its own group or from groups listed above it.
LAYERS: list[list[str]] = [
    ["smoothseg", "paths", "errors", "atomic", "logging_setup", "parallel"],  # "smoothseg" = smoothseg/__init__.py
    ["device"],
    ["labels"],
    ["dataset"],
    ["masks"],
    ["network"],
    ["planning"],
    ["preprocessing"],
    ["knowledge"],
    ["models"],
    ["training"],
    ["inference"],
    ["evaluation"],
    ["synthetic"],
    ["workflows"],
    ["serve"],
    ["cli"],
]

LAYER_INDEX: dict[str, int] = {unit: i for i, group in enumerate(LAYERS) for unit in group}

_DYNAMIC_IMPORTERS = {"import_module", "__import__"}


@dataclass(frozen=True)
class Edge:
    """One import: ``path:line`` (module ``importer``) imports module ``imported``."""

    importer: str
    path: str
    line: int
    imported: str

    @property
    def site(self) -> str:
        return f"{self.path}:{self.line}"


# --------------------------------------------------------------------------------------------------------------------
# Reading the imports


def module_name(file: Path, root: Path) -> str:
    """``<root>/inference/cascade.py`` -> ``smoothseg.inference.cascade``; ``<root>/inference/__init__.py`` ->
    ``smoothseg.inference``."""
    parts = [root.name, *file.relative_to(root).with_suffix("").parts]
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def unit_of(module: str) -> str:
    """The top-level unit of a module: ``smoothseg.inference.cascade`` -> ``inference``; ``smoothseg`` -> itself."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else parts[0]


def discover_modules(root: Path) -> dict[str, Path]:
    """All modules of the package under ``root``, by dotted name."""
    return {module_name(f, root): f for f in sorted(root.rglob("*.py")) if "__pycache__" not in f.parts}


def _in_package(name: str, package: str) -> bool:
    return name == package or name.startswith(package + ".")


def _current_package(module: str, file: Path) -> str:
    """The package that relative imports in ``file`` are resolved against."""
    return module if file.name == "__init__.py" else module.rpartition(".")[0]


def _calls_dynamic_import(tree: ast.AST) -> bool:
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else None
            if name in _DYNAMIC_IMPORTERS:
                return True
    return False


def imports_of_file(file: Path, root: Path, modules: Mapping[str, Path]) -> list[Edge]:
    """Every import of a package module in one file, wherever it appears in the file."""
    package = root.name
    importer = module_name(file, root)
    rel_path = file.relative_to(root.parent).as_posix()
    tree = ast.parse(file.read_text(encoding="utf-8"), filename=str(file))
    targets: list[tuple[int, str]] = []

    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                targets.append((node.lineno, alias.name))
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base_parts = _current_package(importer, file).split(".")
                if node.level - 1 >= len(base_parts):
                    continue  # beyond the top-level package: not ours
                base = ".".join(base_parts[: len(base_parts) - (node.level - 1)])
                if node.module:
                    base = f"{base}.{node.module}"
            else:
                base = node.module or ""
            for alias in node.names:
                submodule = f"{base}.{alias.name}"
                # ``from smoothseg.x import y`` depends on the module smoothseg/x/y.py where there is one, else on
                # smoothseg/x.py or smoothseg/x/__init__.py. A name that is no module file is kept as it is (dangling).
                targets.append((node.lineno, submodule if alias.name != "*" and submodule in modules else base))

    if _calls_dynamic_import(tree):
        # ``importlib.import_module("smoothseg.x")`` or a lazy-export table of module names: a literal string that
        # names a module of the package is a dependency on that module.
        for node in ast.walk(tree):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value in modules:
                targets.append((node.lineno, node.value))

    return [Edge(importer, rel_path, line, name) for line, name in targets if _in_package(name, package)]


def collect_imports(root: Path) -> list[Edge]:
    """All imports between modules of the package rooted at ``root`` (the folder holding its ``__init__.py``)."""
    modules = discover_modules(root)
    edges: set[Edge] = set()
    for file in modules.values():
        edges.update(imports_of_file(file, root, modules))
    return sorted(edges, key=lambda e: (e.path, e.line, e.imported))


# --------------------------------------------------------------------------------------------------------------------
# Graphs and circles


def file_graph(edges: Iterable[Edge]) -> dict[str, set[str]]:
    graph: dict[str, set[str]] = defaultdict(set)
    for e in edges:
        if e.importer != e.imported:
            graph[e.importer].add(e.imported)
    return dict(graph)


def unit_graph(edges: Iterable[Edge]) -> dict[str, set[str]]:
    graph: dict[str, set[str]] = defaultdict(set)
    for e in edges:
        a, b = unit_of(e.importer), unit_of(e.imported)
        if a != b:
            graph[a].add(b)
    return dict(graph)


def find_cycles(graph: Mapping[str, Iterable[str]]) -> list[list[str]]:
    """The import circles of ``graph``: its strongly connected components of more than one node (Tarjan's algorithm,
    iterative). Self-loops are ignored. Each circle is sorted; the list is sorted."""
    succ: dict[str, list[str]] = defaultdict(list)
    for node, targets in graph.items():
        succ[node].extend(sorted(t for t in set(targets) if t != node))
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    components: list[list[str]] = []
    counter = 0

    for start in sorted(set(succ) | {t for ts in succ.values() for t in ts}):
        if start in index:
            continue
        work: list[tuple[str, int]] = [(start, 0)]
        while work:
            node, i = work.pop()
            if i == 0:
                index[node] = low[node] = counter
                counter += 1
                stack.append(node)
                on_stack.add(node)
            children = succ.get(node, [])
            if i < len(children):
                work.append((node, i + 1))
                child = children[i]
                if child not in index:
                    work.append((child, 0))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    components.append(sorted(component))
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
    return sorted(components)


def shortest_cycle(graph: Mapping[str, Iterable[str]], members: Iterable[str]) -> list[str]:
    """One shortest circle through the first member of a strongly connected component, as ``[a, b, ..., a]``."""
    inside = set(members)
    start = min(inside)
    parent: dict[str, str] = {}
    queue = deque([start])
    seen = {start}
    while queue:
        node = queue.popleft()
        for nxt in sorted(graph.get(node, ())):
            if nxt not in inside or nxt == node:
                continue
            if nxt == start:
                path = [node]
                while path[-1] != start:
                    path.append(parent[path[-1]])
                return [*reversed(path), start]
            if nxt not in seen:
                seen.add(nxt)
                parent[nxt] = node
                queue.append(nxt)
    raise AssertionError(f"{sorted(inside)} is not strongly connected")


def describe_file_cycles(edges: list[Edge]) -> list[str]:
    graph = file_graph(edges)
    lines = []
    for members in find_cycles(graph):
        inside = set(members)
        lines.append(f"circle of {len(members)} modules: {' -> '.join(shortest_cycle(graph, members))}")
        lines.extend(
            f"    {e.site} imports {e.imported}"
            for e in edges
            if e.importer in inside and e.imported in inside and e.importer != e.imported
        )
    return lines


def describe_unit_cycles(edges: list[Edge]) -> list[str]:
    graph = unit_graph(edges)
    lines = []
    for members in find_cycles(graph):
        inside = set(members)
        lines.append(f"circle of {len(members)} packages: {' -> '.join(shortest_cycle(graph, members))}")
        sites: dict[tuple[str, str], list[str]] = defaultdict(list)
        for e in edges:
            a, b = unit_of(e.importer), unit_of(e.imported)
            if a != b and a in inside and b in inside:
                sites[a, b].append(f"{e.site} ({e.imported})")
        lines.extend(f"    {a} -> {b}: {', '.join(s)}" for (a, b), s in sorted(sites.items()))
    return lines


# --------------------------------------------------------------------------------------------------------------------
# Layers


def layer_violations(edges: Iterable[Edge]) -> list[str]:
    """One line per import of a unit from a lower layer than the importer's. Units missing from :data:`LAYERS` are
    left to :func:`unknown_units`."""
    offences = []
    for e in edges:
        src, dst = unit_of(e.importer), unit_of(e.imported)
        if src in LAYER_INDEX and dst in LAYER_INDEX and LAYER_INDEX[dst] > LAYER_INDEX[src]:
            offences.append(f"{e.site} imports {e.imported} (layer '{dst}' is below '{src}')")
    return offences


def unknown_units(root: Path) -> list[str]:
    where: dict[str, str] = {}
    for module, file in discover_modules(root).items():
        unit = unit_of(module)
        if unit not in LAYER_INDEX:
            top = file.relative_to(root).parts[0]
            where[unit] = f"{root.name}/{top}" + ("/" if top != file.name else "")
    return [f"unit '{u}' ({where[u]}) is in no layer: add it to LAYERS and to DESIGN.md §2" for u in sorted(where)]


def dangling_imports(edges: Iterable[Edge], root: Path) -> list[str]:
    """One line per import of a package module that has no file (e.g. left behind by a move)."""
    modules = discover_modules(root)
    return [
        f"{e.site} imports {e.imported}, which is no module of the package" for e in edges if e.imported not in modules
    ]


def _report(title: str, offences: list[str]) -> str:
    return f"{title}:\n" + "\n".join(offences)


# --------------------------------------------------------------------------------------------------------------------
# The checks on the real package


def test_no_import_circles_between_files() -> None:
    offences = describe_file_cycles(collect_imports(PACKAGE_ROOT))
    assert not offences, _report("import circles between modules", offences)


def test_no_import_circles_between_packages() -> None:
    offences = describe_unit_cycles(collect_imports(PACKAGE_ROOT))
    assert not offences, _report("import circles between packages (see ../shared/DESIGN.md §2)", offences)


def test_imports_follow_the_layer_order() -> None:
    offences = layer_violations(collect_imports(PACKAGE_ROOT))
    assert not offences, _report("imports against the layer order (see ../shared/DESIGN.md §2)", offences)


def test_every_unit_is_in_a_layer() -> None:
    offences = unknown_units(PACKAGE_ROOT)
    assert not offences, _report("units missing from LAYERS", offences)


def test_every_imported_module_exists() -> None:
    offences = dangling_imports(collect_imports(PACKAGE_ROOT), PACKAGE_ROOT)
    assert not offences, _report("imports of modules that do not exist", offences)


# --------------------------------------------------------------------------------------------------------------------
# Self-tests of the checker on tiny fake packages


def _make_package(tmp_path: Path, files: dict[str, str]) -> Path:
    root = tmp_path / "smoothseg"
    for rel, text in {"__init__.py": '__version__ = "0"\n', **files}.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    return root


def test_checker_finds_a_circle_hidden_in_a_function(tmp_path: Path) -> None:
    root = _make_package(
        tmp_path,
        {
            "inference/__init__.py": "",
            "inference/cascade.py": "from smoothseg.training.trainer import train\n",
            "training/__init__.py": "",
            "training/trainer.py": "def train():\n    from smoothseg.inference import cascade\n    return cascade\n",
        },
    )
    edges = collect_imports(root)
    local = Edge("smoothseg.training.trainer", "smoothseg/training/trainer.py", 2, "smoothseg.inference.cascade")
    assert local in edges
    assert find_cycles(file_graph(edges)) == [["smoothseg.inference.cascade", "smoothseg.training.trainer"]]
    assert find_cycles(unit_graph(edges)) == [["inference", "training"]]
    assert describe_file_cycles(edges)[0].startswith("circle of 2 modules: smoothseg.inference.cascade -> ")
    assert layer_violations(edges) == [
        "smoothseg/training/trainer.py:2 imports smoothseg.inference.cascade (layer 'inference' is below 'training')"
    ]


def test_checker_finds_a_submodule_importing_its_own_package(tmp_path: Path) -> None:
    root = _make_package(
        tmp_path,
        {
            "inference/__init__.py": "from .cascade import Predictor\n",
            "inference/cascade.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n"
            "    from smoothseg.inference import Other\nclass Predictor: ...\n",
        },
    )
    edges = collect_imports(root)
    assert find_cycles(file_graph(edges)) == [["smoothseg.inference", "smoothseg.inference.cascade"]]
    assert find_cycles(unit_graph(edges)) == []  # one unit: no circle between packages


def test_checker_finds_a_circle_between_packages_only(tmp_path: Path) -> None:
    root = _make_package(
        tmp_path,
        {
            "planning/__init__.py": "",
            "planning/planner.py": "from ..preprocessing.resampling import resample\n",
            "planning/plans.py": "",
            "preprocessing/__init__.py": "",
            "preprocessing/resampling.py": "def resample(): ...\n",
            "preprocessing/preprocessor.py": "from smoothseg.planning import plans\n",
        },
    )
    edges = collect_imports(root)
    assert find_cycles(file_graph(edges)) == []
    assert find_cycles(unit_graph(edges)) == [["planning", "preprocessing"]]
    assert layer_violations(edges) == [
        "smoothseg/planning/planner.py:1 imports smoothseg.preprocessing.resampling "
        "(layer 'preprocessing' is below 'planning')"
    ]


def test_checker_resolves_every_import_form(tmp_path: Path) -> None:
    root = _make_package(
        tmp_path,
        {
            "paths.py": "import os\nimport smoothseg.cli.main\n",
            "errors.py": "from smoothseg import __version__\nfrom smoothseg import paths\n",
            "cli/__init__.py": "from . import main\nfrom .main import run\nfrom smoothseg.cli.main import *\n",
            "cli/main.py": "import importlib\n\ndef run():\n    return importlib.import_module('smoothseg.errors')\n",
            "dataset/__init__.py": "",
            "dataset/io.py": "from .. import errors\nfrom smoothseg.dataset import io as self_import\n"
            "from .gone import thing\nimport smoothseg.paths.nothing\n",
        },
    )
    found = {(e.path, e.line, e.imported) for e in collect_imports(root)}
    assert found == {
        ("smoothseg/paths.py", 2, "smoothseg.cli.main"),
        ("smoothseg/errors.py", 1, "smoothseg"),
        ("smoothseg/errors.py", 2, "smoothseg.paths"),
        ("smoothseg/cli/__init__.py", 1, "smoothseg.cli.main"),
        ("smoothseg/cli/__init__.py", 2, "smoothseg.cli.main"),
        ("smoothseg/cli/__init__.py", 3, "smoothseg.cli.main"),
        ("smoothseg/cli/main.py", 4, "smoothseg.errors"),
        ("smoothseg/dataset/io.py", 1, "smoothseg.errors"),
        ("smoothseg/dataset/io.py", 2, "smoothseg.dataset.io"),
        ("smoothseg/dataset/io.py", 3, "smoothseg.dataset.gone"),
        ("smoothseg/dataset/io.py", 4, "smoothseg.paths.nothing"),
    }
    edges = collect_imports(root)
    assert find_cycles(file_graph(edges)) == [["smoothseg.cli.main", "smoothseg.errors", "smoothseg.paths"]]
    assert layer_violations(edges) == ["smoothseg/paths.py:2 imports smoothseg.cli.main (layer 'cli' is below 'paths')"]
    assert dangling_imports(edges, root) == [
        "smoothseg/dataset/io.py:3 imports smoothseg.dataset.gone, which is no module of the package",
        "smoothseg/dataset/io.py:4 imports smoothseg.paths.nothing, which is no module of the package",
    ]


def test_checker_passes_a_clean_package_and_flags_unknown_units(tmp_path: Path) -> None:
    root = _make_package(
        tmp_path,
        {
            "paths.py": "from smoothseg import __version__\n",
            "dataset/__init__.py": "from .io import read\n",
            "dataset/io.py": "from smoothseg.paths import home\ndef read(): ...\n",
            "cli/__init__.py": "",
            "cli/predict.py": "from smoothseg.dataset import read\n",
            "demo.py": "",
        },
    )
    edges = collect_imports(root)
    assert find_cycles(file_graph(edges)) == []
    assert find_cycles(unit_graph(edges)) == []
    assert layer_violations(edges) == []
    assert dangling_imports(edges, root) == []
    assert unknown_units(root) == [
        "unit 'demo' (smoothseg/demo.py) is in no layer: add it to LAYERS and to DESIGN.md §2"
    ]


def test_find_cycles_ignores_self_loops_and_finds_every_component() -> None:
    graph = {"a": {"a", "b"}, "b": {"c"}, "c": {"a"}, "d": {"e"}, "e": {"d"}, "f": {"f"}, "g": {"a"}}
    assert find_cycles(graph) == [["a", "b", "c"], ["d", "e"]]
    assert shortest_cycle(graph, ["a", "b", "c"]) == ["a", "b", "c", "a"]
