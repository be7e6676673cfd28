"""The committed notebooks: paired with their sources (jupytext), carrying the outputs of a
`make run PRESET=tiny` that a reader can see on GitHub, cleaned of what changes from run to run."""
import json
import re
import signal
import subprocess
import sys

import nbformat
import papermill
import pytest
from papermill.translators import PythonTranslator

from conftest import NOTEBOOKS, ROOT

sys.path.insert(0, str(ROOT / "tools"))
import build_notebooks  # noqa: E402
import run_pipeline  # noqa: E402
from rlhf.colab import colab_link  # noqa: E402

# A line break between two Chinese characters (or full-width punctuation) renders as a stray
# space; `> ` continues a quoted block on the next line.
CJK = "[\u2e80-\u9fff\u3000-\u303f\uff00-\uffef]"
CJK_BREAK = re.compile(rf"{CJK}\n[ \t]*(?:>[ \t]*)*{CJK}")


def read(name: str) -> nbformat.NotebookNode:
    return nbformat.read(ROOT / f"{name}.ipynb", as_version=4)


def test_every_notebook_equals_its_source():
    """Cell by cell (type, text, tags), and each source is what jupytext writes for its notebook."""
    result = subprocess.run([sys.executable, str(ROOT / "tools" / "build_notebooks.py"), "--check"],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stdout
    for name in NOTEBOOKS:
        notebook = json.loads((ROOT / f"{name}.ipynb").read_text())
        assert notebook["metadata"] == build_notebooks.METADATA
        assert notebook["metadata"]["jupytext"]["formats"] == "ipynb,notebooks//py:percent"


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_committed_outputs_are_there_and_clean(name):
    path = ROOT / f"{name}.ipynb"
    assert path.stat().st_size < 400_000, "outputs small enough to review"
    notebook = nbformat.read(path, as_version=4)
    code = [c for c in notebook.cells if c.cell_type == "code" and "parameters" not in c.metadata.get("tags", [])]
    assert sum(bool(c.outputs) for c in code) >= len(code) - 3, "the cells' outputs are committed"
    for cell in code:
        assert set(cell.metadata) <= {"tags", "cellView"}  # no execution times, no papermill state
        for output in cell.outputs:
            assert output.get("name") != "stderr"
            assert "application/vnd.jupyter.widget-view+json" not in output.get("data", {})
            text = output.get("text", "") + "".join(str(v) for k, v in output.get("data", {}).items() if k.startswith("text"))
            assert str(ROOT) not in text and not re.search(r"/(tmp|home|root|work|content|Users)/", text), text[:200]
            assert not build_notebooks.ELAPSED.search(text)


def cell(source, outputs=(), **metadata):
    made = nbformat.v4.new_code_cell(source, metadata=metadata)
    made.outputs = [nbformat.v4.new_output("stream", name="stdout", text=text) for text in outputs]
    return made


def test_a_build_keeps_the_outputs_of_unchanged_cells_only():
    committed = nbformat.v4.new_notebook(cells=[cell("a = 1", ["one"]), cell("print(a)", ["1"]), cell("b", ["2"])])
    edited = nbformat.v4.new_notebook(cells=[cell("a = 1"), cell("print(a + 1)"), cell("b")])
    built = build_notebooks.with_outputs(edited, committed)
    assert [[o.text for o in c.outputs] for c in built.cells] == [["one"], [], ["2"]]


def test_executed_outputs_are_cleaned(tmp_path):
    root = tmp_path / "project"
    executed = nbformat.v4.new_notebook(cells=[
        cell("PRESET = 'auto'", tags=["parameters"]),
        cell("PRESET = 'tiny'", tags=["injected-parameters"]),
        cell("run()", [f"project: {root} | saved {root}/model/actor\n", "[   12.3s] epoch 1: loss 0.5\n"],
             papermill={"duration": 1.5}, execution={"iopub.status.busy": "2025-01-01"})])
    executed.cells[2].outputs += [nbformat.v4.new_output("stream", name="stderr", text="50%|#####"),
                                  nbformat.v4.new_output("display_data", data={
                                      "application/vnd.jupyter.widget-view+json": {"model_id": "x"},
                                      "text/plain": "train: 0%"})]
    nbformat.write(executed, tmp_path / "run.ipynb")
    cleaned = build_notebooks.executed_notebook(tmp_path / "run.ipynb", root)
    assert [c.source for c in cleaned.cells] == ["PRESET = 'auto'", "run()"]
    assert [o.text for o in cleaned.cells[1].outputs] == ["project: . | saved model/actor\n", "epoch 1: loss 0.5\n"]


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_papermill_parses_every_line_of_the_parameters_cell(name, caplog):
    """`make run` injects PRESET, DATA, SET through papermill; a line its parser cannot read is
    printed to the user as "Unable to parse line ..." (a quote inside a comment did that)."""
    nb = nbformat.read(ROOT / f"{name}.ipynb", as_version=4)
    cell = next(c for c in nb.cells if "parameters" in c.metadata.get("tags", []))
    assignments = [line.split("=")[0].strip() for line in cell.source.splitlines()
                   if re.match(r"^[A-Z_]+\s*=", line)]
    with caplog.at_level("WARNING"):
        parsed = [p.name for p in PythonTranslator.inspect(cell)]
    assert parsed == assignments and "PRESET" in parsed
    assert "Unable to parse" not in caplog.text


@pytest.mark.parametrize("curve", [True, False], ids=["curve", "no-curve"])
def test_make_runs_kernels_start_without_the_tcp_encryption_warning(tmp_path, capfd, monkeypatch, curve):
    """ipykernel 7.3+ warns on stderr, at every notebook, when its TCP sockets have no CurveZMQ
    keys; run_pipeline's kernel manager provisions them, or (a pyzmq without CurveZMQ, played
    here) uses IPC sockets, so a new user sees no such line either way."""
    if not curve:
        monkeypatch.setattr(run_pipeline.zmq, "has", lambda feature: False)
    source = tmp_path / "two.ipynb"
    nbformat.write(nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("print(6 * 7)")]), source)
    out = papermill.execute_notebook(str(source), str(tmp_path / "out.ipynb"), kernel_name="python3",
                                     progress_bar=False, kernel_manager_class=run_pipeline.CurveKernelManager)
    assert out.cells[0].outputs[0]["text"] == "42\n"
    assert "without encryption" not in capfd.readouterr().err


def test_make_runs_kernels_get_no_sigint_at_shutdown(tmp_path):
    """jupyter_client interrupts every kernel (its whole process group) before shutting it down;
    landing while the kernel handled a last message, that SIGINT printed "KeyboardInterrupt caught
    in kernel." after some notebooks of a make run. The signals sent are recorded here."""
    sent = []

    class Recording(run_pipeline.CurveKernelManager):
        async def _async_signal_kernel(self, signum):
            sent.append(signum)
            await super()._async_signal_kernel(signum)

    source = tmp_path / "one.ipynb"
    nbformat.write(nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("print('ready')")]), source)
    out = papermill.execute_notebook(str(source), str(tmp_path / "out.ipynb"), kernel_name="python3",
                                     progress_bar=False, kernel_manager_class=Recording)
    assert out.cells[0].outputs[0]["text"] == "ready\n"
    assert signal.SIGINT not in sent


def test_a_build_replaces_an_older_first_cell_and_badge(tmp_path):
    """A source still carrying another first cell (any `# @title` cell, e.g. the old 78-line
    finder from a branch merged later) or badge gets exactly the current ones."""
    source = tmp_path / "1_actor.py"
    source.write_text("# %% [markdown]\n# [![Open In Colab](old)](old)\n\n# %% [markdown]\n# # Title\n\n"
                      '# %% tags=["parameters"]\nPRESET = "auto"\n\n'
                      '# %% cellView="form"\n# @title Find the project, set up Colab, import util\nimport os\n\n'
                      "# %%\nprint(1)\n")
    cells = build_notebooks.read_source(source).cells
    assert [c.source for c in cells] == [build_notebooks.badge_cell("1_actor").source, "# Title",
                                         'PRESET = "auto"', build_notebooks.FIRST_CELL, "print(1)"]


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_the_first_code_cell_a_reader_sees_is_short(name):
    """On GitHub the first cell is not folded: at most 12 lines (it was 78 of Colab plumbing)."""
    cells = read(name).cells
    tagged = build_notebooks.parameters_index(cells, name)
    assert cells[tagged + 1].cell_type == "code"
    assert len(cells[tagged + 1].source.splitlines()) <= 12


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_every_notebook_opens_with_its_colab_link(name):
    first = read(name).cells[0]
    assert first.cell_type == "markdown"
    assert f"({colab_link(name + '.ipynb')})" in first.source and "colab-badge.svg" in first.source


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_no_line_break_between_two_chinese_characters_in_markdown(name):
    seams = [m.group() for c in read(name).cells if c.cell_type == "markdown"
             for m in CJK_BREAK.finditer(c.source)]
    assert seams == []



def test_readme_has_no_line_break_between_two_chinese_characters():
    assert [m.group() for m in CJK_BREAK.finditer((ROOT / "README.md").read_text())] == []


def test_readme_links_every_notebook_to_colab():
    readme = (ROOT / "README.md").read_text()
    assert [name for name in NOTEBOOKS if colab_link(f"{name}.ipynb") not in readme] == []


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_a_long_english_table_has_its_chinese_table(name):
    """A table of 8 or more rows keeps every row in its translation (notebook 3's metric table was
    once squashed into one Chinese paragraph that dropped three facts)."""
    for cell in read(name).cells:
        lines = cell.source.splitlines() if cell.cell_type == "markdown" else []
        english = [line for line in lines if line.startswith("|")]
        chinese = [line for line in lines if line.startswith("> |")]
        if len(english) >= 8:
            assert len(chinese) == len(english), english[0]


def test_chinese_terms():
    """Standardisation is 标准化 (白化 is PCA/ZCA whitening in Chinese ML), a proxy metric is 代理指标;
    the notebooks run an iteration step by step (逐步运行), not by pen and paper (手算)."""
    texts = {name: "".join(c.source for c in read(name).cells if c.cell_type == "markdown")
             for name in NOTEBOOKS}
    texts["README.md"] = (ROOT / "README.md").read_text()
    found = {name: [term for term in ("白化", "替代目标") if term in text] for name, text in texts.items()}
    found.update({name: found[name] + ["手算"] for name in NOTEBOOKS if "手算" in texts[name]})
    assert {name: terms for name, terms in found.items() if terms} == {}


def test_the_ppo_picture_is_made_by_the_project_and_shown(tmp_path):
    """tools/make_diagram.py draws the four models and their data flow into a small PNG; the
    committed one is under 100 KB, and README and notebook 3 show it."""
    import make_diagram
    from matplotlib.image import imread

    assert make_diagram.main([str(tmp_path / "flow.png")]) == 0
    height, width, _ = imread(tmp_path / "flow.png").shape
    assert width > height > 300
    texts = " ".join(text for _, _, text, _ in make_diagram.BOXES.values())
    for name in ["actor", "reference", "reward model", "critic", "ref_logprobs", "GAE", "PPO"]:
        assert name in texts
    committed = ROOT / "docs" / "ppo_flow.png"
    assert committed.stat().st_size < 100_000 and imread(committed).shape == (height, width, 4)
    assert "](docs/ppo_flow.png)" in (ROOT / "README.md").read_text()
    assert any("](docs/ppo_flow.png)" in c.source for c in read("3_rlhf").cells if c.cell_type == "markdown")
