"""The architecture as rules the code must keep (see docs/architecture.md).

Every module of ``mnic_ops/`` is parsed (nothing is imported) and checked for:

- imports that go up a layer (core < changes < facts < engines < capabilities < cli),
  counting function-local and ``TYPE_CHECKING`` imports and ``importlib`` lookups of
  ``mnic_ops`` modules by name;
- import cycles between modules;
- modules over :data:`MAX_LINES` lines (:data:`KNOWN_LARGE`: today's, capped at their size);
- use of another module's private names (``mod._name``, ``from mod import _name``,
  ``monkeypatch.setattr(mod, "_name", ...)``), in ``mnic_ops/`` and in ``tests/``
  (:data:`KNOWN_PRIVATE`: today's, to be made public or removed).

Each check is also fed a synthetic bad package, so that it is known to be able to fail.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
PACKAGE = "mnic_ops"
LAYERS = ("core", "changes", "facts", "engines", "capabilities")
TOP = len(LAYERS)  # cli.py, __main__.py
MAX_LINES = 600

# Modules over MAX_LINES today, with their line count as a ceiling: they may shrink, not
# grow. The to-do list for splitting them (phase B).
KNOWN_LARGE: dict[str, int] = {
}

# Private names used across modules today: (user file, "module._name"). Make the name
# public (or stop needing it) and remove the entry.
KNOWN_PRIVATE: set[tuple[str, str]] = set()


@dataclass
class Module:
    name: str  # dotted
    path: Path
    rel: str  # path relative to the scanned root's parent, for messages
    tree: ast.Module
    lines: int
    imports: list[tuple[str, int]] = field(default_factory=list)  # (module, line)
    type_only: set[int] = field(default_factory=set)  # lines under ``if TYPE_CHECKING:``


def layer_of(name: str) -> int:
    parts = name.split(".")
    if len(parts) == 1:
        return 0  # the package itself (its __version__)
    if parts[1] in LAYERS:
        return LAYERS.index(parts[1])
    return TOP


def load(root: Path, package: str = PACKAGE) -> dict[str, Module]:
    """Every module below ``root`` (the package folder), by dotted name."""
    mods: dict[str, Module] = {}
    for p in sorted(root.rglob("*.py")):
        parts = p.relative_to(root.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        text = p.read_text(encoding="utf-8")
        mods[name] = Module(name, p, str(p.relative_to(root.parent)), ast.parse(text),
                            text.count("\n"))
    for m in mods.values():
        m.imports = list(imports_of(m, mods, package))
        for node in ast.walk(m.tree):
            if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
                m.type_only.update(n.lineno for b in node.body for n in ast.walk(b)
                                   if hasattr(n, "lineno"))
    return mods


def imports_of(m: Module, mods: dict[str, Module], package: str) -> Iterable[tuple[str, int]]:
    """Modules of the package that ``m`` imports, anywhere in the file."""
    def resolve(dotted: str) -> str | None:
        while dotted and dotted not in mods:
            dotted = dotted.rpartition(".")[0]
        return dotted or None

    for node in ast.walk(m.tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                if a.name.split(".")[0] == package and (r := resolve(a.name)):
                    yield r, node.lineno
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0 and \
                node.module.split(".")[0] == package:
            for a in node.names:
                r = resolve(f"{node.module}.{a.name}")
                if r and r != m.name:
                    yield r, node.lineno
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and \
                re.fullmatch(rf"{package}(\.\w+)+(:\w+)?", node.value):
            # importlib.import_module("mnic_ops.x"), find_spec, "mod:attr" references
            r = resolve(node.value.split(":")[0])
            if r and r != m.name:
                yield r, node.lineno


def upward_imports(mods: dict[str, Module]) -> list[str]:
    out = []
    for m in mods.values():
        for dep, line in m.imports:
            if dep in mods and layer_of(dep) > layer_of(m.name):
                out.append(f"{m.rel}:{line}: imports {dep} from a higher layer")
    return out


def cycles(mods: dict[str, Module]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan). Imports for type
    checking only do not count: they never run (they still count for the layers)."""
    graph = {n: sorted({d for d, line in m.imports
                        if d in mods and d != n and line not in m.type_only})
             for n, m in mods.items()}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph[v]:
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

    for v in graph:
        if v not in index:
            visit(v)
    return out


def too_large(mods: dict[str, Module], known: dict[str, int]) -> list[str]:
    out = []
    for m in mods.values():
        ceiling = known.get(m.rel, MAX_LINES)
        if m.lines > ceiling:
            out.append(f"{m.rel}: {m.lines} lines (limit {ceiling})")
    return out


def private_uses(files: Iterable[Path], base: Path, package: str = PACKAGE) -> set[tuple[str, str]]:
    """(file, "module._name") for every private name of a package module used outside it."""
    out: set[tuple[str, str]] = set()
    for p in files:
        rel = str(p.relative_to(base))
        tree = ast.parse(p.read_text(encoding="utf-8"))
        own = ".".join(p.relative_to(base).with_suffix("").parts)
        bound: dict[str, str] = {}  # local name -> module it stands for
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0 and \
                    node.module.split(".")[0] == package:
                for a in node.names:
                    if a.name.startswith("_") and not a.name.startswith("__") and \
                            node.module != own:
                        out.add((rel, f"{node.module}.{a.name}"))
                    bound[a.asname or a.name] = f"{node.module}.{a.name}"
            elif isinstance(node, ast.Import):
                for a in node.names:
                    if a.name.split(".")[0] == package and a.asname:
                        bound[a.asname] = a.name
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and \
                    node.value.id in bound and node.attr.startswith("_") and \
                    not node.attr.startswith("__"):
                out.add((rel, f"{bound[node.value.id]}.{node.attr}"))
            elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and \
                    node.func.attr == "setattr" and len(node.args) >= 2 and \
                    isinstance(node.args[0], ast.Name) and node.args[0].id in bound and \
                    isinstance(node.args[1], ast.Constant) and \
                    str(node.args[1].value).startswith("_"):
                out.add((rel, f"{bound[node.args[0].id]}.{node.args[1].value}"))
    return out


def py_files(*tops: Path) -> list[Path]:
    return sorted(p for t in tops for p in t.rglob("*.py") if "fixtures" not in p.parts)


# --- the rules, on this checkout ------------------------------------------------------

@pytest.fixture(scope="module")
def mods() -> dict[str, Module]:
    return load(REPO / PACKAGE)


def test_layers_only_import_down(mods: dict[str, Module]) -> None:
    assert upward_imports(mods) == []


def test_no_import_cycles(mods: dict[str, Module]) -> None:
    assert cycles(mods) == []


def test_modules_stay_small(mods: dict[str, Module]) -> None:
    assert too_large(mods, KNOWN_LARGE) == []
    # an entry that is no longer needed (or whose module is gone) is removed
    stale = {k: v for k, v in KNOWN_LARGE.items()
             if k not in {m.rel: 0 for m in mods.values()} or
             next(m.lines for m in mods.values() if m.rel == k) <= MAX_LINES}
    assert stale == {}


def test_no_private_names_across_modules() -> None:
    found = private_uses(py_files(REPO / PACKAGE, REPO / "tests", REPO / "benchmarks"), REPO)
    assert sorted(found - KNOWN_PRIVATE) == []
    assert sorted(KNOWN_PRIVATE - found) == [], "fixed: remove from KNOWN_PRIVATE"


def test_every_module_is_in_a_layer(mods: dict[str, Module]) -> None:
    loose = [m.rel for m in mods.values() if layer_of(m.name) == TOP and
             m.name not in (PACKAGE, f"{PACKAGE}.cli", f"{PACKAGE}.__main__")]
    assert loose == []


# --- each check can fail ----------------------------------------------------------------

def make_package(tmp: Path, files: dict[str, str]) -> Path:
    root = tmp / "pkg"
    for rel, text in {"__init__.py": "", **{f"{layer}/__init__.py": "" for layer in LAYERS},
                      **files}.items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)
    return root


def test_checker_catches_upward_imports(tmp_path: Path) -> None:
    root = make_package(tmp_path, {
        "core/a.py": "def f():\n    from pkg.capabilities import b\n",  # function-local
        "facts/c.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n"
                      "    from pkg.engines.d import X\n",
        "engines/d.py": "X = 1\nimport importlib\nimportlib.import_module('pkg.cli')\n",
        "capabilities/b.py": "from pkg.core import a\n",  # down: fine
        "cli.py": "",
    })
    found = upward_imports(load(root, "pkg"))
    assert [f.split(":")[0] for f in found] == ["pkg/core/a.py", "pkg/engines/d.py",
                                               "pkg/facts/c.py"]


def test_checker_catches_cycles(tmp_path: Path) -> None:
    root = make_package(tmp_path, {
        "facts/a.py": "from pkg.facts import b\n",
        "facts/b.py": "def f():\n    from pkg.facts.c import g\n",
        "facts/c.py": "from pkg.facts.a import x\ndef g(): ...\n",
        "facts/d.py": "from pkg.facts import a\n",
        "facts/e.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n"
                      "    from pkg.facts.f import Y\n",
        "facts/f.py": "from pkg.facts import e\nY = 1\n",  # e -> f is type-only: no cycle
    })
    assert cycles(load(root, "pkg")) == [["pkg.facts.a", "pkg.facts.b", "pkg.facts.c"]]


def test_checker_catches_large_modules(tmp_path: Path) -> None:
    root = make_package(tmp_path, {"core/big.py": "x = 1\n" * (MAX_LINES + 1),
                                   "core/known.py": "x = 1\n" * 700})
    mods = load(root, "pkg")
    assert too_large(mods, {"pkg/core/known.py": 700}) == [
        f"pkg/core/big.py: {MAX_LINES + 1} lines (limit {MAX_LINES})"]
    assert too_large(mods, {"pkg/core/known.py": 650}) != []  # a ceiling cannot grow


def test_checker_catches_private_names(tmp_path: Path) -> None:
    root = make_package(tmp_path, {
        "core/a.py": "_hidden = 1\ndef _f(): ...\nx = _f()\n",
        "facts/b.py": "from pkg.core.a import _hidden\n",
        "facts/c.py": "from pkg.core import a\ny = a._f()\n",
        "facts/d.py": "from pkg.core import a\ndef t(monkeypatch):\n"
                      "    monkeypatch.setattr(a, '_f', None)\n",
        "facts/e.py": "from pkg.core import a\nz = a.x\n",  # public: fine
    })
    assert private_uses(py_files(root), tmp_path, "pkg") == {
        ("pkg/facts/b.py", "pkg.core.a._hidden"), ("pkg/facts/c.py", "pkg.core.a._f"),
        ("pkg/facts/d.py", "pkg.core.a._f")}


def test_every_module_is_listed_in_the_architecture_doc() -> None:
    """docs/architecture.md names every module of every layer: a split or a new module
    that is not described there fails here, not in a reader's head."""
    doc = (REPO / "docs" / "architecture.md").read_text()
    listed = set(re.findall(r"^- `([a-z]+/[a-z_]+)`: \S", doc, re.M))
    modules = {f"{layer}/{p.stem}" for layer in LAYERS
               for p in (REPO / PACKAGE / layer).glob("*.py") if p.name != "__init__.py"}
    assert sorted(modules - listed) == [], "modules missing from docs/architecture.md"
    assert sorted(listed - modules) == [], "docs/architecture.md lists modules that are gone"
