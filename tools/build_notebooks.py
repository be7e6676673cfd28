"""Build the top-level notebooks from their sources in notebooks/*.py (percent format).

    python tools/build_notebooks.py          # write 0_download.ipynb ... 4_test.ipynb
    python tools/build_notebooks.py --check  # exit 1 if a committed notebook is out of date

A source is plain Python: `# %%` starts a code cell, `# %% [markdown]` a markdown cell whose
lines start with "# ", and `# %% parameters` the papermill parameters cell. Right after the
parameters cell, every notebook gets the same first code cell, FIRST_CELL below: it finds the
project, sets up Colab and imports util. Committed notebooks carry no outputs.
"""
from __future__ import annotations

import ast
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# The project cannot be imported before it is found, so the first cell carries its finder: these
# functions, copied from rlhf/colab.py (where they are tested) into {functions}.
FIRST_CELL_FUNCTIONS = ("in_colab", "find_project_root", "locate_project")
FIRST_CELL = """\
# @title Find the project, set up Colab, import util
# The same cell in every notebook, written by tools/build_notebooks.py from rlhf/colab.py.
import os, subprocess, sys
from pathlib import Path


{functions}


root = locate_project(PROJECT_SEARCH, REPO_URL)
os.chdir(root); sys.path.insert(0, str(root))
from rlhf.colab import setup_colab
setup_colab(root)  # Colab only: install or upgrade what requirements.txt asks for (never torch)
import util  # only now: it imports transformers
print("project:", root, "| Colab:", in_colab(), "| GPU:", util.has_gpu())"""


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


def first_cell() -> dict:
    """FIRST_CELL with the functions from rlhf/colab.py; Colab shows it folded, as a form."""
    text = (ROOT / "rlhf" / "colab.py").read_text()
    nodes = {node.name: node for node in ast.parse(text).body if isinstance(node, ast.FunctionDef)}
    functions = "\n\n\n".join(ast.get_source_segment(text, nodes[name]) for name in FIRST_CELL_FUNCTIONS)
    cell = make_cell("code", FIRST_CELL.format(functions=functions))
    cell["metadata"]["cellView"] = "form"
    return cell


def notebook_cells(source: Path) -> list[dict]:
    """The cells of a notebook source, with the first cell inserted after the parameters cell."""
    cells = parse_cells(source.read_text())
    tagged = [i for i, cell in enumerate(cells) if "parameters" in cell["metadata"].get("tags", [])]
    if len(tagged) != 1:
        raise ValueError(f"{source.name}: needs exactly one '# %% parameters' cell, has {len(tagged)}")
    return cells[:tagged[0] + 1] + [first_cell()] + cells[tagged[0] + 1:]


def build(source: Path) -> str:
    notebook = {
        "cells": notebook_cells(source),
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
