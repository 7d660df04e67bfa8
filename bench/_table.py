"""Plain-text tables for the benchmark scripts (one rendering for all of them)."""

from __future__ import annotations

from typing import Collection, List, Sequence


def render(header: Sequence[str], lines: List[List[str]], left: Collection[int],
           group_by_first: bool = True) -> str:
    """Columns sized to their widest cell, ``left`` columns left-aligned and the others
    right-aligned, a rule under the header, and (``group_by_first``) a blank line wherever the
    first column changes."""
    widths = [max(len(str(x)) for x in col) for col in zip(header, *lines)]

    def fmt(cells: Sequence[str]) -> str:
        return "  ".join(c.ljust(w) if i in left else c.rjust(w)
                         for i, (c, w) in enumerate(zip(cells, widths))).rstrip()

    out, previous = [fmt(header), "  ".join("-" * w for w in widths)], None
    for cells in lines:
        if group_by_first and previous is not None and cells[0] != previous:
            out.append("")
        out.append(fmt(cells))
        previous = cells[0]
    return "\n".join(out)
