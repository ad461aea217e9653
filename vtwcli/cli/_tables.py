"""Tables that stay readable where they do not fit: a CI log (no terminal, 80 columns) or a narrow terminal.

:func:`print_table` prints a rich table when its natural width fits the console; otherwise the same cells
as plain text, which a log wraps without cutting a word: ``records`` (a heading per row, then
``column: value`` lines; for long text cells) or ``lines`` (a heading when the first column changes,
then the other cells of each row on one line; for many short rows, e.g. `vtw check`)."""

from __future__ import annotations

from rich.console import Console
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from vtwcli.cli._state import console as default_console

__all__ = ["print_table", "plain_rows", "fits"]


def _plain(cell) -> str:
    if isinstance(cell, Text):
        return cell.plain
    return Text.from_markup(str(cell)).plain if isinstance(cell, str) else str(cell)


def plain_rows(table: Table) -> tuple[list[str], list[list[str]]]:
    """(headers, rows) of ``table`` as plain text (markup removed, newlines in a cell kept)."""
    headers = [_plain(column.header) for column in table.columns]
    cells = [[_plain(cell) for cell in column.cells] for column in table.columns]
    return headers, [list(row) for row in zip(*cells)]


def fits(table: Table, console: Console) -> bool:
    """Whether the table's natural width (no cell wrapped or cut) fits the console."""
    unbounded = console.options.update_width(100_000)
    return table.__rich_measure__(console, unbounded).maximum <= console.width


def _without(table: Table, headers: tuple[str, ...]) -> Table:
    kept = [i for i, column in enumerate(table.columns) if _plain(column.header) not in headers]
    narrow = Table(title=table.title, box=table.box, show_header=table.show_header)
    for i in kept:
        column = table.columns[i]
        narrow.add_column(column.header, justify=column.justify, no_wrap=column.no_wrap, overflow=column.overflow,
                          style=column.style)
    for row_index, row in enumerate(table.rows):
        narrow.add_row(*(list(table.columns[i].cells)[row_index] for i in kept), style=row.style)
    return narrow


def print_table(table: Table, *, layout: str = "records", drop: tuple[str, ...] = (),
                console: Console | None = None) -> None:
    """``table`` if it fits; else without the ``drop`` columns (by header) if that fits; else plain text."""
    console = console or default_console
    if fits(table, console):
        console.print(table)
        return
    if drop and fits(narrow := _without(table, drop), console):
        console.print(narrow)
        return
    headers, rows = plain_rows(table)
    out = [] if table.title is None else [_plain(table.title)]
    previous = None
    for row in rows:
        head = " / ".join(part for part in row[0].splitlines() if part) or "-"
        if layout == "lines":
            if head != previous:
                out.append(f"{head}:")
                previous = head
            out.append("  " + "  ".join(" / ".join(c.splitlines()) for c in row[1:] if c))
            continue
        out.append(f"- {head}")
        for header, cell in zip(headers[1:], row[1:]):
            if cell:
                out.append(f"    {header or 'value'}: {' / '.join(cell.splitlines())}")
    for line in out:
        console.print(escape(line), highlight=False, soft_wrap=True)  # a log wraps it, not us
