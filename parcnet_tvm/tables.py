"""The one table format every report uses (Markdown: it reads in a terminal and pastes into
README and issues)."""

from __future__ import annotations


def markdown_table(columns, rows) -> list[str]:
    """Lines of a Markdown table: the header, the separator, one line per row (an empty cell
    stays empty)."""
    def line(cells):
        return "|" + "|".join(f" {cell} " if str(cell) != "" else " " for cell in cells) + "|"

    return [line(columns), "|" + "---|" * len(columns), *(line(row) for row in rows)]
