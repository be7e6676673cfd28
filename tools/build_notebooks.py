"""Build the top-level notebooks from their sources in notebooks/*.py (percent format).

    python tools/build_notebooks.py          # write 0_download.ipynb ... 4_test.ipynb
    python tools/build_notebooks.py --check  # exit 1 if a committed notebook is out of date

A source is plain Python: `# %%` starts a code cell, `# %% [markdown]` a markdown cell whose
lines start with "# ", and `# %% parameters` the papermill parameters cell. Committed notebooks
carry no outputs.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def parse_cells(text: str) -> list[dict]:
    cells, kind, lines = [], None, []

    def flush():
        if kind is not None:
            source = "\n".join(lines).strip("\n")
            cells.append(make_cell(kind, source))

    for line in text.splitlines():
        if line.startswith("# %%"):
            flush()
            header = line[4:].strip()
            kind = "markdown" if header == "[markdown]" else ("parameters" if header == "parameters" else "code")
            lines = []
        elif kind == "markdown":
            lines.append(line[2:] if line.startswith("# ") else line.lstrip("#"))
        elif kind is not None:
            lines.append(line)
    flush()
    return cells


def make_cell(kind: str, source: str) -> dict:
    text = source.splitlines(keepends=True)
    if kind == "markdown":
        return {"cell_type": "markdown", "metadata": {}, "source": text}
    metadata = {"tags": ["parameters"]} if kind == "parameters" else {}
    return {"cell_type": "code", "execution_count": None, "metadata": metadata, "outputs": [], "source": text}


def build(source: Path) -> str:
    notebook = {
        "cells": parse_cells(source.read_text()),
        "metadata": {"kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"},
                     "language_info": {"name": "python"}},
        "nbformat": 4, "nbformat_minor": 5,
    }
    for i, cell in enumerate(notebook["cells"]):
        cell["id"] = f"{source.stem}-{i}"
    return json.dumps(notebook, indent=1, ensure_ascii=False) + "\n"


def main(check: bool) -> int:
    stale = []
    for source in sorted((ROOT / "notebooks").glob("*.py")):
        target = ROOT / f"{source.stem}.ipynb"
        text = build(source)
        if check:
            if not target.exists() or target.read_text() != text:
                stale.append(target.name)
        else:
            target.write_text(text)
    if stale:
        print("out of date (run python tools/build_notebooks.py):", ", ".join(stale))
    return 1 if stale else 0


if __name__ == "__main__":
    sys.exit(main("--check" in sys.argv))
