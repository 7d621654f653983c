"""The house's layers, read from the code's own imports (every import, also
those only for type checkers): no import cycles, and no layer reaching up.

    app       broker.app (twistd's options, the service), broker.testing,
              broker.pytest_plugin, broker.bench
    doors     broker.server (TCP), broker.mqtt (MQTT), broker.monitoring; the
              doors clients connect through know nothing of each other
    core      broker.core: the Broker, consumers, topics, deliveries, groups, ...
    ground    broker.log (the message stores), broker.wire (the protocol),
              broker.security (users, rights, TLS), broker.names, broker.subjects
    clients   broker.client (Twisted), broker.aio (asyncio), broker.sync (blocking),
              over broker.sansio (their protocol logic, no I/O): the wire, the
              names and TLS, nothing of the broker; sansio and aio no Twisted

A rule broken says which import breaks it, file and line."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "broker"

CORE = ("broker.core",)
DOORS = ("broker.server", "broker.mqtt", "broker.websocket", "broker.monitoring")
FRONT_DOORS = ("broker.server", "broker.mqtt")
"""Doors that take clients' connections: none knows another (the monitor
reports on all of them)."""
APP = (
    "broker.app",
    "broker.cli",
    "broker.__main__",
    "broker.testing",
    "broker.pytest_plugin",
    "broker.bench",
)
GROUND = (
    "broker.wire",
    "broker.log",
    "broker.security",
    "broker.names",
    "broker.subjects",
    "broker.transport",
)
# What the core may not reach: the doors, the app, and Twisted's transports.
TRANSPORTS = (
    "twisted.internet.protocol",
    "twisted.internet.endpoints",
    "twisted.internet.tcp",
    "twisted.internet.ssl",
    "twisted.protocols",
)
CLIENTS = ("broker.client", "broker.aio", "broker.sync", "broker.sansio")
CLIENT_MAY_IMPORT = (
    *CLIENTS,
    "broker.wire",
    "broker.names",
    "broker.subjects",
    "broker.security.tls",
)


@dataclass(frozen=True)
class Import:
    importer: str
    imported: str
    where: str  # file:line


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _imports(path: Path) -> Iterator[tuple[str, int]]:
    """Every module name an import statement names, at any depth."""
    name = _module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, node.lineno
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            yield module, node.lineno
            for alias in node.names:  # `from broker.log import redis` names a module
                yield f"{module}.{alias.name}", node.lineno


def _graph() -> tuple[set[str], list[Import]]:
    modules = {_module_name(path): path for path in PACKAGE.rglob("*.py")}
    edges: list[Import] = []
    for importer, path in modules.items():
        for imported, line in _imports(path):
            if not imported.startswith("broker"):
                edges.append(Import(importer, imported, f"{path.relative_to(ROOT)}:{line}"))
                continue
            while imported and imported not in modules:  # a name inside a module
                imported = imported.rpartition(".")[0]
            if imported and imported != importer:
                edges.append(Import(importer, imported, f"{path.relative_to(ROOT)}:{line}"))
    return set(modules), edges


MODULES, EDGES = _graph()


def _within(module: str, prefixes: tuple[str, ...]) -> bool:
    return any(module == prefix or module.startswith(prefix + ".") for prefix in prefixes)


def _cycles(modules: set[str], edges: list[Import]) -> list[list[str]]:
    """The strongly connected groups of more than one module (Tarjan)."""
    after: dict[str, set[str]] = {module: set() for module in modules}
    for edge in edges:
        if edge.imported in after:
            after[edge.importer].add(edge.imported)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(module: str) -> None:
        index[module] = low[module] = len(index)
        stack.append(module)
        for other in after[module]:
            if other not in index:
                visit(other)
                low[module] = min(low[module], low[other])
            elif other in stack:
                low[module] = min(low[module], index[other])
        if low[module] == index[module]:
            group = []
            while True:
                member = stack.pop()
                group.append(member)
                if member == module:
                    break
            if len(group) > 1:
                found.append(sorted(group))

    for module in sorted(modules):
        if module not in index:
            visit(module)
    return found


def test_the_graph_is_read():
    """The rules below see the imports they are about."""
    assert "broker.core.broker" in MODULES and "broker.server.protocol" in MODULES
    assert Import("broker.server.factory", "broker.server.protocol", "") in {
        Import(e.importer, e.imported, "") for e in EDGES
    }


def test_no_import_cycles():
    assert _cycles(MODULES, EDGES) == []


def test_cycles_are_found():
    """The cycle finder finds one (this test's own example)."""
    edges = [Import("a", "b", ""), Import("b", "c", ""), Import("c", "a", ""), Import("c", "d", "")]
    assert _cycles({"a", "b", "c", "d"}, edges) == [["a", "b", "c"]]


def _broken(importers: tuple[str, ...], forbidden: tuple[str, ...]) -> list[str]:
    return [
        f"{edge.where}: {edge.importer} imports {edge.imported}"
        for edge in EDGES
        if _within(edge.importer, importers) and _within(edge.imported, forbidden)
    ]


@pytest.mark.parametrize(
    ("importers", "forbidden"),
    [
        pytest.param(GROUND, CORE + DOORS + APP, id="ground-below-core"),
        pytest.param(CORE, DOORS + APP + ("broker.client",), id="core-below-doors"),
        pytest.param(CORE, TRANSPORTS, id="core-without-transports"),
        pytest.param(DOORS, APP, id="doors-below-app"),
    ],
)
def test_no_layer_reaches_up(importers, forbidden):
    assert _broken(importers, forbidden) == []


def test_no_front_door_knows_another():
    crossing = [
        f"{edge.where}: {edge.importer} imports {edge.imported}"
        for edge in EDGES
        for door in FRONT_DOORS
        if _within(edge.importer, (door,))
        and _within(edge.imported, FRONT_DOORS)
        and not _within(edge.imported, (door,))
    ]
    assert crossing == []


def test_the_client_needs_nothing_of_the_broker():
    outside = [
        f"{edge.where}: {edge.importer} imports {edge.imported}"
        for edge in EDGES
        if _within(edge.importer, ("broker.client",))
        and edge.imported.startswith("broker")
        and not _within(edge.imported, CLIENT_MAY_IMPORT)
    ]
    assert outside == []


def test_the_asyncio_client_and_the_protocol_logic_need_no_twisted():
    """An asyncio program imports broker.aio (and a blocking one broker.sync)
    without loading Twisted: nothing they import, at any depth, imports it."""
    after: dict[str, set[str]] = {}
    for edge in EDGES:
        after.setdefault(edge.importer, set()).add(edge.imported)
    seen: set[str] = set()
    todo = [m for m in MODULES if _within(m, ("broker.aio", "broker.sync", "broker.sansio"))]
    while todo:
        module = todo.pop()
        if module in seen:
            continue
        seen.add(module)
        todo.extend(after.get(module, ()))
    assert sorted(m for m in seen if _within(m, ("twisted", "zope"))) == []


def test_every_package_is_installed():
    """`pip install .` installs the packages pyproject.toml lists, and only
    those: a package missing there is missing for every user."""
    import tomllib

    listed = set(
        tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]
    )
    packages = {_module_name(path.parent / "__init__.py") for path in PACKAGE.rglob("__init__.py")}
    assert packages - listed == set()
