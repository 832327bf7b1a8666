"""The house plan of ``docs/architecture.md``, checked: every module lives in a row of its
table and is named there, and every import goes to its own row or one above it (a lower
layer), never in a circle, lazy imports included."""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from pathlib import Path

import grantkeeper

PACKAGE = Path(grantkeeper.__file__).parent
PLAN = Path(__file__).parents[1] / "docs" / "architecture.md"

LAYERS: list[set[str]] = [
    # the core: the record, the pure rules, and what every row uses
    {
        "_redact",
        "_errors",
        "_observe",
        "_paths",
        "_record",
        "_freshness",
        "_liveness",
        "_platform",
        "_network",
        "_rules",
        "_exports",
        "_signals",
        "_fakes",
        "_rescue_copies",
        "_version",
    },
    {"_stores"},
    {"_oauth"},
    {"_servers"},
    {"_keeper", "_login", "_logout", "_status"},
    {"_http_auth"},
    {"_mcp"},
    {"_relogin"},
    {"_proxy"},
    {"_cli", "__init__", "__main__", "mcp", "testing"},
]
"""The rows of the table in docs/architecture.md, in its order: a row may import itself and
the rows before it."""

MAX_FLAT = 20
"""Private modules beside the public ones: more, and a newcomer cannot find their room."""


def _module(path: Path) -> tuple[str, ...]:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return parts[:-1] if parts[-1] == "__init__" else parts


def _imports(path: Path) -> Iterator[tuple[str, ...]]:
    """Every grantkeeper module ``path`` imports, wherever the import statement stands."""
    module = _module(path)
    package = module if path.name == "__init__.py" else module[:-1]
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names = [tuple(alias.name.split(".")) for alias in node.names]
            yield from (name for name in names if name[0] == "grantkeeper")
        elif isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else ()
            target = base + tuple((node.module or "").split(".")) if node.module else base
            if target[:1] != ("grantkeeper",):
                continue
            for alias in node.names:  # ``from . import _rescue_copies`` imports a module
                candidate = PACKAGE.parent.joinpath(*target, alias.name)
                is_module = candidate.with_suffix(".py").exists() or candidate.is_dir()
                yield target + (alias.name,) if is_module else target


def _room(module: tuple[str, ...]) -> str:
    return module[1] if len(module) > 1 else "__init__"


def _layer(room: str) -> int:
    return next(i for i, rooms in enumerate(LAYERS) if room in rooms)


def _modules() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


def test_every_module_lives_in_a_declared_room() -> None:
    declared = set().union(*LAYERS)
    homeless = [p.relative_to(PACKAGE) for p in _modules() if _room(_module(p)) not in declared]
    assert not homeless, f"declare a room for {homeless} in LAYERS and docs/architecture.md"


def _rows() -> list[str]:
    """The rows of the table under "## The rooms", header and rule left out."""
    section = PLAN.read_text(encoding="utf-8").split("## The rooms", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("|")]
    return rows[2:]


def test_the_plan_names_every_room_and_module_in_its_row() -> None:
    rows = _rows()
    assert len(rows) == len(LAYERS), "docs/architecture.md's table and LAYERS differ in rows"
    for row, rooms in zip(rows, LAYERS, strict=True):
        named = set(re.findall(r"`([\w.]+?)/?`", row))
        for room in rooms:
            assert room in named, f"{room} missing from its row: {row[:60]}"
            members = PACKAGE / room
            if members.is_dir():
                stems = {p.stem for p in members.glob("*.py")} - {"__init__"}
                assert stems <= named, f"{room}/ modules missing from its row: {stems - named}"


def test_few_modules_stay_flat() -> None:
    flat = [p.stem for p in PACKAGE.glob("_*.py") if p.stem not in {"__init__", "__main__"}]
    assert len(flat) <= MAX_FLAT, sorted(flat)


def test_imports_point_down_the_layers() -> None:
    upward = []
    for path in _modules():
        source = _module(path)
        for target in _imports(path):
            if _room(target) == _room(source):
                continue
            if _layer(_room(target)) > _layer(_room(source)):
                upward.append(f"{'.'.join(source)} -> {'.'.join(target)}")
    assert not upward, "imports pointing up a layer:\n" + "\n".join(sorted(upward))


def test_no_module_imports_itself_in_a_circle() -> None:
    graph: dict[tuple[str, ...], set[tuple[str, ...]]] = {}
    for path in _modules():
        source = _module(path)
        graph.setdefault(source, set()).update(t for t in _imports(path) if t != source)
    # The package itself imports everything (the public API); a module that reached back
    # into it would show up as a circle through it.
    done: set[tuple[str, ...]] = set()
    trail: list[tuple[str, ...]] = []

    def visit(node: tuple[str, ...]) -> None:
        if node in trail:
            cycle = trail[trail.index(node) :] + [node]
            raise AssertionError("import circle: " + " -> ".join(".".join(m) for m in cycle))
        if node in done:
            return
        trail.append(node)
        for target in sorted(graph.get(node, ())):
            visit(target)
        trail.pop()
        done.add(node)

    for node in sorted(graph):
        visit(node)
