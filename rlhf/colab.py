"""Colab plumbing, on the standard library only: importing this module loads neither torch nor
transformers, so a notebook can run it before anything else.

The first code cell of every notebook finds the project with `locate_project` and then calls
`setup_colab`, both before `import util`. The project cannot be imported before it is found, so
tools/build_notebooks.py copies the three functions marked below into that cell; they are
written, and tested, only here.
"""
from __future__ import annotations

import importlib
import importlib.metadata as metadata
import os
import re
import subprocess
import sys
from pathlib import Path

# Requirements that setup_colab leaves alone: Colab's own CUDA build of torch stays, and Jupyter,
# papermill and pytest serve headless runs and the tests, not a notebook open in Colab.
COLAB_KEEPS = {"torch", "jupyter", "papermill", "pytest"}


# --- copied into the first cell of every notebook (tools/build_notebooks.py) -----------------
def in_colab() -> bool:
    """On Colab, or where COLAB_RELEASE_TAG is set (as in a test that plays Colab)."""
    return "google.colab" in sys.modules or "COLAB_RELEASE_TAG" in os.environ


def find_project_root(roots=(), depth: int = 3) -> Path | None:
    """The project (a folder holding util.py and rlhf/) under any name: the working directory or
    one of its parents, else the shallowest one at most `depth` levels below each of `roots` in
    turn. None if there is none."""
    def is_project(folder):
        return (folder / "util.py").is_file() and (folder / "rlhf").is_dir()

    def subfolders(folder):
        try:
            return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
        except OSError:  # missing or unreadable
            return []

    here = Path.cwd()
    for folder in [here, *here.parents]:
        if is_project(folder):
            return folder
    for root in dict.fromkeys(Path(root).resolve() for root in roots):  # each once, in order
        level, levels_left = [root], depth
        while level:
            found = next((folder for folder in level if is_project(folder)), None)
            if found:
                return found.resolve()
            level = [sub for folder in level for sub in subfolders(folder)] if levels_left else []
            levels_left -= 1
    return None


def locate_project(search: str = "", repo_url: str = "", depth: int = 3, log=print) -> Path:
    """Find the project below the folders in `search` (separated by ':'; by default the working
    directory, /content and Drive's MyDrive). On Colab with nothing found, mount Drive and look
    again; then clone `repo_url` into the first search folder; failing all that, stop and say
    what to do."""
    roots = search.split(os.pathsep) if search else [os.getcwd(), "/content", "/content/drive/MyDrive"]
    found = find_project_root(roots, depth)
    if found is None and in_colab():
        try:
            from google.colab import drive
        except ImportError:
            log("Colab, but google.colab cannot be imported (a stand-in?): Drive not mounted")
        else:
            drive.mount("/content/drive")
            found = find_project_root(roots, depth)
    if found is None and repo_url:
        target = Path(roots[0]).resolve() / "simple-rlhf-tiny"
        log(f"cloning {repo_url} into {target}")
        subprocess.run(["git", "clone", "-q", repo_url, str(target)], check=True)
        found = find_project_root([target], depth=0)
    if found is None:
        raise SystemExit(
            f"Cannot find the project (a folder holding util.py and rlhf/) in {os.getcwd()}, its "
            f"parents, or up to {depth} levels below {', '.join(roots)}.\n"
            "Do one of these, then run this cell again:\n"
            "  1. Clone it: in a new cell, run\n"
            "       !git clone <URL of this repository> /content/simple-rlhf-tiny\n"
            "     (or set REPO_URL in the parameters cell above, and this cell clones it).\n"
            "  2. Or upload the project folder, under any name, to your Google Drive (My Drive);\n"
            "     this cell mounts Drive and finds it.")
    return found
# --- end of what the first cell copies -------------------------------------------------------


def canonical(name: str) -> str:
    """A distribution's name as pip compares it (PEP 503): 'Foo_Bar' -> 'foo-bar'."""
    return re.sub(r"[-_.]+", "-", name).lower()


def read_requirements(path) -> list:
    """The requirements in a requirements.txt (comments and blank lines skipped, environment
    markers applied), as packaging's Requirement objects."""
    from packaging.requirements import Requirement

    lines = (line.split("#", 1)[0].strip() for line in Path(path).read_text().splitlines())
    requirements = [Requirement(line) for line in lines if line]
    return [req for req in requirements if req.marker is None or req.marker.evaluate()]


def installed_versions() -> dict[str, str]:
    """{canonical name: version} of every installed distribution."""
    return {canonical(dist.metadata["Name"]): dist.version for dist in metadata.distributions()
            if dist.metadata["Name"]}


def plan_installs(requirements, versions: dict[str, str], keep=COLAB_KEEPS) -> list[str]:
    """The pip requirements to install: each one missing or outside its range, except `keep`."""
    plan = []
    for req in requirements:
        name = canonical(req.name)
        version = versions.get(name)
        in_range = version is not None and req.specifier.contains(version, prereleases=True)
        if name not in keep and not in_range:
            plan.append(str(req))
    return plan


def restart_needed(before: dict[str, str], after: dict[str, str], modules) -> list[str]:
    """The distributions whose version changed although one of their modules was already imported
    (listed in `modules`, e.g. sys.modules): the running kernel still holds the old code."""
    changed = {name for name in before if after.get(name) != before[name]}
    if not changed:
        return []
    top = {module.partition(".")[0] for module in modules}
    imported = {canonical(name) for name in top}
    provides = metadata.packages_distributions()  # top-level module -> distributions
    imported |= {canonical(dist) for module in top for dist in provides.get(module, [])}
    return sorted(changed & imported)


def version_table(requirements, before: dict[str, str], after: dict[str, str],
                  keep=COLAB_KEEPS) -> str:
    """Each requirement: its range, the version before setup_colab, the version now."""
    rows = [("package", "wanted", "was", "now")]
    for req in requirements:
        name = canonical(req.name)
        now = (after.get(name) or "missing") + ("  (left as it is)" if name in keep else "")
        rows.append((req.name, str(req.specifier) or "any", before.get(name) or "missing", now))
    widths = [max(len(row[i]) for row in rows) for i in range(3)]
    return "\n".join("  ".join(cell.ljust(width) for cell, width in zip(row, widths)) + "  " + row[3]
                     for row in rows)


def run_pip(requirements: list[str]) -> None:
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", *requirements], check=True)


def setup_colab(root=".", log=print, pip=run_pip, versions=installed_versions,
                modules=sys.modules) -> list[str]:
    """On Colab: install, in one pip call, what root/requirements.txt asks for and is missing or
    outside its range (never torch, nor the tools in COLAB_KEEPS); print the versions; say to
    restart the runtime when a package that was already imported changed. Elsewhere: nothing.
    Returns what it gave pip. Run it before anything imports transformers."""
    if not in_colab():
        return []
    requirements = read_requirements(Path(root) / "requirements.txt")
    before = versions()
    plan = plan_installs(requirements, before)
    if plan:
        log("[colab] pip install " + " ".join(f'"{req}"' for req in plan))
        pip(plan)
        importlib.invalidate_caches()  # so the new packages can be imported without a restart
    after = versions() if plan else before
    log("[colab] packages, as requirements.txt wants them:")
    log(version_table(requirements, before, after))
    stale = restart_needed(before, after, modules)
    if stale:
        log(f"[colab] RESTART NEEDED: {', '.join(stale)} changed after being imported. Use "
            "Runtime > Restart session, then run the notebook again from the top (what was "
            "installed stays installed).")
    return plan
