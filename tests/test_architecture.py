"""The module map holds: imports point down, no cycles, no reaching into privates.

Every module under ``src/`` is parsed with :mod:`ast` (nothing is imported) and every
import counts: top-level, inside functions and under ``if TYPE_CHECKING:``. Each module
has a rank from :data:`DRIVER_LAYERS` / :data:`PLUGIN_LAYERS` (its layer, then its place
in the layer's list); a module may import only modules of strictly lower rank. The map is
explained in docs/dev/architecture.md; change both together.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parent.parent / "src"

#: The driver, bottom to top. Within a layer a module may import the ones listed before it.
#: A package's ``__init__`` is named by the package and comes after its modules.
DRIVER_LAYERS: list[tuple[str, list[str]]] = [
    ("ground", [
        "errors",
        "internal.jsonparse", "internal.geometry", "internal.selection", "internal.recycle",
        "internal.contention",
        "internal.arraylike", "internal",
    ]),
    ("bytes", [
        "kvstore.keys", "kvstore.retry", "kvstore.base", "kvstore.url", "kvstore.file",
        "kvstore.memory", "kvstore.httpclient", "kvstore.remote", "kvstore.fsspec",
        "kvstore.http", "kvstore.gcs", "kvstore.s3", "kvstore.open",
        "kvstore",
    ]),
    ("format", [
        "codecs.table", "codecs.gzip", "codecs.compression", "codecs.raw", "codecs.image", "codecs.jpeg", "codecs.png",
        "codecs.cseg.native", "codecs.cseg.decode", "codecs.cseg.region", "codecs.cseg.encode",
        "codecs.cseg", "codecs",
        "sharding", "schema", "metadata", "info_members", "constraints", "spec",
    ]),
    ("chunks", ["chunkstore.base", "chunkstore.unsharded", "chunkstore.sharded", "chunkstore"]),
    ("one scale", ["cache", "context", "scale", "revalidate", "readpath", "writepath", "transaction"]),
    # dask sits below volume (not with the builders): Volume.to_dask and the package's
    # public store/to_dask call it, and it needs only a view's public surface.
    ("arrays", ["views", "dask", "reprs", "volume"]),
    ("face", ["driver", ""]),
    ("builders", [
        "downsample",
        "create.plan", "create.blocks", "create.recovery", "create.pyramid", "create",
        "meshes.mesh", "meshes.draco", "meshes.manifest", "meshes.info", "meshes.legacy",
        "meshes.octree", "meshes.generate", "meshes.reader", "meshes.writer", "meshes",
        "segment_properties.model", "segment_properties.io", "segment_properties",
        "convert.sources", "convert.build", "convert.export", "convert", "copy",
        "samples", "notebook", "cli",
    ]),
]

#: The plugin, above every driver module: it translates between napari and the driver.
PLUGIN_LAYERS: list[tuple[str, list[str]]] = [
    ("placement", ["_pyramid", "_array"]),
    ("io", ["_probe", "_reader", "_writer", "_sample_data", "preferences"]),
    ("segments", ["segments.background", "segments.search", "segments.selection",
                  "segments.meshes", "segments.view", "segments"]),
    ("editing", ["editing.editable", "editing.region", "editing.results", "editing.remesh",
                 "editing.policy", "editing.readonly", "editing.undo", "editing.session",
                 "editing"]),
    ("widgets", ["widgets.create", "widgets.labels", "widgets.segments", "widgets.folders",
                 "widgets"]),
    ("commands", ["cli"]),
    ("face", [""]),
]

#: The only exceptions, each with its reason:
#: - none: no import closes a cycle or points up.
ALLOWED_EDGES: set[tuple[str, str]] = set()
#: - none: no module imports another's private names.
ALLOWED_PRIVATE_IMPORTS: set[tuple[str, str, str]] = set()
#: - third-party APIs whose public names start with an underscore: fsspec's coroutine
#:   interface (documented as the ``_``-prefixed twins of its methods), namedtuple's
#:   ``_replace``, and napari's ``Window._qt_window`` (the main window a dialog needs as
#:   its parent; napari offers no public accessor), and gcsfs's session, auth headers and
#:   query parameters (``_set_session``, ``_get_headers``, ``_get_params``: the GCS store
#:   makes its own JSON-API requests, with preconditions gcsfs does not expose, on the
#:   credentials and session gcsfs holds).
THIRD_PARTY_UNDERSCORE_API = {
    "_cat_file", "_info", "_rm_file", "_pipe_file", "_find", "_call", "_call_s3",
    "_location", "_strip_protocol", "_replace", "_qt_window",
    "_set_session", "_get_headers", "_get_params",
}
QT = ("qtpy", "PyQt5", "PyQt6", "PySide2", "PySide6", "magicgui", "superqt", "napari.qt",
      "napari._qt")  # fmt: skip
NOT_IN_DRIVER = ("napari", "napari_precomputed", *QT)


def _ranks() -> dict[str, tuple[int, int, str]]:
    out: dict[str, tuple[int, int, str]] = {}
    for base, layers, offset in (
        ("precomputed", DRIVER_LAYERS, 0),
        ("napari_precomputed", PLUGIN_LAYERS, len(DRIVER_LAYERS)),
    ):
        for i, (layer, names) in enumerate(layers):
            for j, name in enumerate(names):
                full = f"{base}.{name}" if name else base
                out[full] = (offset + i, j, f"{base} {layer}")
    return out


RANKS = _ranks()


@dataclass(frozen=True)
class Import:
    module: str  # the importer
    target: str  # a module or package of ours, or a third-party name
    name: str | None  # for ``from target import name``: the name (not a module)
    line: int

    def where(self) -> str:
        return f"{self.module} (line {self.line})"


def _modules() -> dict[str, Path]:
    out = {}
    for path in sorted(SRC.rglob("*.py")):
        parts = list(path.relative_to(SRC).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


MODULES = _modules()
TREES = {name: ast.parse(path.read_text(encoding="utf-8")) for name, path in MODULES.items()}


def _package(module: str) -> str:
    return module if MODULES[module].name == "__init__.py" else module.rpartition(".")[0]


def _imports(module: str) -> Iterator[Import]:
    for node in ast.walk(TREES[module]):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield Import(module, alias.name, None, node.lineno)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = _package(module)
                for _ in range(node.level - 1):
                    base = base.rpartition(".")[0]
                source = f"{base}.{node.module}" if node.module else base
            else:
                source = node.module or ""
            for alias in node.names:
                sub = f"{source}.{alias.name}"
                if sub in MODULES:
                    yield Import(module, sub, None, node.lineno)
                else:
                    yield Import(module, source, alias.name, node.lineno)


IMPORTS = [imp for module in MODULES for imp in _imports(module)]
OURS = [imp for imp in IMPORTS if imp.target in MODULES and imp.target != imp.module]


def _is_under(name: str, prefixes: tuple[str, ...]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def test_every_module_has_a_layer() -> None:
    missing = sorted(m for m in MODULES if m not in RANKS)
    assert not missing, f"modules missing from the layer table: {missing}"
    stale = sorted(m for m in RANKS if m not in MODULES)
    assert not stale, f"layer table names modules that do not exist: {stale}"


def test_imports_point_down() -> None:
    bad = []
    for imp in OURS:
        if (imp.module, imp.target) in ALLOWED_EDGES:
            continue
        if imp.module not in RANKS or imp.target not in RANKS:
            continue  # reported by test_every_module_has_a_layer
        a, b = RANKS[imp.module], RANKS[imp.target]
        if b[:2] >= a[:2]:
            bad.append(f"{imp.where()} imports {imp.target}: {b[2]} is not below {a[2]}")
    assert not bad, "imports that do not point down:\n" + "\n".join(bad)


def test_no_import_cycles() -> None:
    graph: dict[str, set[str]] = {m: set() for m in MODULES}
    for imp in OURS:
        if (imp.module, imp.target) not in ALLOWED_EDGES:
            graph[imp.module].add(imp.target)
    cycles = _cycles(graph)
    assert not cycles, "import cycles:\n" + "\n".join(" -> ".join(c) for c in cycles)


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan), each shown as
    a closed path through it."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in sorted(graph[v]):
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
                found.append(_closed_path(sorted(comp), graph))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def _closed_path(comp: list[str], graph: dict[str, set[str]]) -> list[str]:
    """A shortest closed import path through the first module of a cycle (breadth first),
    then the other modules of the cycle."""
    members, start = set(comp), comp[0]
    parent: dict[str, str] = {}
    queue = [start]
    while queue:
        v = queue.pop(0)
        for w in sorted(graph[v] & members):
            if w == start:
                path = [v]
                while path[-1] != start:
                    path.append(parent[path[-1]])
                loop = [*reversed(path), start]
                rest = sorted(members - set(loop))
                return loop + ([f"(and {', '.join(rest)})"] if rest else [])
            if w not in parent:
                parent[w] = v
                queue.append(w)
    return comp  # pragma: no cover - a strongly connected component always closes


def test_the_driver_imports_no_napari_qt_or_plugin() -> None:
    bad = [
        f"{imp.where()} imports {imp.target}"
        for imp in IMPORTS
        if _is_under(imp.module, ("precomputed",)) and _is_under(imp.target, NOT_IN_DRIVER)
    ]
    assert not bad, "\n".join(bad)


def test_only_widgets_import_qt_or_magicgui() -> None:
    widgets = {m for m, r in RANKS.items() if r[2] == "napari_precomputed widgets"}
    bad = [
        f"{imp.where()} imports {imp.target}"
        for imp in IMPORTS
        if _is_under(imp.target, QT)
        and not (imp.module in widgets or _is_under(imp.module, ("napari_precomputed.widgets",)))
    ]
    assert not bad, "\n".join(bad)


def test_editing_never_imports_the_widgets() -> None:
    # Implied by the layers, stated on its own: the Qt side registers with the policy.
    bad = [
        f"{imp.where()} imports {imp.target}"
        for imp in IMPORTS
        if _is_under(imp.module, ("napari_precomputed.editing",))
        and _is_under(imp.target, ("napari_precomputed.widgets",))
    ]
    assert not bad, "\n".join(bad)


def _defined_private_names(tree: ast.AST) -> set[str]:
    """Underscore names a module defines itself: functions, classes, module or class
    variables, attributes it assigns (``x._name = ...``) and import aliases."""
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
            names.add(node.id)
        elif isinstance(node, ast.Attribute) and isinstance(node.ctx, (ast.Store, ast.Del)):
            names.add(node.attr)
        elif isinstance(node, ast.alias):
            names.add(node.asname or node.name.rpartition(".")[2])
        elif isinstance(node, ast.arg):
            names.add(node.arg)
    return {n for n in names if n.startswith("_")}


def _private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def test_no_module_reaches_into_another_modules_privates() -> None:
    bad = []
    for module, tree in TREES.items():
        own = _defined_private_names(tree)
        for node in ast.walk(tree):
            if not isinstance(node, ast.Attribute) or not _private(node.attr):
                continue
            if isinstance(node.value, ast.Name) and node.value.id in ("self", "cls"):
                continue
            if node.attr in own or node.attr in THIRD_PARTY_UNDERSCORE_API:
                continue
            bad.append(f"{module} (line {node.lineno}): {ast.unparse(node)}")
    for imp in IMPORTS:
        if imp.name is not None and _private(imp.name) and imp.target in MODULES:
            if (imp.module, imp.target, imp.name) not in ALLOWED_PRIVATE_IMPORTS:
                bad.append(f"{imp.where()}: from {imp.target} import {imp.name}")
    assert not bad, "private names used from outside their module:\n" + "\n".join(bad)


@pytest.mark.parametrize("name", ["precomputed.volume", "precomputed.kvstore.base"])
def test_the_walker_sees_function_level_and_type_checking_imports(name: str) -> None:
    # A guard on the test itself: it must parse modules and find imports at all.
    assert name in MODULES and any(imp.module == name for imp in OURS)
