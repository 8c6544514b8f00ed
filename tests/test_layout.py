"""The package's layout: one folder per stage, data flowing one way, no import cycles.

Every module of ``nerfcodec_ns`` is read with ``ast`` (nothing is imported): every ``import`` and
``from ... import`` statement counts, wherever it stands (module level, inside functions, under
``if TYPE_CHECKING:``), relative ones included, and ``from nerfcodec_ns.pkg import name`` points at
the submodule ``pkg.name`` when there is one, else at ``pkg`` itself.

Stages (``field -> codec -> scenefile -> decoded run``, the bench on top of them; the nerfstudio
model, the plugin config and the command line at the top)::

    nerfcodec_ns/
      __init__, compat, atomic, malloc, metrics, scene   helpers (atomic, compat, malloc import nothing of the package)
      field/      tri-plane field, sampler, rendering
      codec/      plane codec, backbones, pre-training, rate control
      scenefile/  the .nfc format, export, decode, nerfcodec-decoded dataparser, fuzzing
      bench/      rate-distortion bench, baselines, BD metrics
      model, config, cli, demo                       top
"""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Dict, Iterable, List, NamedTuple, Optional, Sequence, Set, Tuple

import pytest

from conftest import REPO

PACKAGE = "nerfcodec_ns"


class Edge(NamedTuple):
    target: str
    line: int


def module_files(root: Path, package: str = PACKAGE) -> Dict[str, Path]:
    """Module name -> file, for every ``.py`` file of the package (``__init__.py`` is the package)."""
    out = {}
    for path in sorted((root / package).rglob("*.py")):
        parts = list(path.relative_to(root).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def _resolve(current: str, is_package: bool, module: Optional[str], level: int) -> str:
    """The absolute module a ``from`` statement names (PEP 328 relative imports resolved)."""
    if level == 0:
        return module or ""
    base = current.split(".") if is_package else current.split(".")[:-1]
    if level > 1:
        base = base[: len(base) - (level - 1)]
    return ".".join(base + ([module] if module else []))


def imports_of(name: str, path: Path, modules: Iterable[str], package: str = PACKAGE) -> List[Edge]:
    """The package modules that module ``name`` imports, anywhere in its file."""
    known = set(modules)
    is_package = path.name == "__init__.py"
    edges = []

    def add(target: str, line: int) -> None:
        # `import a.b.c` / `from a.b import c` name the deepest existing module
        while target and target not in known:
            target = target.rpartition(".")[0]
        if target == package or target.startswith(package + "."):
            if target != name:
                edges.append(Edge(target, line))

    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name == package or alias.name.startswith(package + "."):
                    add(alias.name, node.lineno)
        elif isinstance(node, ast.ImportFrom):
            base = _resolve(name, is_package, node.module, node.level)
            if not (base == package or base.startswith(package + ".")):
                continue
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                add(sub if sub in known else base, node.lineno)
    return edges


def import_graph(root: Path, package: str = PACKAGE) -> Dict[str, List[Edge]]:
    files = module_files(root, package)
    return {name: imports_of(name, path, files, package) for name, path in files.items()}


def find_cycles(graph: Dict[str, List[Edge]]) -> List[List[str]]:
    """One cycle (``[a, b, ..., a]``) per strongly connected component that has one (Tarjan)."""
    index: Dict[str, int] = {}
    low: Dict[str, int] = {}
    stack: List[str] = []
    on_stack: Set[str] = set()
    components: List[List[str]] = []
    counter = [0]

    def visit(v: str) -> None:  # recursion depth is bounded by the package's size
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for e in graph.get(v, ()):
            w = e.target
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                components.append(comp)

    for v in sorted(graph):
        if v not in index:
            visit(v)

    cycles = []
    for comp in components:
        members = set(comp)
        start = min(comp)
        # breadth-first within the component: the shortest way from start back to start
        paths = {start: [start]}
        queue = [start]
        cycle = None
        while queue and cycle is None:
            v = queue.pop(0)
            for e in sorted(graph.get(v, ()), key=lambda e: e.target):
                if e.target == start:
                    cycle = paths[v] + [start]
                    break
                if e.target in members and e.target not in paths:
                    paths[e.target] = paths[v] + [e.target]
                    queue.append(e.target)
        cycles.append(cycle)
    return cycles


def describe(cycle: Sequence[str], graph: Dict[str, List[Edge]]) -> str:
    steps = []
    for a, b in zip(cycle, cycle[1:]):
        line = min(e.line for e in graph[a] if e.target == b)
        steps.append(f"{a} (line {line}) -> {b}")
    return "; ".join(steps)


GRAPH = import_graph(REPO)


# ----------------------------------------------------------------------------------------------
# The package
# ----------------------------------------------------------------------------------------------


def test_no_import_cycles():
    cycles = find_cycles(GRAPH)
    assert not cycles, "import cycles:\n" + "\n".join(describe(c, GRAPH) for c in cycles)


def _in(module: str, *prefixes: str) -> bool:
    return any(module == f"{PACKAGE}.{p}" or module.startswith(f"{PACKAGE}.{p}.") for p in prefixes)


# (stage or module, what it must not import)
STAGE_RULES = [
    (("field",), ("codec", "scenefile", "bench", "model", "config", "cli", "demo")),
    (("codec",), ("scenefile", "bench", "model", "config", "cli", "demo")),
    (("scenefile",), ("bench", "cli", "demo")),
    (("bench",), ("cli", "demo")),
    (("model",), ("scenefile.export", "scenefile.decode", "bench", "config", "cli", "demo")),
    (("config",), ("bench", "cli", "demo")),
    (("atomic", "compat", "malloc"), ("",)),  # the helpers everything uses import nothing of the package
]


@pytest.mark.parametrize("sources, forbidden", STAGE_RULES, ids=lambda x: ",".join(x) if isinstance(x, tuple) else x)
def test_stage_order(sources, forbidden):
    bad = []
    for module, edges in GRAPH.items():
        if not _in(module, *sources):
            continue
        for e in edges:
            if any(e.target.startswith(PACKAGE + ".") if f == "" else _in(e.target, f) for f in forbidden):
                bad.append(f"{module} (line {e.line}) imports {e.target}")
    assert not bad, "imports against the stage order:\n" + "\n".join(bad)


FORMAT_MODULES = {f"{PACKAGE}.scenefile.{m}" for m in ("header", "payload", "container", "cameras")}


def test_format_modules_import_only_the_format():
    """The torch-free scene-file format builds on nothing but itself and the atomic writer."""
    allowed = FORMAT_MODULES | {f"{PACKAGE}.atomic"}
    bad = [f"{m} (line {e.line}) imports {e.target}" for m in FORMAT_MODULES for e in GRAPH[m]
           if e.target not in allowed]
    assert not bad, "\n".join(bad)


def test_subpackage_inits_import_nothing():
    """``import nerfcodec_ns.scenefile`` etc. load nothing (the format modules stay torch-free); the
    codec's ``__init__`` only re-exports ``CodecConfig`` from the torch-free settings module, the
    name under which run configs written before the split (``config.yml``) refer to it."""
    for package in ("field", "scenefile", "bench"):
        assert GRAPH[f"{PACKAGE}.{package}"] == [], package
    assert [e.target for e in GRAPH[f"{PACKAGE}.codec"]] == [f"{PACKAGE}.codec.settings"]


def _named_modules(path: Path) -> List[Tuple[str, int]]:
    """``(module, line)`` for every absolute import of the package in a file: the ``a.b`` of
    ``import a.b`` and of ``from a.b import c`` (which must be modules; ``c`` may be any name)."""
    out = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out += [(a.name, node.lineno) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            out.append((node.module, node.lineno))
    return [(m, line) for m, line in out if m == PACKAGE or m.startswith(PACKAGE + ".")]


def test_every_import_names_an_existing_module():
    """No import of a module that moved away (the package, its tests, benchmarks and scripts).
    Where the old package is also installed, such an import would silently load the old module."""
    modules = set(module_files(REPO))
    files = [p for d in (PACKAGE, "tests", "benchmarks", "scripts") for p in sorted((REPO / d).rglob("*.py"))]
    bad = [f"{f.relative_to(REPO)}:{line}: {m}" for f in files for m, line in _named_modules(f) if m not in modules]
    assert not bad, "imports of modules that do not exist:\n" + "\n".join(bad)


def test_layout_is_the_documented_one():
    top = {m.rpartition(".")[2] for m in GRAPH if m.count(".") == 1 and m not in
           {f"{PACKAGE}.{p}" for p in ("field", "codec", "scenefile", "bench")}}
    assert top == {"compat", "atomic", "malloc", "metrics", "scene", "model", "config", "cli", "demo"}
    assert (REPO / PACKAGE / "codec" / "weights" / "backbone.pt").is_file()


# ----------------------------------------------------------------------------------------------
# The checker itself, on a made-up package
# ----------------------------------------------------------------------------------------------


def _fake_package(root: Path, files: Dict[str, str]) -> Dict[str, List[Edge]]:
    for rel, text in files.items():
        path = root / PACKAGE / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return import_graph(root)


def test_checker_resolves_every_import_form(tmp_path):
    graph = _fake_package(tmp_path, {
        "__init__.py": "",
        "top.py": "import nerfcodec_ns.stage.a\nfrom nerfcodec_ns import helper as h\n",
        "helper.py": "import os\n",
        "stage/__init__.py": "from . import a\n",
        "stage/a.py": "from .b import thing\nfrom .. import helper\n",
        "stage/b.py": ("def f():\n    from nerfcodec_ns.stage import c, thing_in_init\n"
                       "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from ..top import x\n"),
        "stage/c.py": "import nerfcodec_ns\n",
    })
    targets = {m: sorted(e.target for e in edges) for m, edges in graph.items()}
    p = PACKAGE
    assert targets == {
        p: [],
        f"{p}.top": [f"{p}.helper", f"{p}.stage.a"],
        f"{p}.helper": [],
        f"{p}.stage": [f"{p}.stage.a"],
        f"{p}.stage.a": [f"{p}.helper", f"{p}.stage.b"],
        f"{p}.stage.b": [f"{p}.stage", f"{p}.stage.c", f"{p}.top"],
        f"{p}.stage.c": [p],
    }


def test_checker_reports_a_cycle_through_a_function_level_import(tmp_path):
    graph = _fake_package(tmp_path, {
        "__init__.py": "",
        "cli.py": "from nerfcodec_ns.demo import run\nclass UserError(Exception): pass\n",
        "demo.py": "def run():\n    from nerfcodec_ns.cli import UserError\n",
        "ok.py": "from nerfcodec_ns import cli\n",
    })
    cycles = find_cycles(graph)
    assert cycles == [[f"{PACKAGE}.cli", f"{PACKAGE}.demo", f"{PACKAGE}.cli"]]
    assert describe(cycles[0], graph) == (f"{PACKAGE}.cli (line 1) -> {PACKAGE}.demo; "
                                          f"{PACKAGE}.demo (line 2) -> {PACKAGE}.cli")

