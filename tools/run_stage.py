"""Run one stage's notebook source as a plain script: for `accelerate launch`, torchrun or SSH.

    python tools/run_stage.py 1 --preset tiny --data dataset
    python tools/run_stage.py 0 --preset opt-125m --model facebook/opt-1.3b   # another base model
    accelerate launch --config_file configs/accelerate/ddp.yaml tools/run_stage.py 1 --preset opt-125m
    python tools/run_stage.py 3 --preset tiny --ppo.lora_rank 8 --ppo.iterations 20   # any config field
    python tools/run_stage.py 3 --set "ppo.lora_rank=8 track.report_to=none"       # the same, as make run's SET

Every config field is a flag, `--stage.field VALUE`, its help the comment written next to the
field in rlhf/config.py (`--help` lists them all); an unknown or ill-typed one stops before the stage runs.

A notebook source (notebooks/N_*.py) is ordinary Python; this runs its code cells in order, the
shared first cell included (tools/build_notebooks.py), with PRESET and DATA set right after the
parameters cell (what papermill does). Plots go to the non-interactive backend. In a
multi-process run every process runs the stage; only rank 0 writes checkpoints and logs.
"""
from __future__ import annotations

import argparse
import os
import shlex
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))
from build_notebooks import notebook_cells  # noqa: E402


def stage_code(number: str, preset: str, data: str, model: str = "", overrides: str = "") -> str:
    """The code of notebook `number`, with the parameters overridden after their cell (MODEL, the
    base model's hub id, only where given: notebook 0 has it)."""
    source = next((ROOT / "notebooks").glob(f"{number}_*.py"))
    code = []
    for cell in notebook_cells(source):
        if cell["cell_type"] != "code":
            continue
        code.append("".join(cell["source"]))
        if "parameters" in cell["metadata"].get("tags", []):
            code.append(f"PRESET = {preset!r}\nDATA = {data!r}" + (f"\nMODEL = {model!r}" if model else "")
                        + (f"\nSET = {overrides!r}" if overrides else ""))
    return "\n\n".join(code) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("stage", help="notebook number: 0, 1, 2, 3 or 4")
    parser.add_argument("--preset", default="auto")
    parser.add_argument("--data", default="dataset")
    parser.add_argument("--model", default="", help="stage 0: a hub id instead of the preset's base model")
    parser.add_argument("--set", default="", dest="overrides", help='config overrides, "stage.field=value ..."')
    sys.path.insert(0, str(ROOT))
    from rlhf.config import ConfigError
    from rlhf.overrides import add_config_flags, check_overrides, flags_to_overrides
    add_config_flags(parser)
    args = parser.parse_args()
    overrides = " ".join(filter(None, [args.overrides, *map(shlex.quote, flags_to_overrides(args))]))
    try:
        check_overrides(overrides, args.preset)  # before anything runs
    except ConfigError as err:
        parser.error(str(err))
    os.environ.setdefault("MPLBACKEND", "Agg")
    os.chdir(ROOT)
    code = stage_code(args.stage, args.preset, args.data, args.model, overrides)
    exec(compile(code, f"notebooks/{args.stage}_stage.py", "exec"), {"__name__": "__main__"})
    return 0


if __name__ == "__main__":
    sys.exit(main())
