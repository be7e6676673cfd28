"""Benchmark this project against TRL on the same machine, at the same settings.

    python bench/run.py [--shapes tiny opt-125m] [--tasks sft rm ppo] [--precision fp32 bf16]
                        [--runs 3] [--out bench/results/latest.jsonl]

Needs bench/.venv-trl (bench/setup_trl.sh builds it). Every measurement is a fresh subprocess,
ours in the project's interpreter and TRL's in bench/.venv-trl, alternating sides run by run;
each prints one JSON line (bench/common.py `emit`). This driver turns them into figures (median
and range over the runs), prints one JSON line per figure, then a table with ours vs TRL.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

from common import MARK, Settings

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
TRL_VENV = BENCH / ".venv-trl"
TRL_PPO_PATH = TRL_VENV / "trl-ppo"  # trl 1.12, the last with PPOTrainer (setup_trl.sh)

# (warm-up, timed) steps per measurement; PPO counts iterations. The opt-125m shape takes
# ~10 s an SFT/RM step and ~40-70 s a PPO iteration on 2 idle cores: one timed step each, and
# its PPO iteration is timed cold (no warm-up iteration), to keep the whole run near 15 minutes.
STEPS = {("tiny", "sft"): (2, 5), ("tiny", "rm"): (2, 5), ("tiny", "ppo"): (1, 2),
         ("opt-125m", "sft"): (1, 1), ("opt-125m", "rm"): (1, 1), ("opt-125m", "ppo"): (0, 1)}
TARGETS = {"sft_tokens_per_s": 2.0, "rm_pairs_per_s": 2.0, "ppo_s_per_iteration": 2.0,
           "ppo_peak_rss_mib": 1.0}  # on the "ours vs TRL" scale: >= this is met


def worker(side: str, st: Settings, python_ours: str, timeout: int) -> dict:
    """Run one measurement in a fresh process; returns its JSON line."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TOKENIZERS_PARALLELISM": "false",
           "HF_HUB_OFFLINE": "1", "TRANSFORMERS_VERBOSITY": "error"}
    if side == "ours":
        cmd = [python_ours, str(BENCH / "ours.py")]
    else:
        cmd = [str(TRL_VENV / "bin" / "python"), str(BENCH / "trl_side.py")]
        if st.task == "ppo":
            env["PYTHONPATH"] = f"{TRL_PPO_PATH}{os.pathsep}{ROOT}"
    proc = subprocess.run(cmd + st.to_argv(), cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=timeout)
    lines = [l for l in proc.stdout.splitlines() if l.startswith(MARK)]
    if proc.returncode != 0 or not lines:
        tail = "\n".join((proc.stdout + proc.stderr).splitlines()[-25:])
        raise RuntimeError(f"{side} {st.task} {st.shape} failed (exit {proc.returncode}):\n{tail}")
    return json.loads(lines[-1][len(MARK):])


# ----------------------------------------------------------------------------- figures

def ppo_flops(params: dict, st: Settings) -> dict:
    """FLOPs of one PPO iteration's necessary work, by phase (2 per weight per token forward,
    6 forward + backward), over the padded width T = prompt_len + new_tokens that both sides
    compute on. Scoring counts three passes (reference, critic, reward): the actor's logprobs
    can come from generation, as TRL takes them."""
    tokens = st.prompts * (st.prompt_len + st.new_tokens)
    return {"generate": 2 * params["actor"] * tokens,
            "score": 2 * (params["reference"] + params["critic"] + params["reward"]) * tokens,
            "train": st.ppo_epochs * 6 * (params["actor"] + params["critic"]) * tokens}


def run_figures(line: dict) -> dict:
    """The figures of one run: {name: (value, flops per unit or None)}."""
    st, secs = Settings(**line["settings"]), line["step_seconds"]
    if st.task == "sft":
        tokens = line["tokens_per_step"] * len(secs)
        return {"sft_tokens_per_s": (tokens / sum(secs), 6 * line["params"]["model"]),
                "sft_peak_rss_mib": (line["peak_rss_mib"], None)}
    if st.task == "rm":
        pairs = line["pairs_per_step"] * len(secs)
        per_pair = 6 * line["params"]["model"] * 2 * st.seq_len
        return {"rm_pairs_per_s": (pairs / sum(secs), per_pair),
                "rm_peak_rss_mib": (line["peak_rss_mib"], None)}
    flops = ppo_flops(line["params"], st)
    out = {"ppo_s_per_iteration": (statistics.mean(secs), sum(flops.values()))}
    for phase, values in line["phases"].items():
        out[f"ppo_{phase}_s"] = (statistics.mean(values), flops[phase])
    out["ppo_peak_rss_mib"] = (line["peak_rss_mib"], None)
    return out


# figure -> (unit, True where lower is better: then "ours vs TRL" is TRL / ours, else ours / TRL)
FIGURES = {"sft_tokens_per_s": ("tokens/s", False), "sft_peak_rss_mib": ("MiB", True),
           "rm_pairs_per_s": ("pairs/s", False), "rm_peak_rss_mib": ("MiB", True),
           "ppo_s_per_iteration": ("s", True), "ppo_generate_s": ("s", True),
           "ppo_score_s": ("s", True), "ppo_train_s": ("s", True), "ppo_peak_rss_mib": ("MiB", True)}


def summarise(name: str, runs: list[tuple[float, float | None]], peak: float) -> dict:
    """Median, range and runs of one side's figure; with its FLOPs, the GFLOP/s it means and its
    share of the matmul peak."""
    values = [v for v, _ in runs]
    med, flops, (unit, is_time) = statistics.median(values), runs[0][1], FIGURES[name]
    out = {"median": med, "min": min(values), "max": max(values), "runs": values, "unit": unit}
    if flops is not None:  # FLOPs per token / pair, or per iteration for a time
        rate = (flops / med if is_time else flops * med) / 1e9
        out.update(gflops=rate, share_of_peak=rate / peak)
    return out


# ----------------------------------------------------------------------------- the table

def fmt(x: float) -> str:
    return f"{x:,.0f}" if abs(x) >= 100 else f"{x:.3g}"


def table(figures: list[dict]) -> str:
    head = ["shape", "prec", "figure", "ours: median [min-max]", "TRL: median [min-max]",
            "ours vs TRL", "target", "% peak ours/TRL", "CPU busy"]
    rows = []
    for f in figures:
        o, t = f["ours"], f["trl"]
        cell = lambda s: f"{fmt(s['median'])} [{fmt(s['min'])}-{fmt(s['max'])}] {s['unit']}"
        target = TARGETS.get(f["figure"])
        status = "" if target is None else f">={target:g}x " + ("met" if f["ratio"] >= target else "NOT met")
        share = "" if "share_of_peak" not in o else \
            f"{100 * o['share_of_peak']:.1f}% / {100 * t['share_of_peak']:.1f}%"
        busy = f"{o['cpu_busy_min']:.2f}/{t['cpu_busy_min']:.2f}"
        rows.append([f["shape"], f["precision"], f["figure"], cell(o), cell(t), f"{f['ratio']:.2f}x",
                     status, share, busy])
    widths = [max(len(str(r[i])) for r in rows + [head]) for i in range(len(head))]
    line = lambda r: "  ".join(str(c).ljust(w) for c, w in zip(r, widths)).rstrip()
    return "\n".join([line(head), line(["-" * w for w in widths])] + [line(r) for r in rows])


# ----------------------------------------------------------------------------- main

def measure_peak(python: str) -> dict:
    out = subprocess.run([python, str(BENCH / "peak.py")], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def versions(python: str, extra_path: str | None = None) -> str:
    env = {**os.environ, **({"PYTHONPATH": extra_path} if extra_path else {})}
    code = "import transformers, torch; print(torch.__version__, transformers.__version__, end=' ')\n" \
           "try:\n import trl; print(trl.__version__)\nexcept ImportError: print('-')"
    out = subprocess.run([python, "-c", code], capture_output=True, text=True, env=env)
    return out.stdout.strip()


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shapes", nargs="+", default=["tiny", "opt-125m"])
    parser.add_argument("--tasks", nargs="+", default=["sft", "rm", "ppo"])
    parser.add_argument("--precision", nargs="+", default=["fp32"], choices=["fp32", "bf16"])
    parser.add_argument("--runs", type=int, default=3, help="fresh processes per side and figure")
    parser.add_argument("--python", default=sys.executable, help="the project's interpreter")
    parser.add_argument("--timeout", type=int, default=900, help="seconds per measurement")
    parser.add_argument("--out", default=str(BENCH / "results" / "latest.jsonl"))
    args = parser.parse_args()
    if not (TRL_VENV / "bin" / "python").exists():
        sys.exit(f"no TRL environment at {TRL_VENV}: run bench/setup_trl.sh first")

    start, load_start = time.time(), os.getloadavg()[0]
    peak = measure_peak(args.python)
    machine = {"figure": "machine", "cpu": platform.processor() or platform.machine(),
               "cores": os.cpu_count(), "matmul_peak_gflops": {k: peak[k] for k in ("fp32", "bf16")},
               "peak_by_size": peak["sizes"], "threads": peak["threads"],
               "ours_torch_transformers": versions(args.python),
               "trl_torch_transformers_trl": versions(str(TRL_VENV / "bin" / "python")),
               "trl_ppo": versions(str(TRL_VENV / "bin" / "python"), str(TRL_PPO_PATH)).split()[-1]}
    records = [machine]
    print(json.dumps(machine), flush=True)
    figures = []
    for shape in args.shapes:
        for precision in args.precision:
            for task in args.tasks:
                warmup, steps = STEPS[shape, task]
                st = Settings(task=task, shape=shape, precision=precision, warmup=warmup, steps=steps)
                per_side, busy = {"ours": [], "trl": []}, {"ours": [], "trl": []}
                for run in range(args.runs):
                    for side in (("ours", "trl") if run % 2 == 0 else ("trl", "ours")):
                        line = worker(side, replace(st, seed=run), args.python, args.timeout)
                        records.append({"figure": "raw", **line})
                        per_side[side].append(run_figures(line))
                        busy[side].append(line["cpu_busy"])
                for name in per_side["ours"][0]:
                    f = {"figure": name, "shape": shape, "precision": precision}
                    for side, runs in per_side.items():
                        f[side] = summarise(name, [r[name] for r in runs], peak[precision])
                        f[side]["cpu_busy_min"] = min(busy[side])
                    lower = FIGURES[name][1]
                    f["ratio"] = (f["trl"]["median"] / f["ours"]["median"] if lower
                                  else f["ours"]["median"] / f["trl"]["median"])
                    f["ratio_means"] = "TRL / ours" if lower else "ours / TRL"
                    f["settings"] = {k: v for k, v in vars(st).items() if k != "seed"}
                    figures.append(f)
                    records.append(f)
                    print(json.dumps(f), flush=True)
    done = {"figure": "run", "seconds": round(time.time() - start), "load_avg_start": load_start,
            "load_avg_end": os.getloadavg()[0], "command": " ".join(sys.argv)}
    records.append(done)
    print(json.dumps(done))
    print()
    print(f"matmul peak: fp32 {peak['fp32']:.0f} GFLOP/s, bf16 {peak['bf16']:.0f} GFLOP/s "
          f"({peak['threads']} threads); ours vs TRL > 1 means ours is better "
          f"(throughput ours/TRL, time and memory TRL/ours)")
    print(table(figures))
    print(f"\nCPU busy: the lowest, over the runs, of CPU seconds / (wall seconds x threads) in the "
          f"timed steps, ours/TRL; well below ~0.9 means other processes took cores from it.\n"
          f"{done['seconds']} s in all; load average {load_start:.1f} at the start, "
          f"{done['load_avg_end']:.1f} at the end.")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text("".join(json.dumps(r) + "\n" for r in records))


if __name__ == "__main__":
    main()
