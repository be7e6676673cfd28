"""Execute the five notebooks in order, headless, with papermill (what `make run` does).

    python tools/run_pipeline.py [--preset auto|tiny|ci|opt-125m] [--data dataset] [--only 0 1 2]
                                 [--set "ppo.lora_rank=8 actor.epochs=1"]

--set takes any config field as stage.field=value (rlhf/config.py; the notebooks' SET
parameter); an unknown or ill-typed field stops the run before the first notebook starts.

Executed copies go to runs/ (the committed notebooks stay clean); checkpoints go to model/.
Ends by printing model/eval/summary.json as a table when stage 4 ran.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import zmq
from jupyter_client.manager import AsyncKernelManager

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = ["0_download", "1_actor", "2_critic", "3_rlhf", "4_test"]


class CurveKernelManager(AsyncKernelManager):
    """A kernel manager for headless runs that print nothing a new user reads as an error.

    ipykernel 7.3+ prints "Kernel is running over TCP without encryption" at every notebook whose
    kernel has plain TCP sockets. Where pyzmq has CurveZMQ, this manager provisions its keys
    (jupyter_client 8.10's transport_encryption, "auto": when the kernelspec declares support, as
    ipykernel's does); without it, on Linux and macOS, the sockets are IPC files in Jupyter's
    runtime folder, which only this user can reach, instead of TCP ports.
    """

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        if zmq.has("curve"):
            self.transport_encryption = "auto"
        elif os.name == "posix":
            self.transport = "ipc"

    async def _async_interrupt_kernel(self) -> None:
        """Interrupts, except the SIGINT jupyter_client sends before every shutdown: papermill shuts
        a kernel down only when its notebook is done, and that SIGINT, landing while the kernel
        handles a last message, printed "[IPKernelApp] ERROR | KeyboardInterrupt caught in
        kernel." after some notebooks. The shutdown request and, failing it, SIGTERM still follow."""
        if not self.shutting_down:
            await super()._async_interrupt_kernel()


def run_notebooks(root: Path, preset: str, data: str, only=None, out_dir: Path | None = None,
                  model: str = "", overrides: str = "", names=NOTEBOOKS) -> dict:
    """Run the notebooks under `root`; returns {notebook: seconds}. Raises on the first failure."""
    import papermill

    out_dir = out_dir or root / "runs"
    out_dir.mkdir(parents=True, exist_ok=True)
    seconds = {}
    for name in names:
        if not (root / f"{name}.ipynb").exists() or (only and name[0] not in only):
            continue
        start = time.time()
        print(f"== {name}.ipynb (preset {preset}, data {data})", flush=True)
        papermill.execute_notebook(str(root / f"{name}.ipynb"), str(out_dir / f"{name}.ipynb"),
                                   parameters={"PRESET": preset, "DATA": data,
                                               **({"MODEL": model} if model and name[0] == "0" else {}),
                                               **({"SET": overrides} if overrides else {})},
                                   cwd=str(root),
                                   kernel_name="python3", progress_bar=False,
                                   kernel_manager_class=CurveKernelManager)
        seconds[name] = round(time.time() - start, 1)
        print(f"   done in {seconds[name]} s -> {out_dir / (name + '.ipynb')}", flush=True)
    return seconds


def print_summary(root: Path) -> None:
    path = root / "model" / "eval" / "summary.json"
    if not path.exists():
        return
    summary = json.loads(path.read_text())
    rows = summary.get("table", [])
    if not rows:
        return
    width = max(len(r[0]) for r in rows)
    print("\nSummary (model/eval/summary.json)")
    for label, *values in rows:
        print(f"  {label:<{width}}  " + "  ".join(f"{v:>10}" for v in values))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="auto")
    parser.add_argument("--data", default="dataset")
    parser.add_argument("--only", nargs="*", help="notebook numbers to run, e.g. 0 1 2")
    parser.add_argument("--beyond", action="store_true",
                        help="also run notebook 5_beyond after the five (make notebook-outputs; not make run)")
    parser.add_argument("--model", default="", help="a hub id instead of the preset's base model")
    parser.add_argument("--set", default="", dest="overrides",
                        help='config overrides, "stage.field=value ...", e.g. "ppo.lora_rank=8 actor.epochs=1"')
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT))
    from rlhf.config import ConfigError
    from rlhf.overrides import check_overrides
    try:
        check_overrides(args.overrides, args.preset)  # before anything runs
    except ConfigError as err:
        parser.error(str(err))
    start = time.time()
    names = NOTEBOOKS + ["5_beyond"] if args.beyond else NOTEBOOKS
    seconds = run_notebooks(ROOT, args.preset, args.data, args.only, model=args.model, overrides=args.overrides,
                            names=names)
    print(f"\nall notebooks: {time.time() - start:.0f} s {seconds}")
    (ROOT / "runs" / "timings.json").write_text(json.dumps(seconds, indent=2) + "\n")
    print_summary(ROOT)
    return 0


if __name__ == "__main__":
    sys.exit(main())
