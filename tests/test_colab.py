"""The first cell of every notebook (tools/build_notebooks.py's FIRST_CELL, then rlhf/colab.py):
run where it started inside the project, started elsewhere with PROJECT naming a copy under any
name, on a fresh Colab where it clones REPO_URL, with PROJECT in Drive (mounted first); the
package plan. Ends with notebook 0 run as on a fresh Colab: nothing there, the project cloned."""
import os
import shutil
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest
from packaging.requirements import Requirement

from conftest import ROOT, copy_project
from rlhf import colab

sys.path.insert(0, str(ROOT / "tools"))
from build_notebooks import FIRST_CELL, first_cell  # noqa: E402

REQUIREMENTS = [Requirement(line) for line in
                ["torch>=2.1", "transformers>=5.0,<6", "numpy>=1.26", "pytest>=8.0"]]
NO_REPO = "/nonexistent/repo.git"  # a clone from here fails: the cell must not need one


def run_first_cell(cwd: Path, project: str, repo_url: str = NO_REPO, env=None):
    """The first cell as papermill runs it: the parameters, then the cell; prints where util came
    from. PYTHONPATH is emptied, so rlhf and util come only from the folder the cell went to."""
    code = f"PROJECT = {project!r}\nREPO_URL = {repo_url!r}\n{FIRST_CELL}\nprint('util:', util.__file__)"
    base = {k: v for k, v in os.environ.items() if k != "COLAB_RELEASE_TAG"}  # not Colab unless asked
    env = {**base, "PYTHONPATH": "", **(env or {})}
    return subprocess.run([sys.executable, "-c", code], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=300)


def project_copy(folder: Path) -> Path:
    """A scratch copy of the project in `folder`, which is made."""
    folder.mkdir(parents=True)
    return copy_project(folder)


def git_repo(project: Path, bare: Path) -> Path:
    """`project` committed into a bare repository at `bare`, which the cell can clone."""
    git = ["git", "-c", "user.name=test", "-c", "user.email=test@example.com", "-C", str(project)]
    subprocess.run(["git", "init", "-q", str(project)], check=True)
    subprocess.run([*git, "add", "."], check=True)
    subprocess.run([*git, "commit", "-q", "-m", "project"], check=True)
    subprocess.run(["git", "clone", "-q", "--bare", str(project), str(bare)], check=True)
    return bare


def test_importing_rlhf_colab_loads_neither_torch_nor_transformers():
    code = "import sys, rlhf.colab; print(sorted({'torch', 'transformers'} & set(sys.modules)))"
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_the_first_cell_is_short_and_the_same_in_every_notebook():
    """At most 12 lines a reader sees, right after the parameters cell, in every notebook and in
    its paired source (the old cell carried 78 lines of finder)."""
    import jupytext

    assert len(FIRST_CELL.splitlines()) <= 12
    expected = first_cell()["source"]
    for path in sorted(ROOT.glob("[0-4]_*.ipynb")) + sorted((ROOT / "notebooks").glob("[0-4]_*.py")):
        cells = jupytext.read(path).cells
        tagged = next(i for i, c in enumerate(cells) if "parameters" in c["metadata"].get("tags", []))
        assert 'PROJECT = "simple-rlhf-tiny"' in cells[tagged]["source"]
        assert f'REPO_URL = "{colab.REPO_URL}"' in cells[tagged]["source"]
        assert cells[tagged + 1]["source"] == expected, path.name


def test_started_in_the_project_it_stays_there(tmp_path):
    project = project_copy(tmp_path / "repo")
    result = run_first_cell(project, "somewhere-else")
    assert result.returncode == 0, result.stderr[-2000:]
    assert f"project: {project} | Colab: False" in result.stdout
    assert f"util: {project / 'util.py'}" in result.stdout
    assert not (project / "somewhere-else").exists()


def test_started_elsewhere_it_goes_to_project_under_any_name(tmp_path):
    """A laptop, a notebook run from another folder (papermill without --cwd): PROJECT names the
    copy, whatever its folder is called; nothing is cloned and nothing written where it started."""
    copy = project_copy(tmp_path / "drive" / "MyDrive" / "my_rlhf_copy")
    work = tmp_path / "work"
    work.mkdir()
    result = run_first_cell(work, str(copy))
    assert result.returncode == 0, result.stderr[-2000:]
    assert f"project: {copy} |" in result.stdout and f"util: {copy / 'util.py'}" in result.stdout
    assert list(work.iterdir()) == []


def test_a_project_in_drive_mounts_drive_before_looking(tmp_path):
    """PROJECT under /content/drive/: Drive is mounted first (here a stand-in google.colab whose
    mount stops the cell, so nothing is cloned into an unmounted Drive)."""
    fake = tmp_path / "fake" / "google" / "colab"
    fake.mkdir(parents=True)
    (fake.parent / "__init__.py").write_text("")
    (fake / "__init__.py").write_text("")
    (fake / "drive.py").write_text("def mount(path):\n    raise SystemExit(f'mounted {path}')\n")
    work = tmp_path / "work"
    work.mkdir()
    result = run_first_cell(work, "/content/drive/MyDrive/simple-rlhf-tiny",
                            env={"PYTHONPATH": str(tmp_path / "fake")})
    assert result.returncode == 1 and "mounted /content/drive" in result.stderr
    assert list(work.iterdir()) == []


def test_project_naming_another_folder_stops_with_gits_message(tmp_path):
    """PROJECT is a folder that holds something else: git refuses to clone into it and says why."""
    repo = tmp_path / "repo"
    repo.mkdir()
    (repo / "README.md").write_text("a repository")
    bare = git_repo(repo, tmp_path / "repo.git")
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    result = run_first_cell(tmp_path, "other", str(bare))
    assert result.returncode == 1
    assert "already exists and is not an empty directory" in result.stderr
    assert (tmp_path / "other" / "notes.txt").read_text() == "mine"


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


def test_notebook_0_runs_as_on_a_fresh_colab(tmp_path):
    """Opened from GitHub on a fresh Colab: the working directory an empty /content, nothing cloned,
    COLAB_RELEASE_TAG set. The first cell clones REPO_URL (here a local repository) into PROJECT's
    default, content/simple-rlhf-tiny, and notebook 0 writes its model there. The venv already
    holds every requirement in range, so setup_colab plans nothing and pip is never run."""
    requirements = colab.read_requirements(ROOT / "requirements.txt")
    planned = colab.plan_installs(requirements, colab.installed_versions())
    if planned:
        pytest.skip(f"this environment lacks {planned}: the fake Colab would pip-install them")
    source = project_copy(tmp_path / "source")
    shutil.copy(ROOT / "requirements.txt", source)
    bare = git_repo(source, tmp_path / "repo.git")
    content = tmp_path / "content"
    content.mkdir()
    out = tmp_path / "executed.ipynb"
    cmd = [sys.executable, "-m", "papermill", str(source / "0_download.ipynb"), str(out),
           "-p", "PRESET", "ci", "-p", "REPO_URL", str(bare),
           "--cwd", str(content), "-k", "python3", "--no-progress-bar"]
    env = {**os.environ, "COLAB_RELEASE_TAG": "test", "MPLBACKEND": "Agg", "PYTHONPATH": ""}
    result = subprocess.run(cmd, cwd=content, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    clone = content / "simple-rlhf-tiny"
    assert (clone / ".git").is_dir() and (clone / "model" / "base" / "config.json").is_file()
    assert [p.name for p in content.iterdir()] == ["simple-rlhf-tiny"]  # nothing else written there
    assert not (source / "model").exists()
    outputs = "".join("".join(o.get("text", [])) for c in nbformat.read(out, as_version=4).cells
                      for o in c.get("outputs", []))
    assert f"project: {clone} | Colab: True" in outputs
    assert "transformers" in outputs and "wanted" in outputs  # setup_colab's version table
