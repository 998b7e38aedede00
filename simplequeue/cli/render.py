"""How commands show what they read: rich tables for people, JSON for scripts (`--json`).

Every value is shown as text, never as markup: job data, queue names and errors are the
users' and may hold anything.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import click
from rich.console import Console
from rich.table import Table
from rich.text import Text

__all__ = ["age", "emit_json", "fields", "show", "table", "visible", "when_text"]


def emit_json(value: Any) -> None:
    """JSON escapes C0 controls itself; C1 ones (\\x9b starts a terminal sequence too) are
    written as \\u escapes."""
    text = json.dumps(value, indent=2, default=str, ensure_ascii=False)
    click.echo(text.translate({code: f"\\u{code:04x}" for code in range(0x7F, 0xA0)}))


_CONTROL = {
    code: f"\\x{code:02x}"
    for code in (*range(0x00, 0x20), *range(0x7F, 0xA0))
    if chr(code) not in "\t"
}
_CONTROL.update({ord("\n"): "\\n", ord("\r"): "\\r"})


def visible(text: str) -> str:
    """Text with its control characters escaped (\\x1b, \\n): stored data must not move
    the cursor, recolour the terminal or fake a row of its own."""
    return text.translate(_CONTROL)


def _cell(value: Any) -> Text:
    if value is None:
        return Text("-", style="dim")
    if isinstance(value, bool):
        return Text("yes" if value else "no")
    if isinstance(value, datetime):
        return Text(when_text(value))
    if isinstance(value, float):
        return Text(f"{value:.1f}")
    if isinstance(value, list | tuple):
        return Text(visible(", ".join(str(item) for item in value)))
    return Text(visible(str(value)))


def _console() -> Console:
    """The terminal's width; wide enough not to fold ids when piped to a file or a pager."""
    console = Console(soft_wrap=False)
    return console if console.is_terminal else Console(soft_wrap=False, width=240)


def table(title: str, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    """Print rows under their column headers (every value as plain text)."""
    console = _console()
    shown = Table(title=Text(title), title_justify="left", show_edge=False, pad_edge=False)
    for column in columns:
        shown.add_column(Text(column), overflow="fold")
    for row in rows:
        shown.add_row(*(_cell(value) for value in row))
    if not rows:
        console.print(Text(f"{title}: none", style="dim"))
        return
    console.print(shown)


def show(
    as_json: bool,
    value: Any,
    title: str,
    columns: Sequence[str],
    rows: Sequence[Sequence[Any]],
) -> None:
    """What a read command found: `value` as JSON (`--json`), or the rows as a table."""
    if as_json:
        emit_json(value)
    else:
        table(title, columns, rows)


def when_text(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S")


def age(seconds: float | None) -> str | None:
    """A duration the way an operator reads it: 45s, 12m, 3h, 2d."""
    if seconds is None:
        return None
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds / size:.0f}{unit}"
    return f"{seconds:.0f}s"


def fields(pairs: Sequence[tuple[str, Any]]) -> None:
    """Print name: value lines (a job's detail)."""
    console = _console()
    width = max(len(name) for name, _ in pairs)
    for name, value in pairs:
        line = Text(f"{name:>{width}}  ", style="bold")
        line.append_text(_cell(value))
        console.print(line)
