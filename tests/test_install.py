"""The install (Makefile, tools/install_torch.sh) and the version files (requirements.txt,
constraints.txt, tools/floors.py) agree with each other and do what the README says. Fast: no
package is installed here; `make floors` is the slow, real check of the floors."""
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))
import floors  # noqa: E402

REQUIREMENTS = [Requirement(line.split("#")[0]) for line in (ROOT / "requirements.txt").read_text().splitlines()
                if line.split("#")[0].strip()]
needs_make = pytest.mark.skipif(shutil.which("make") is None, reason="no make")


def dry_run(*args):
    """The commands `make -n` would run (nothing is run)."""
    return subprocess.run(["make", "-n", *args], cwd=ROOT, capture_output=True, text=True, check=True).stdout


def test_floors_pins_are_the_lower_bounds_of_requirements_txt():
    pins = floors.pins()
    assert len(pins) == len(REQUIREMENTS)
    for pin, requirement in zip(pins, REQUIREMENTS):
        name, floor = pin.split("==")
        assert name == requirement.name
        assert [s.version for s in requirement.specifier if s.operator == ">="] == [floor]
        assert requirement.specifier.contains(floor), f"{pin} is outside {requirement}"


def test_floors_needs_a_floor_on_every_requirement(tmp_path):
    for line in ["numpy", "numpy<2", "numpy==1.26", "numpy>=1.2,>=1.3"]:
        (tmp_path / "r.txt").write_text(f"# comment\n{line}\n")
        with pytest.raises(ValueError, match="r.txt:2"):
            floors.parse_requirements(tmp_path / "r.txt")
    (tmp_path / "r.txt").write_text("a-b_c[x]>=1.0,<2  # why\n\nd>=3\n")
    assert floors.pins(tmp_path / "r.txt") == ["a-b_c==1.0", "d==3"]


def test_floors_check_compares_installed_versions_without_local_labels(monkeypatch):
    import importlib.metadata

    installed = {name: floor for name, floor in floors.parse_requirements(ROOT / "requirements.txt")}
    installed["torch"] += ".0+cpu"  # 2.6 -> 2.6.0+cpu, as the CPU index names it
    monkeypatch.setattr(importlib.metadata, "version", lambda name: installed[name])
    assert floors.installed_mismatches() == []
    floor = installed["transformers"]
    installed["transformers"] = "5.99.0"
    assert floors.installed_mismatches() == [f"transformers: 5.99.0, floor {floor}"]


def test_constraints_pin_every_requirement_but_torch_inside_its_range():
    pins = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, version = line.split("==")
            pins[re.sub(r"[-_.]+", "-", name).lower()] = version
    assert not [name for name in pins if name in {"torch", "triton"} or name.startswith("nvidia-")]
    for requirement in REQUIREMENTS:
        if requirement.name == "torch":
            continue
        assert requirement.name in pins, f"constraints.txt has no pin for {requirement.name}"
        assert requirement.specifier.contains(pins[requirement.name]), \
            f"constraints.txt pins {requirement.name}=={pins[requirement.name]}, outside {requirement}"


def test_tested_torch_is_admitted():
    torch_pin = re.search(r"^TORCH\s*\?=\s*torch==(\S+)", (ROOT / "Makefile").read_text(), re.M)[1]
    requirement = next(r for r in REQUIREMENTS if r.name == "torch")
    assert requirement.specifier.contains(torch_pin)


@needs_make
def test_make_installs_torch_first_then_the_constrained_requirements(tmp_path):
    out = dry_run(f"VENV={tmp_path}/venv", f"{tmp_path}/venv/bin/.installed")
    torch_at, rest_at = out.index("sh tools/install_torch.sh"), out.index("-c constraints.txt -r requirements.txt")
    assert 'import torch' in out[:torch_at] and torch_at < rest_at


@needs_make
def test_make_floors_installs_the_floors_pins_and_checks_them(tmp_path):
    venv = tmp_path / "floors"
    lines = dry_run(f"FLOORS_VENV={venv}", "floors").splitlines()
    pins_at = next(i for i, line in enumerate(lines) if f"tools/floors.py pins > {venv}/floors.txt" in line)
    torch_at = next(i for i, line in enumerate(lines) if "install_torch.sh" in line and f"{venv}/floors.txt" in line)
    rest_at = next(i for i, line in enumerate(lines) if f"{venv}/bin/pip install -q -r {venv}/floors.txt" in line)
    run_at = next(i for i, line in enumerate(lines) if f"{venv}/bin/python tools/floors.py run" in line)
    assert pins_at < torch_at < rest_at < run_at


# ----------------------------------------------------------------------------- tools/install_torch.sh
@pytest.fixture
def fake_tools(tmp_path):
    """A PATH holding only a fake pip (logs its arguments; the CPU index answers with the exit
    status in $CPU_RC) and a fake uname (prints $FAKE_OS)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    log = tmp_path / "pip.log"
    (bin_dir / "pip").write_text(f'#!/bin/sh\necho "$*" >> {log}\n'
                                 'case "$*" in *"--index-url http://cpu.invalid"*) exit "$CPU_RC";; esac\nexit 0\n')
    (bin_dir / "uname").write_text('#!/bin/sh\necho "$FAKE_OS"\n')
    for tool in bin_dir.iterdir():
        tool.chmod(0o755)

    def install(os_name="Linux", cpu_rc=0, gpu=False, **env):
        if gpu:
            (bin_dir / "nvidia-smi").write_text("#!/bin/sh\n")
            (bin_dir / "nvidia-smi").chmod(0o755)
        result = subprocess.run(["/bin/sh", str(ROOT / "tools/install_torch.sh"), str(bin_dir / "pip"), "torch==9.9"],
                                env={"PATH": str(bin_dir), "FAKE_OS": os_name, "CPU_RC": str(cpu_rc),
                                     "TORCH_CPU_INDEX": "http://cpu.invalid", **env},
                                capture_output=True, text=True)
        calls = log.read_text().splitlines() if log.exists() else []
        return result.returncode, calls, result.stdout

    return install


no_gpu_here = pytest.mark.skipif(os.path.exists("/proc/driver/nvidia"), reason="this machine has an NVIDIA driver")


@no_gpu_here
def test_without_a_gpu_torch_comes_from_the_cpu_index(fake_tools):
    rc, calls, said = fake_tools()
    assert rc == 0 and calls == ["install -q --index-url http://cpu.invalid --timeout 5 --retries 0 torch==9.9"]
    assert "CPU build" in said


@no_gpu_here
def test_without_a_gpu_an_unreachable_cpu_index_falls_back_to_the_default_one(fake_tools):
    rc, calls, said = fake_tools(cpu_rc=1)
    assert rc == 0 and calls == ["install -q --index-url http://cpu.invalid --timeout 5 --retries 0 torch==9.9",
                                 "install -q torch==9.9"]
    assert "default index instead" in said


def test_with_a_gpu_torch_comes_from_the_default_index(fake_tools):
    rc, calls, said = fake_tools(gpu=True)
    assert rc == 0 and calls == ["install -q torch==9.9"] and "CUDA" in said


@no_gpu_here
def test_on_macos_torch_comes_from_the_default_index(fake_tools):
    rc, calls, _ = fake_tools(os_name="Darwin")
    assert rc == 0 and calls == ["install -q torch==9.9"]


def test_torch_index_overrides_the_choice(fake_tools):
    rc, calls, _ = fake_tools(gpu=True, TORCH_INDEX="http://cu.invalid")
    assert rc == 0 and calls == ["install -q --index-url http://cu.invalid torch==9.9"]


def test_a_failing_default_install_fails(fake_tools, tmp_path):
    pip = tmp_path / "bin" / "pip"
    pip.write_text(pip.read_text().replace("exit 0\n", "exit 3\n"))
    rc, calls, _ = fake_tools(cpu_rc=1) if not os.path.exists("/proc/driver/nvidia") else fake_tools(gpu=True)
    assert rc == 3 and calls[-1] == "install -q torch==9.9"
