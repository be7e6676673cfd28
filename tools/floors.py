"""The lowest versions requirements.txt admits, and a check that they run the project (make floors).

    python tools/floors.py pins [--requirements requirements.txt]   print name==floor, one a line
    python tools/floors.py run  [--tests "tests -x ..."]             in the floors environment:

`run` checks that this interpreter has exactly the floors installed and that papermill's kernel
is this interpreter, then runs the `ci` preset of the five notebooks and the tests in a scratch
copy of the project (the user's model/ and runs/ are not touched). Every requirement must have a
floor (`>=`); a requirement without one is an error, so no package escapes the check. Needs only
the standard library for `pins` (the Makefile runs it before any environment exists).
"""
from __future__ import annotations

import argparse
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
REQUIREMENT = re.compile(r"^(?P<name>[A-Za-z0-9][A-Za-z0-9._-]*)(?P<extras>\[[^\]]*\])?\s*(?P<spec>[^;]*)$")


def parse_requirements(path: Path) -> list[tuple[str, str]]:
    """(name, floor) for every requirement line of `path`: `name>=floor` with optional upper bounds."""
    floors = []
    for number, raw in enumerate(path.read_text().splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        match = REQUIREMENT.match(line)
        if not match:
            raise ValueError(f"{path}:{number}: cannot read {raw!r} (expected name>=version[,<bound])")
        clauses = [c.strip() for c in match["spec"].split(",") if c.strip()]
        lows = [c[2:].strip() for c in clauses if c.startswith(">=")]
        if len(lows) != 1:
            raise ValueError(f"{path}:{number}: {match['name']} needs exactly one floor (>=version), "
                             f"got {match['spec']!r}")
        floors.append((match["name"], lows[0]))
    return floors


def pins(path: Path = ROOT / "requirements.txt") -> list[str]:
    """name==floor for every requirement: what `make floors` installs."""
    return [f"{name}=={floor}" for name, floor in parse_requirements(path)]


def installed_mismatches(path: Path = ROOT / "requirements.txt") -> list[str]:
    """The requirements whose installed version (local label like +cpu ignored) is not the floor."""
    from importlib.metadata import PackageNotFoundError, version

    def same(installed: str, floor: str) -> bool:  # 2.6.0+cpu is 2.6.0; 5.23 is 5.23.0
        parts = lambda v: [int(p) for p in re.findall(r"\d+", v.split("+")[0])]
        a, b = parts(installed), parts(floor)
        width = max(len(a), len(b))
        return a + [0] * (width - len(a)) == b + [0] * (width - len(b))

    wrong = []
    for name, floor in parse_requirements(path):
        try:
            got = version(name)
        except PackageNotFoundError:
            got = "not installed"
        if got == "not installed" or not same(got, floor):
            wrong.append(f"{name}: {got}, floor {floor}")
    return wrong


def kernel_prefix(workdir: Path) -> str:
    """sys.prefix of the kernel papermill starts (the one the notebooks run in)."""
    import nbformat
    import papermill

    source, executed = workdir / "kernel_probe.ipynb", workdir / "kernel_probe.out.ipynb"
    notebook = nbformat.v4.new_notebook()
    notebook.cells.append(nbformat.v4.new_code_cell("import sys; print(sys.prefix)"))
    nbformat.write(notebook, source)
    papermill.execute_notebook(str(source), str(executed), kernel_name="python3", progress_bar=False)
    return nbformat.read(executed, as_version=4).cells[0].outputs[0]["text"].strip()


def copy_project(dest: Path) -> Path:
    """The project without environments, git data, caches and outputs (model/, runs/, tokenizer/)."""
    def ignore(folder, names):
        top = Path(folder).resolve() == ROOT
        return {n for n in names
                if n.startswith(".venv") or n in {"__pycache__", ".pytest_cache", ".ipynb_checkpoints"}
                or (top and (n in {"model", "runs", "tokenizer"} or (n.startswith(".") and n != ".ci")))}

    shutil.copytree(ROOT, dest, ignore=ignore)
    return dest


def run(tests: str) -> int:
    wrong = installed_mismatches()
    if wrong:
        print("not the floors:\n  " + "\n  ".join(wrong))
        return 1
    print("floors installed: " + " ".join(pins()), flush=True)
    with tempfile.TemporaryDirectory(prefix="floors-") as tmp:
        prefix = kernel_prefix(Path(tmp))
        if Path(prefix).resolve() != Path(sys.prefix).resolve():
            print(f"papermill's python3 kernel runs in {prefix}, not in {sys.prefix}")
            return 1
        project = copy_project(Path(tmp) / "project")
        start = time.time()
        steps = [[sys.executable, "tools/run_pipeline.py", "--preset", "ci"]]
        if tests.strip():
            steps.append([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *shlex.split(tests)])
        for command in steps:
            print("$ " + " ".join(command[1:] if command[0] == sys.executable else command), flush=True)
            if subprocess.run(command, cwd=project).returncode != 0:
                print(f"FAILED on the floors after {time.time() - start:.0f} s")
                return 1
    print(f"floors OK: the ci pipeline{' and the tests' if tests.strip() else ''} passed "
          f"in {time.time() - start:.0f} s")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("pins").add_argument("--requirements", type=Path, default=ROOT / "requirements.txt")
    sub.add_parser("run").add_argument("--tests", default="", help="pytest arguments; empty: no tests")
    args = parser.parse_args()
    if args.command == "pins":
        print("\n".join(pins(args.requirements)))
        return 0
    return run(args.tests)


if __name__ == "__main__":
    sys.exit(main())
