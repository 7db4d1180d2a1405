"""Plain-text tables for people at a terminal (`certlake gaps`, the backfill summary). Pure."""

from __future__ import annotations

from collections.abc import Collection, Sequence


def text_table(
    header: Sequence[str], rows: Sequence[Sequence[str]], left: Collection[int] = (0,)
) -> list[str]:
    """`header` and `rows` as lines of columns two spaces apart, each as wide as its widest
    cell: text columns (indices in `left`) left-aligned, the others (numbers) right-aligned."""
    table = [header, *rows]
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    return [
        "  ".join(
            cell.ljust(w) if i in left else cell.rjust(w)
            for i, (cell, w) in enumerate(zip(row, widths, strict=True))
        ).rstrip()
        for row in table
    ]
