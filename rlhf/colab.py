"""Colab plumbing, on the standard library only: importing this module loads neither torch nor
transformers, so a notebook can run it before anything else.

The first code cell of every notebook (written by tools/build_notebooks.py) gets the project in a
few lines before it can import anything from it: where the notebook was started inside the project
(a laptop, `make run`) it stays there; elsewhere (a fresh Colab runtime, in /content) it goes to
the PROJECT parameter, mounting Google Drive first when PROJECT is in Drive and cloning REPO_URL
there when the project is missing. Then it imports `setup_colab` from here.
"""
from __future__ import annotations

import importlib
import importlib.metadata as metadata
import os
import re
import subprocess
import sys
from pathlib import Path

# Where the project is published: the "Open in Colab" links (README, the top of every notebook)
# and the notebooks' REPO_URL parameter, which a fresh Colab runtime clones.
GITHUB_REPO = "your-name/simple-rlhf-tiny"
REPO_URL = f"https://github.com/{GITHUB_REPO}.git"

# Requirements that setup_colab leaves alone: Colab's own CUDA build of torch stays, and Jupyter,
# papermill and pytest serve headless runs and the tests, not a notebook open in Colab.
COLAB_KEEPS = {"torch", "jupyter", "papermill", "pytest"}


def in_colab() -> bool:
    """On Colab, or where COLAB_RELEASE_TAG is set (as in a test that plays Colab)."""
    return "google.colab" in sys.modules or "COLAB_RELEASE_TAG" in os.environ


def colab_link(notebook: str) -> str:
    """The address that opens `notebook` (e.g. "0_download.ipynb") from GitHub in Colab."""
    return f"https://colab.research.google.com/github/{GITHUB_REPO}/blob/main/{notebook}"


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
