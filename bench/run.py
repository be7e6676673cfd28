"""Benchmark this project against TRL on the same machine, at the same settings.

    python bench/run.py [--shapes tiny opt-125m smollm2-135m] [--tasks sft rm ppo ppo_lora dpo rloo grpo]
                        [--precision fp32 bf16 default]
                        [--runs 3] [--retries 2] [--min-busy 0.85] [--quiet-wait 0]
                        [--out bench/results/latest.jsonl]

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
# 1-6 s an SFT/RM step and 15-45 s a PPO iteration on 2 idle cores: two warm-up steps (the first
# bf16 step of TRL's SFT is ~40% slower than the next) and two timed, and its PPO iteration is
# timed cold (no warm-up iteration), to keep the run short.
# The smollm2-135m shape (not in the default run) is about as heavy and gets the same counts.
# DPO steps are counted like RM steps; RLOO and GRPO iterations like PPO's, except that on the big
# shapes one warm-up iteration comes first (an RLOO iteration, one pass and no critic, costs a
# fraction of PPO's; GRPO's four passes train the actor only).
STEPS = {("tiny", "sft"): (2, 5), ("tiny", "rm"): (2, 5), ("tiny", "ppo"): (1, 2),
         ("tiny", "dpo"): (2, 5), ("tiny", "rloo"): (1, 2), ("tiny", "grpo"): (1, 2)}
for big in ("opt-125m", "smollm2-135m"):
    STEPS.update({(big, "sft"): (2, 2), (big, "rm"): (2, 2), (big, "ppo"): (0, 1),
                  (big, "dpo"): (2, 2), (big, "rloo"): (1, 2), (big, "grpo"): (1, 1)})
STEPS.update({(shape, "ppo_lora"): STEPS[shape, "ppo"] for shape in {shape for shape, _ in STEPS}})
# glibc's malloc told to keep freed memory (what rlhf.runtime.keep_freed_cpu_memory does inside
# the project's processes), given to TRL's processes too in the same-settings modes (fp32, bf16)
SAME_ALLOCATOR = {"MALLOC_MMAP_MAX_": "0", "MALLOC_TRIM_THRESHOLD_": str(2**31 - 1)}
# which matmul peak a figure is a share of; "default" runs bf16 on a bf16 CPU (ours, TRL SFT/RM)
PEAK_OF = {"fp32": "fp32", "bf16": "bf16", "default": "bf16"}
TARGETS = {"sft_tokens_per_s": 2.0, "rm_pairs_per_s": 2.0, "ppo_s_per_iteration": 2.0,
           "ppo_peak_rss_mib": 1.0, "ppo_lora_vs_trl_full_peak_rss_mib": 1 / 0.6}
# (on the "ours vs TRL" scale: >= this is met)
LORA_RANK = 16  # the ppo_lora task: LoRA adapters of this rank on the actor, on both sides
TASKS = ["sft", "rm", "ppo", "ppo_lora", "dpo", "rloo", "grpo"]  # all run by default


def worker(side: str, st: Settings, python_ours: str, timeout: int) -> dict:
    """Run one measurement in a fresh process; returns its JSON line."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TOKENIZERS_PARALLELISM": "false",
           "HF_HUB_OFFLINE": "1", "TRANSFORMERS_VERBOSITY": "error"}
    if side == "ours":
        cmd = [python_ours, str(BENCH / "ours.py")]
    else:
        cmd = [str(TRL_VENV / "bin" / "python"), str(BENCH / "trl_side.py")]
        if st.precision != "default":  # same settings: the malloc behaviour the project sets
            env.update(SAME_ALLOCATOR)    # for itself (rlhf.runtime.keep_freed_cpu_memory)
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


def online_flops(params: dict, st: Settings) -> float:
    """FLOPs of one RLOO or GRPO iteration's necessary work on its N = prompts answers over the
    padded width T = prompt_len + new_tokens: sampling 2·actor·N·T, scoring with the reference and
    the reward model 2·(reference + reward)·N·T (the actor's logprobs can come from sampling),
    training 6·actor·N·T per pass (GRPO: grpo_epochs passes, RLOO: one)."""
    tokens, passes = st.prompts * (st.prompt_len + st.new_tokens), st.grpo_epochs if st.task == "grpo" else 1
    return (2 * params["actor"] + 2 * (params["reference"] + params["reward"])
            + passes * 6 * params["actor"]) * tokens


def run_figures(line: dict) -> dict:
    """The figures of one run: {name: (value, flops per unit or None)}."""
    st, secs = Settings(**line["settings"]), line["step_seconds"]
    if st.task == "dpo":  # per pair: the policy trains on 2 rows, the reference reads them
        pairs = line["pairs_per_step"] * len(secs)
        per_pair = (6 + 2) * line["params"]["model"] * 2 * st.seq_len
        return {"dpo_pairs_per_s": (pairs / sum(secs), per_pair),
                "dpo_peak_rss_mib": (line["peak_rss_mib"], None)}
    if st.task in ("rloo", "grpo"):
        return {f"{st.task}_s_per_iteration": (statistics.mean(secs), online_flops(line["params"], st)),
                f"{st.task}_peak_rss_mib": (line["peak_rss_mib"], None)}
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
    ppo = "ppo_lora" if st.lora_rank else "ppo"
    out = {f"{ppo}_s_per_iteration": (statistics.mean(secs), sum(flops.values()))}
    for phase, values in line["phases"].items():
        out[f"{ppo}_{phase}_s"] = (statistics.mean(values), flops[phase])
    out[f"{ppo}_peak_rss_mib"] = (line["peak_rss_mib"], None)
    return out


# figure -> (unit, True where lower is better: then "ours vs TRL" is TRL / ours, else ours / TRL)
FIGURES = {"sft_tokens_per_s": ("tokens/s", False), "sft_peak_rss_mib": ("MiB", True),
           "rm_pairs_per_s": ("pairs/s", False), "rm_peak_rss_mib": ("MiB", True),
           "ppo_s_per_iteration": ("s", True), "ppo_generate_s": ("s", True),
           "ppo_score_s": ("s", True), "ppo_train_s": ("s", True), "ppo_peak_rss_mib": ("MiB", True)}
FIGURES.update({name.replace("ppo_", "ppo_lora_"): spec for name, spec in FIGURES.items() if name.startswith("ppo_")})
# ours with LoRA against TRL's full fine-tuning (the "with the LoRA option, <= 0.6x TRL's")
FIGURES["ppo_lora_vs_trl_full_peak_rss_mib"] = ("MiB", True)
FIGURES.update({"dpo_pairs_per_s": ("pairs/s", False), "dpo_peak_rss_mib": ("MiB", True),
                "rloo_s_per_iteration": ("s", True), "rloo_peak_rss_mib": ("MiB", True),
                "grpo_s_per_iteration": ("s", True), "grpo_peak_rss_mib": ("MiB", True)})


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
        status = "-" if target is None else f">={target:g}x " + ("met" if f["ratio"] >= target else "NOT met")
        share = "" if "share_of_peak" not in o else \
            f"{100 * o['share_of_peak']:.1f}% / {100 * t['share_of_peak']:.1f}%"
        busy = f"{o['cpu_busy_min']:.2f}/{t['cpu_busy_min']:.2f}"
        rows.append([f["shape"], f["precision"], f["figure"], cell(o), cell(t), f"{f['ratio']:.2f}x",
                     status, share, busy])
    widths = [max(len(str(r[i])) for r in rows + [head]) for i in range(len(head))]
    line = lambda r: "  ".join(str(c).ljust(w) for c, w in zip(r, widths)).rstrip()
    return "\n".join([line(head), line(["-" * w for w in widths])] + [line(r) for r in rows])


# ----------------------------------------------------------------------------- main

def others_busy(seconds: float = 1.0) -> float | None:
    """Share of all cores busy over `seconds` (Linux /proc/stat); between measurements that is
    other processes' load. None where /proc/stat is missing."""
    def sample():
        with open("/proc/stat") as f:
            values = [int(v) for v in f.readline().split()[1:]]
        return sum(values), values[3] + values[4]  # total, idle + iowait
    try:
        total0, idle0 = sample()
        time.sleep(seconds)
        total1, idle1 = sample()
    except OSError:
        return None
    return 1 - (idle1 - idle0) / max(total1 - total0, 1)


def wait_quiet(max_wait: float, threshold: float = 0.25) -> float | None:
    """Wait (at most max_wait s) until other processes use under `threshold` of the cores."""
    deadline = time.time() + max_wait
    busy = others_busy()
    while busy is not None and busy > threshold and time.time() < deadline:
        busy = others_busy(5.0)
    return busy


def measure_peak(python: str) -> dict:
    out = subprocess.run([python, str(BENCH / "peak.py")], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def versions(python: str, extra_path: str | None = None) -> str:
    env = {**os.environ, **({"PYTHONPATH": extra_path} if extra_path else {})}
    code = "import transformers, torch; print(torch.__version__, transformers.__version__, end=' ')\n" \
           "try:\n import trl; print(trl.__version__)\nexcept ImportError: print('-')"
    out = subprocess.run([python, "-c", code], capture_output=True, text=True, env=env)
    return out.stdout.strip()


def measure_once(side: str, st: Settings, args) -> dict:
    """One measurement, redone (up to args.retries times) while it had under args.min_busy of the
    cores: other processes' load inflates times and they come and go."""
    for attempt in range(args.retries + 1):
        busy_before = wait_quiet(args.quiet_wait)
        started = time.time()
        line = worker(side, st, args.python, args.timeout)
        print(f"[{st.shape} {st.precision} {st.task}{' lora' if st.lora_rank else ''}] seed {st.seed} {side}: "
              f"{time.time() - started:.0f} s, CPU busy {line['cpu_busy']:.2f}", file=sys.stderr)
        line.update(others_busy_before=busy_before, attempts=attempt + 1)
        with open(Path(args.out).with_suffix(".partial.jsonl"), "a") as f:  # kept if the run dies
            f.write(json.dumps({"figure": "raw", **line}) + "\n")
        if line["cpu_busy"] >= args.min_busy:
            break
    return line


def measure(st: Settings, args) -> dict:
    """`args.runs` fresh processes per side, alternating which side goes first.
    Returns {side: [worker line, ...]}."""
    lines = {"ours": [], "trl": []}
    for run in range(args.runs):
        for side in (("ours", "trl") if run % 2 == 0 else ("trl", "ours")):
            lines[side].append(measure_once(side, replace(st, seed=run), args))
    return lines


def figures_of(st: Settings, lines: dict, peak: dict) -> list[dict]:
    """One record per figure: both sides' median, range and share of peak, and the ratio."""
    per_side = {side: [run_figures(line) for line in runs] for side, runs in lines.items()}
    out = []
    for name in per_side["ours"][0]:
        f = {"figure": name, "shape": st.shape, "precision": st.precision}
        for side, runs in per_side.items():
            f[side] = summarise(name, [r[name] for r in runs], peak[PEAK_OF[st.precision]])
            f[side]["cpu_busy_min"] = min(line["cpu_busy"] for line in lines[side])
        lower = FIGURES[name][1]
        f["ratio"] = f["trl"]["median"] / f["ours"]["median"] if lower else \
            f["ours"]["median"] / f["trl"]["median"]
        f["ratio_means"] = "TRL / ours" if lower else "ours / TRL"
        f["settings"] = {k: v for k, v in vars(st).items() if k != "seed"}
        out.append(f)
    return out


def lora_against_full(figures: list[dict]) -> list[dict]:
    """Ours with LoRA against TRL's full fine-tuning, where both were measured (same shape and
    precision): the issue's memory target for the LoRA option."""
    by_key = {(f["shape"], f["precision"], f["figure"]): f for f in figures}
    out = []
    for (shape, precision, name), lora in by_key.items():
        full = by_key.get((shape, precision, "ppo_peak_rss_mib"))
        if name == "ppo_lora_peak_rss_mib" and full:
            out.append({"figure": "ppo_lora_vs_trl_full_peak_rss_mib", "shape": shape,
                        "precision": precision, "ours": lora["ours"], "trl": full["trl"],
                        "ratio": full["trl"]["median"] / lora["ours"]["median"],
                        "ratio_means": "TRL (full fine-tuning) / ours (LoRA)"})
    return out


def load_raw(path: str) -> list:
    """[(settings, {side: [worker line per seed]})] from the raw lines of a results file (a
    finished run's, or the .partial.jsonl a stopped run leaves). Of a measurement's tries, the
    last is kept, as measure_once does."""
    groups = {}
    for text in Path(path).read_text().splitlines():
        line = json.loads(text)
        if line.get("figure") != "raw":
            continue
        st = Settings(**line["settings"])
        key = replace(st, seed=0)
        groups.setdefault(key, {"ours": {}, "trl": {}})[line["side"]][st.seed] = line
    return [(st, {side: [runs[seed] for seed in sorted(runs)] for side, runs in sides.items()})
            for st, sides in groups.items() if sides["ours"] and sides["trl"]]


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shapes", nargs="+", default=["tiny", "opt-125m"],
                        choices=["tiny", "opt-125m", "smollm2-135m"])
    parser.add_argument("--tasks", nargs="+", default=TASKS, choices=TASKS)
    parser.add_argument("--precision", nargs="+", default=["fp32"], choices=["fp32", "bf16", "default"],
                        help="default: each side's own (ours mixed_precision='auto'; TRL's configs' bf16=True)")
    parser.add_argument("--runs", type=int, default=3, help="fresh processes per side and figure")
    parser.add_argument("--python", default=sys.executable, help="the project's interpreter")
    parser.add_argument("--timeout", type=int, default=900, help="seconds per measurement")
    parser.add_argument("--out", default=str(BENCH / "results" / "latest.jsonl"))
    parser.add_argument("--min-busy", type=float, default=0.85,
                        help="redo a measurement whose CPU busy (see the table) is below this")
    parser.add_argument("--retries", type=int, default=2, help="redos per measurement at most")
    parser.add_argument("--from-raw", metavar="JSONL", help="measure nothing: rebuild the figures and the "
                        "table from the raw lines of an earlier run (e.g. the .partial.jsonl of one that stopped)")
    parser.add_argument("--quiet-wait", type=float, default=0.0,
                        help="before each measurement, wait up to this many seconds for other "
                             "processes to use under 25%% of the cores")
    return parser.parse_args()


def main():
    args = parse_args()
    if not (TRL_VENV / "bin" / "python").exists():
        sys.exit(f"no TRL environment at {TRL_VENV}: run bench/setup_trl.sh first")
    start, load_start = time.time(), os.getloadavg()[0]
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    if not args.from_raw:
        Path(args.out).with_suffix(".partial.jsonl").unlink(missing_ok=True)
    trl_python = str(TRL_VENV / "bin" / "python")
    machine = {"figure": "machine", "cpu": platform.processor() or platform.machine(),
               "cores": os.cpu_count(), "ours_torch_transformers": versions(args.python),
               "trl_torch_transformers_trl": versions(trl_python),
               "trl_ppo": versions(trl_python, str(TRL_PPO_PATH)).split()[-1]}
    peaks = [measure_peak(args.python)]
    measured = load_raw(args.from_raw) if args.from_raw else []
    for shape in args.shapes if not args.from_raw else []:
        for precision in args.precision:
            for task in args.tasks:
                warmup, steps = STEPS[shape, task]
                lora = {"task": "ppo", "lora_rank": LORA_RANK} if task == "ppo_lora" else {"task": task}
                st = Settings(shape=shape, precision=precision, warmup=warmup, steps=steps, **lora)
                measured.append((st, measure(st, args)))
    peaks.append(measure_peak(args.python))
    # the better of the two peak measurements (one may have shared the cores)
    peak = {k: max(p[k] for p in peaks) for k in ("fp32", "bf16")}
    machine.update(matmul_peak_gflops=peak, peak_measurements=peaks)
    figures = [f for st, lines in measured for f in figures_of(st, lines, peak)]
    figures += lora_against_full(figures)
    done = {"figure": "run", "seconds": round(time.time() - start), "load_avg_start": load_start,
            "load_avg_end": os.getloadavg()[0], "command": " ".join(["bench/run.py"] + sys.argv[1:])}
    raw = [{"figure": "raw", **line} for _, lines in measured for runs in lines.values() for line in runs]
    records = [machine, *figures, done, *raw]
    for record in [machine, *figures, done]:
        print(json.dumps(record))
    print(f"\nmatmul peak: fp32 {peak['fp32']:.0f} GFLOP/s, bf16 {peak['bf16']:.0f} GFLOP/s "
          f"({peaks[0]['threads']} threads). ours vs TRL > 1 means ours is better "
          f"(throughput: ours/TRL; time and memory: TRL/ours)")
    print(table(figures))
    print(f"\nCPU busy: the lowest, over the runs, of CPU seconds / (wall seconds x threads) in the "
          f"timed steps, ours/TRL; well below ~0.9 means other processes took cores from it.\n"
          f"{done['seconds']} s in all; load average {load_start:.1f} at the start, "
          f"{done['load_avg_end']:.1f} at the end.")
    Path(args.out).write_text("".join(json.dumps(r) + "\n" for r in records))
    Path(args.out).with_suffix(".partial.jsonl").unlink(missing_ok=True)


if __name__ == "__main__":
    main()
