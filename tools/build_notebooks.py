"""The notebooks 0_download.ipynb … 4_test.ipynb and their sources notebooks/*.py, paired by jupytext.

    python tools/build_notebooks.py                 # sources -> notebooks (make notebooks)
    python tools/build_notebooks.py --check         # exit 1 where a notebook and its source differ
    python tools/build_notebooks.py --outputs runs  # keep the outputs of the notebooks executed in
                                                    # runs/ (make notebook-outputs)

A source is a percent-format script (`# %%` code cells, `# %% [markdown]` cells, the papermill
cell tagged `# %% tags=["parameters"]`). Each notebook's metadata pairs it with its source
(`ipynb,notebooks//py:percent`), so Jupyter with jupytext saves both, and `jupytext --sync` works.

Every source and notebook starts with an "Open in Colab" badge (BADGE below, its address from
rlhf/colab.py) and carries, right after the parameters cell, the same first code cell, FIRST_CELL
below: it gets the project (cloning it on a fresh Colab), sets up Colab and imports util. A build
puts the current ones into every source.

The committed notebooks carry the outputs of a `make run PRESET=tiny` (`--outputs runs`),
cleaned of what changes from run to run or machine to machine (absolute paths, elapsed-time
stamps, progress bars, stderr, execution metadata). A build keeps the outputs of every cell whose
text did not change, and drops those of edited cells.
"""
from __future__ import annotations

import re
import sys
from pathlib import Path

import jupytext
import nbformat

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from rlhf.colab import colab_link  # noqa: E402  (the standard library only)

SOURCES = ROOT / "notebooks"
FORMAT = "py:percent"
METADATA = {
    "jupytext": {"formats": "ipynb,notebooks//py:percent", "notebook_metadata_filter": "-all",
                 "cell_metadata_filter": "tags,cellView,-all"},
    "kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"},
    "language_info": {"name": "python"},
}

# The project cannot be imported before the notebook is in it, so the first cell gets there with
# the standard library alone: it stays where it started if that holds the project (a laptop, make
# run), else goes to PROJECT (a fresh Colab: /content/simple-rlhf-tiny), mounting Drive first for a
# PROJECT in Drive and cloning REPO_URL when the project is not there. The rest is rlhf/colab.py.
FIRST_CELL = """\
# @title Get the project, set up Colab, import util (the same cell in every notebook)
import os, subprocess, sys
root = "." if os.path.isfile("rlhf/colab.py") else PROJECT  # started outside it (Colab): PROJECT
if root.startswith("/content/drive/"): from google.colab import drive; drive.mount("/content/drive")
if not os.path.isfile(f"{root}/rlhf/colab.py"):  # not there yet: clone it
    subprocess.run(["git", "clone", "-q", "--depth=1", REPO_URL, root], check=True)
os.chdir(root); sys.path.insert(0, os.getcwd())
from rlhf.colab import in_colab, setup_colab
setup_colab()  # Colab only: pip-installs what requirements.txt wants and lacks (never torch)
import util  # only now: it imports transformers
print("project:", os.getcwd(), "| Colab:", in_colab(), "| GPU:", util.has_gpu())"""
FIRST_CELL_MARK = "# @title "  # a build replaces any cell that starts so, whatever its title (an older first cell too)
# The top of every notebook: a link that opens it from GitHub in Colab (rlhf/colab.py, GITHUB_REPO)
BADGE = "[![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)]({link})"
BADGE_MARK = BADGE.split("]", 1)[0]


def first_cell() -> nbformat.NotebookNode:
    """FIRST_CELL as a code cell; Colab shows it folded, as a form."""
    return nbformat.v4.new_code_cell(FIRST_CELL, metadata={"cellView": "form"})


def badge_cell(stem: str) -> nbformat.NotebookNode:
    """The "Open in Colab" badge of notebook `stem` (e.g. "0_download"), a markdown cell."""
    return nbformat.v4.new_markdown_cell(BADGE.format(link=colab_link(f"{stem}.ipynb")))


def parameters_index(cells, name: str) -> int:
    tagged = [i for i, cell in enumerate(cells) if "parameters" in cell.metadata.get("tags", [])]
    if len(tagged) != 1:
        raise ValueError(f"{name}: needs exactly one cell tagged parameters, has {len(tagged)}")
    return tagged[0]


def read_source(source: Path) -> nbformat.NotebookNode:
    """The source as a notebook: the Colab badge on top, the current first cell right after the
    parameters cell."""
    notebook = jupytext.read(source, fmt=FORMAT)
    written = (FIRST_CELL_MARK, BADGE_MARK)
    cells = [c for c in notebook.cells if not c.source.startswith(written)]
    at = parameters_index(cells, source.name) + 1
    notebook.cells = [badge_cell(source.stem)] + cells[:at] + [first_cell()] + cells[at:]
    notebook.metadata = nbformat.from_dict(METADATA)
    return notebook


def notebook_cells(source: Path) -> list:
    """The cells of a source, first cell included (tools/run_stage.py runs their code)."""
    return read_source(source).cells


def source_text(notebook) -> str:
    """The percent-format script jupytext writes for `notebook`: what its source must hold."""
    return jupytext.writes(notebook, fmt=FORMAT)


def key(cell) -> tuple:
    return cell.cell_type, cell.source, tuple(cell.metadata.get("tags", []))


def with_outputs(notebook, executed):
    """`notebook` with the outputs of the cells of `executed` that have the same text, in order."""
    done = [c for c in (executed.cells if executed else []) if c.cell_type == "code"]
    for cell in notebook.cells:
        if cell.cell_type != "code":
            continue
        match = next((i for i, old in enumerate(done) if key(old) == key(cell)), None)
        if match is not None:
            cell.outputs, cell.execution_count = done[match].outputs, done[match].execution_count
            done = done[match + 1:]
    return notebook


# ----------------------------------------------------------------------------- cleaning executed outputs
ELAPSED = re.compile(r"^\[\s*\d+\.\ds\] ", re.M)  # rlhf.runtime.RunLog's prefix
DROP_MIME = ("application/vnd.jupyter.widget-view+json",)


def clean_text(text: str, root: Path) -> str:
    text = text.replace(str(root) + "/", "").replace(str(root), ".")
    return ELAPSED.sub("", text)


def clean_outputs(cell, root: Path) -> list:
    """The outputs of an executed cell without what changes between runs and machines."""
    kept = []
    for output in cell.get("outputs", []):
        if output.output_type == "stream":
            if output.name == "stderr":  # warnings and progress bars
                continue
            output.text = clean_text(output.text, root)
        elif output.output_type in ("display_data", "execute_result"):
            if any(mime in output.data for mime in DROP_MIME):
                continue
            for mime in ("text/plain", "text/html", "text/markdown"):
                if mime in output.data:
                    output.data[mime] = clean_text(output.data[mime], root)
            output.metadata = {}
        kept.append(output)
    return kept


def executed_notebook(path: Path, root: Path = ROOT):
    """A notebook executed by papermill, cleaned: no injected-parameters cell, no run metadata."""
    notebook = nbformat.read(path, as_version=4)
    notebook.cells = [c for c in notebook.cells if "injected-parameters" not in c.metadata.get("tags", [])]
    for cell in notebook.cells:
        if cell.cell_type == "code":
            cell.outputs = clean_outputs(cell, root)
    return notebook


# ----------------------------------------------------------------------------- building and checking

def build(source: Path, outputs_from: Path | None = None) -> str:
    """The notebook of `source` as text: the source's cells, with the outputs of `outputs_from`
    (an executed notebook) or else those the committed notebook has for unchanged cells."""
    notebook = read_source(source)
    target = ROOT / f"{source.stem}.ipynb"
    if outputs_from is not None:
        executed = executed_notebook(outputs_from)
    else:
        executed = nbformat.read(target, as_version=4) if target.exists() else None
    with_outputs(notebook, executed)
    for i, cell in enumerate(notebook.cells):
        cell.id = f"{source.stem}-{i}"
        cell.metadata = {k: v for k, v in cell.metadata.items() if k in ("tags", "cellView")}
    return nbformat.writes(notebook) + "\n"


def problems(source: Path) -> list[str]:
    """What is out of date between a source, its notebook and rlhf/colab.py."""
    found = []
    expected = read_source(source)
    if source.read_text() != source_text(expected):
        found.append(f"{source.relative_to(ROOT)} (its first cell or jupytext's layout)")
    target = ROOT / f"{source.stem}.ipynb"
    if not target.exists():
        return found + [f"{target.name} (missing)"]
    committed = nbformat.read(target, as_version=4)
    if [key(c) for c in committed.cells] != [key(c) for c in expected.cells]:
        found.append(f"{target.name} (its cells differ from {source.relative_to(ROOT)})")
    return found


def main(argv: list[str]) -> int:
    sources = sorted(SOURCES.glob("[0-9]_*.py"))
    if "--check" in argv:
        found = [p for source in sources for p in problems(source)]
        if found:
            print("out of date (run make notebooks):\n  " + "\n  ".join(found))
        return 1 if found else 0
    runs = Path(argv[argv.index("--outputs") + 1]) if "--outputs" in argv else None
    for source in sources:
        source.write_text(source_text(read_source(source)))  # the current first cell, jupytext's layout
        executed = runs / f"{source.stem}.ipynb" if runs else None
        if executed is not None and not executed.exists():
            raise SystemExit(f"{executed} is missing: run the notebooks first (make run PRESET=tiny)")
        (ROOT / f"{source.stem}.ipynb").write_text(build(source, executed))
        print(f"{source.stem}.ipynb" + (f" with the outputs of {executed}" if executed else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
