"""How the CLI prints results, as gh does: a table sized to a terminal, tab-separated lines
when piped, JSON with ``--json``.

On a terminal no cell is cut short: a cell too wide for its column wraps, and the commands a
person must run are printed in full under the table, one per line, ready to copy. Cells are
plain text, never rich markup, so ``grantkeeper[keyring]`` prints as typed. Colour follows
rich, which honours ``NO_COLOR``.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from typing import Any

import click

ACTION = "action"
"""The column holding the command a person must run; shown in full, never cut."""


def is_terminal() -> bool:
    """Whether stdout is a terminal (a table) or a pipe or file (tab-separated lines)."""
    return sys.stdout.isatty()


def print_json(document: Any) -> None:
    """One JSON document on stdout."""
    click.echo(json.dumps(document, indent=2))


def _plain(cell: str) -> str:
    # One record per line and one field per tab, whatever a value holds.
    return cell.replace("\t", " ").replace("\n", " ")


def print_table(
    columns: Sequence[str],
    rows: Sequence[Sequence[str]],
    *,
    title: str | None = None,
    styles: dict[str, dict[str, str]] | None = None,
    whole: Sequence[str] = (),
    terminal_drop: Sequence[str] = (),
) -> None:
    """``rows`` under ``columns``: a table on a terminal, else tab-separated lines.

    ``styles`` maps a column to the style of some of its values (``{"ok": {"NO": "red"}}``),
    used only on a terminal. Columns in ``whole`` (short words such as a state) keep their
    width when the terminal is narrow; the others wrap. Columns in ``terminal_drop`` appear
    only in piped output, where width costs nothing.
    """
    if not is_terminal():
        for row in rows:
            click.echo("\t".join(_plain(cell) for cell in row))
        return
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    shown = [i for i, name in enumerate(columns) if name != ACTION and name not in terminal_drop]
    table = Table(*(columns[i] for i in shown), title=title)
    for i, column in zip(shown, table.columns, strict=True):
        column.overflow = "fold"  # wrap a long value, never cut it to "…"
        if columns[i] in whole:
            column.min_width = max((len(row[i]) for row in rows), default=0)
    for row in rows:
        cells = []
        for i in shown:
            style = (styles or {}).get(columns[i], {}).get(row[i], "")
            cells.append(Text(row[i], style=style))
        table.add_row(*cells)
    console = Console()
    console.print(table)
    if ACTION in columns:
        where = columns.index(ACTION)
        for row in rows:
            if row[where] and row[where] != "-":
                # Printed as is: a terminal wraps a long line but never drops a character.
                click.echo(f"{row[0]}: run {row[where]}")


def print_lines(lines: Sequence[str]) -> None:
    """Lines of text on stdout."""
    for line in lines:
        click.echo(line)


def store_label(store: Any) -> str:
    """How to name ``store`` to a person: its kind and where it keeps things, not a repr."""
    from .._stores.auto import AutoStore
    from .._stores.file import FileStore
    from .._stores.keyring import KeyringStore
    from .._stores.postgresql import PostgresStore

    if isinstance(store, AutoStore):
        return f"auto (the OS keyring when available, else files in {store.file.directory})"
    if isinstance(store, FileStore):
        return f"file ({store.directory})"
    if isinstance(store, KeyringStore):
        return f"keyring (service {store.service})"
    if isinstance(store, PostgresStore):
        return f"postgresql ({store.where}, schema {store.schema})"
    return str(getattr(store, "name", type(store).__name__))
