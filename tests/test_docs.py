"""What the documentation names exists: every ``tests/test_x.py`` and ``::test_name`` it cites
(docs/guarantees.md maps each promise and fault to the tests that prove it) is a file and a
test of that file, so that moving or merging tests cannot leave a promise pointing nowhere."""

from __future__ import annotations

import ast
import fnmatch
import re
from pathlib import Path

import pytest

from tests.helpers import ROOT

DOCUMENTS = sorted([*ROOT.glob("docs/*.md"), ROOT / "README.md"])
CITATION = re.compile(r"(tests/test_\w+\.py)(?:::(\w[\w*]*))?|(?<![\w/.])::(\w[\w*]*)")
"""A test file, or ``::name`` (after a file, or alone for the file cited last)."""


def citations(document: Path) -> list[tuple[int, str, str | None]]:
    """(line, file, test name or pattern) for each citation; the name is None for a file."""
    found: list[tuple[int, str, str | None]] = []
    for number, line in enumerate(document.read_text(encoding="utf-8").splitlines(), 1):
        current: str | None = None
        for match in CITATION.finditer(line):
            file, name, later = match.groups()
            if file:
                current = file
                found.append((number, current, name))
            elif current is not None:
                found.append((number, current, later))
    return found


def defined_in(path: Path) -> set[str]:
    """The tests ``path`` defines: its ``test_*`` functions, its ``Test*`` classes and their
    ``test_*`` methods (a helper or a fixture is not a test a promise can point to)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    functions = ast.FunctionDef | ast.AsyncFunctionDef
    names = set()
    for node in tree.body:
        if isinstance(node, functions) and node.name.startswith("test_"):
            names.add(node.name)
        elif isinstance(node, ast.ClassDef) and node.name.startswith("Test"):
            names.add(node.name)
            names.update(
                n.name for n in node.body if isinstance(n, functions) and n.name.startswith("test_")
            )
    return names


@pytest.mark.parametrize("document", DOCUMENTS, ids=[d.name for d in DOCUMENTS])
def test_every_test_the_documentation_cites_exists(document: Path) -> None:
    missing = []
    for line, file, name in citations(document):
        path = ROOT / file
        if not path.is_file():
            missing.append(f"{document.name}:{line}: {file}")
        elif name is not None and not fnmatch.filter(defined_in(path), name):
            missing.append(f"{document.name}:{line}: {file}::{name}")
    assert not missing, "\n".join(missing)


def test_the_citation_reader_reads_files_names_and_continuations() -> None:
    line = "`tests/test_a.py::test_b_*`, `::test_c`, `tests/test_d.py` and `x::y`"
    assert CITATION.findall(line) == [
        ("tests/test_a.py", "test_b_*", ""),
        ("", "", "test_c"),
        ("tests/test_d.py", "", ""),
    ]
