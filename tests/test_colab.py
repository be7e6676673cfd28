"""The first cell of every notebook (rlhf/colab.py): finding the project from a fresh Colab VM,
cloning it, stopping with the steps, and the package plan. Ends with notebook 0 run as Colab
would run it: working directory elsewhere, the project in a fake Drive under another name."""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from packaging.requirements import Requirement

from conftest import ROOT, copy_project
from rlhf import colab

REQUIREMENTS = [Requirement(line) for line in
                ["torch>=2.1", "transformers>=5.0,<6", "numpy>=1.26", "pytest>=8.0"]]


def make_project(folder: Path) -> Path:
    """The smallest folder the finder accepts: util.py and rlhf/."""
    (folder / "rlhf").mkdir(parents=True)
    (folder / "util.py").write_text("")
    return folder


@pytest.fixture
def elsewhere(tmp_path, monkeypatch):
    """An empty working directory, outside any project; not on Colab."""
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    monkeypatch.delenv("COLAB_RELEASE_TAG", raising=False)
    return tmp_path


def test_importing_rlhf_colab_loads_neither_torch_nor_transformers():
    code = "import sys, rlhf.colab; print(sorted({'torch', 'transformers'} & set(sys.modules)))"
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_finds_the_project_under_another_name_two_levels_deep_in_drive(elsewhere):
    drive = elsewhere / "drive" / "MyDrive"
    project = make_project(drive / "courses" / "my_rlhf_copy")
    (drive / "courses" / "notes").mkdir()
    assert colab.find_project_root([elsewhere / "content", drive]) == project.resolve()


def test_the_search_stops_at_its_depth(elsewhere):
    drive = elsewhere / "MyDrive"
    project = make_project(drive / "a" / "b" / "c" / "project")  # four levels down
    assert colab.find_project_root([drive], depth=3) is None
    assert colab.find_project_root([drive], depth=4) == project.resolve()


def test_the_working_directory_and_its_parents_come_first(elsewhere, monkeypatch):
    drive = elsewhere / "MyDrive"
    make_project(drive / "another_copy")
    here = make_project(elsewhere / "here")
    (here / "notebooks").mkdir()
    monkeypatch.chdir(here / "notebooks")
    assert colab.find_project_root([drive]) == here.resolve()


def test_nothing_found_stops_with_the_steps(elsewhere, monkeypatch):
    """On a fake Colab (google.colab not importable) it says Drive was not mounted and goes on,
    then stops with the steps, not an ImportError."""
    monkeypatch.setenv("COLAB_RELEASE_TAG", "test")
    lines = []
    with pytest.raises(SystemExit) as stop:
        colab.locate_project(str(elsewhere / "content"), repo_url="", log=lines.append)
    assert any("Drive not mounted" in line for line in lines)
    message = str(stop.value)
    assert "!git clone" in message and "/content/simple-rlhf-tiny" in message
    assert "REPO_URL" in message and "Google Drive" in message and "run this cell again" in message


def test_clones_repo_url_when_nothing_is_found(elsewhere):
    source = make_project(elsewhere / "source")
    git = ["git", "-c", "user.name=test", "-c", "user.email=test@example.com"]
    subprocess.run([*git, "init", "-q", str(source)], check=True)
    (source / "rlhf" / "__init__.py").write_text("")
    subprocess.run([*git, "-C", str(source), "add", "."], check=True)
    subprocess.run([*git, "-C", str(source), "commit", "-q", "-m", "project"], check=True)
    bare = elsewhere / "repo.git"
    subprocess.run(["git", "clone", "-q", "--bare", str(source), str(bare)], check=True)
    content = elsewhere / "content"
    content.mkdir()
    found = colab.locate_project(str(content), repo_url=str(bare), log=lambda line: None)
    assert found == (content / "simple-rlhf-tiny").resolve()
    assert (found / "util.py").is_file()


def test_plan_installs_what_is_missing_or_out_of_range_never_torch():
    versions = {"torch": "1.0", "transformers": "4.57.1", "pytest": "7.0"}  # numpy missing
    assert colab.plan_installs(REQUIREMENTS, versions) == ["transformers<6,>=5.0", "numpy>=1.26"]
    in_range = {"torch": "2.5.1", "transformers": "5.2.0", "numpy": "2.0.2", "pytest": "8.3.0"}
    assert colab.plan_installs(REQUIREMENTS, in_range) == []


def test_setup_colab_installs_once_and_asks_for_a_restart(tmp_path, monkeypatch):
    (tmp_path / "requirements.txt").write_text("# comment\n" + "\n".join(map(str, REQUIREMENTS)) + "\n")
    versions = {"torch": "2.5.1", "transformers": "4.57.1", "numpy": "2.0.2", "pytest": "8.3.0"}
    calls, lines = [], []

    def fake_pip(plan):
        calls.append(plan)
        versions["transformers"] = "5.2.0"

    run = dict(log=lines.append, pip=fake_pip, versions=lambda: dict(versions))
    monkeypatch.delenv("COLAB_RELEASE_TAG", raising=False)
    assert colab.setup_colab(tmp_path, **run) == [] and not calls  # not on Colab: nothing
    monkeypatch.setenv("COLAB_RELEASE_TAG", "test")
    plan = colab.setup_colab(tmp_path, **run, modules={"transformers.models": None, "os": None})
    assert plan == calls[0] == ["transformers<6,>=5.0"] and len(calls) == 1
    text = "\n".join(lines)
    assert "4.57.1" in text and "5.2.0" in text  # the version table, before and after
    assert "RESTART NEEDED: transformers" in text and "Restart session" in text
    lines.clear()
    assert colab.setup_colab(tmp_path, **run, modules={"os": None}) == []  # all in range now
    assert not any("RESTART" in line for line in lines)


def test_every_notebook_carries_the_same_first_cell():
    """Right after the parameters cell, in every notebook and in its paired source."""
    import jupytext
    sys.path.insert(0, str(ROOT / "tools"))
    from build_notebooks import first_cell

    expected = first_cell()["source"]
    for path in sorted(ROOT.glob("[0-4]_*.ipynb")) + sorted((ROOT / "notebooks").glob("[0-4]_*.py")):
        cells = jupytext.read(path).cells
        tagged = next(i for i, c in enumerate(cells) if "parameters" in c["metadata"].get("tags", []))
        assert 'PROJECT_SEARCH = ""' in cells[tagged]["source"]
        assert 'REPO_URL = ""' in cells[tagged]["source"]
        assert cells[tagged + 1]["source"] == expected, path.name


def test_notebook_0_runs_as_on_a_fresh_colab(tmp_path):
    """The project in a fake Drive under another name, the working directory an empty folder
    elsewhere, COLAB_RELEASE_TAG set. The venv already holds every requirement in range, so
    setup_colab plans nothing and pip is never run."""
    requirements = colab.read_requirements(ROOT / "requirements.txt")
    planned = colab.plan_installs(requirements, colab.installed_versions())
    if planned:
        pytest.skip(f"this environment lacks {planned}: the fake Colab would pip-install them")
    content, drive = tmp_path / "content", tmp_path / "drive" / "MyDrive"
    content.mkdir()
    (drive / "some_other_name").mkdir(parents=True)
    project = copy_project(drive / "some_other_name")
    shutil.copy(ROOT / "requirements.txt", project)
    out = tmp_path / "executed.ipynb"
    cmd = [sys.executable, "-m", "papermill", str(project / "0_download.ipynb"), str(out),
           "-p", "PRESET", "ci", "-p", "PROJECT_SEARCH", f"{content}{os.pathsep}{drive}",
           "--cwd", str(content), "-k", "python3", "--no-progress-bar"]
    env = {**os.environ, "COLAB_RELEASE_TAG": "test", "MPLBACKEND": "Agg"}
    result = subprocess.run(cmd, cwd=content, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert (project / "model" / "base" / "config.json").is_file()
    assert list(content.iterdir()) == []  # nothing written where the notebook started
    outputs = "".join("".join(o.get("text", [])) for c in json.loads(out.read_text())["cells"]
                      for o in c.get("outputs", []))
    assert f"project: {project.resolve()} | Colab: True" in outputs
    assert "transformers" in outputs and "wanted" in outputs  # setup_colab's version table
