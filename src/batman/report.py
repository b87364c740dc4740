"""The two forms every report takes: Markdown tables (evaluate, bench, scripts) and matplotlib figures
(evaluate's plots, the loss curve, calibrate's fits, bench quality's crops), each written one way."""
from __future__ import annotations

from pathlib import Path

from batman.files import atomic_path


def markdown_table(headers: list[str], rows: list[list], align: str = "") -> str:
    """A pipe table that reads well in a terminal and in Markdown: columns padded to one width, `align`
    one letter per column, 'l' (the default) or 'r' (numbers; the rule row ends in ':')."""
    cells = [[str(h) for h in headers]] + [[str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    right = [i < len(align) and align[i] == "r" for i in range(len(headers))]

    def line(r):
        return "| " + " | ".join(c.rjust(w) if rt else c.ljust(w) for c, w, rt in zip(r, widths, right)) + " |"

    rule = "|" + "|".join("-" * (w + 1) + (":" if rt else "-") for w, rt in zip(widths, right)) + "|"
    return "\n".join([line(cells[0]), rule] + [line(r) for r in cells[1:]])


def pyplot():
    """matplotlib.pyplot on the Agg backend (files only: no display needed, none opened)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def save_figure(fig, path: str | Path, dpi: int = 100) -> None:
    """Write a figure as PNG atomically (files.atomic_path) and close it."""
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=dpi)
    pyplot().close(fig)
