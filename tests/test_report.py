"""Markdown tables and figures: one writer each, shared by evaluate, train, calibrate and the benchmarks."""
from __future__ import annotations

from batman.report import markdown_table, pyplot, save_figure


def test_markdown_table_aligns_columns():
    text = markdown_table(["a", "bb"], [[1, 22], [333, 4]]).splitlines()
    assert len({len(line) for line in text}) == 1 and text[1].startswith("|--")


def test_markdown_table_right_aligns_the_columns_asked():
    text = markdown_table(["method", "PSNR (dB)"], [["mean", "30.12"], ["traditional", "9.5"]], align="lr").splitlines()
    assert text[1] == "|-------------|----------:|"
    assert text[3] == "| traditional |       9.5 |"
    assert len({len(line) for line in text}) == 1


def test_save_figure_writes_a_png_and_closes_the_figure(tmp_path):
    plt = pyplot()
    fig, ax = plt.subplots()
    ax.plot([0, 1], [1, 0])
    save_figure(fig, tmp_path / "a.png")
    assert (tmp_path / "a.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert fig.number not in plt.get_fignums()
    assert [p.name for p in tmp_path.iterdir()] == ["a.png"]  # atomic: no temp file left
