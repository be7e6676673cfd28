"""The Beyond-PPO scoreboard: PPO, DPO, RLOO and GRPO from one SFT actor and one reward model,
at one budget, judged by the gold judge; and (--curve) the over-optimisation curve.

    .venv/bin/python tools/scoreboard.py --preset tiny --seeds 3     # make scoreboard
    .venv/bin/python tools/scoreboard.py --preset tiny --curve       # make curve
        [--model-dir model] [--data dataset] [--out runs/scoreboard] [--set "beyond.rloo_lr=1e-4"]
        [--algorithms ppo dpo rloo grpo] [--in-process]

Needs model/actor and model/critic (make run, or notebooks 0-2). For each seed s (every config's
seed plus s): SFT is evaluated; PPO trains exactly as notebook 3 does (rlhf.ppo_loop.train_ppo);
DPO takes as many optimiser steps as PPO's actor, each on as many sequences as one PPO
minibatch (minibatch / 2 chosen-rejected pairs: rlhf.beyond_loop.dpo_steps); RLOO and GRPO
answer as many times per iteration as PPO and stop once they have generated as many answer
tokens as PPO did (valid tokens, up to and including EOS). Each policy is then evaluated as
notebook 4 evaluates (rlhf.evaluate.evaluate_policies: sampled and greedy answers to the eval
prompts; gold judge, reward-model score in normalised units, KL from SFT, length) and its gold
win rate against SFT's sampled answers to the same prompts is counted (ties half).

Each run is its own process (spawned), so its wall time and peak memory (the process's peak
resident set; on a GPU, torch's peak allocation) are its own; --in-process runs everything in
this process (faster to start, no peak memory). Intervals are 95% t intervals over the seeds.
Writes OUT/scoreboard.json and OUT/scoreboard.md (or OUT/curve.json, OUT/curve.md, OUT/curve.png)
and the first seed's policies to MODEL_DIR/{ppo,dpo,rloo,grpo}.

--curve: PPO at each BeyondConfig.curve_kl_coefs for curve_iterations, the gold and the
reward-model score of every iteration's sampled answers (training prompts) against their KL from
SFT, then the held-out evaluation at the end (Gao et al. 2022, "Scaling laws for reward model
over-optimization": gold peaks and turns down while the proxy keeps rising).
"""
from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import replace
from multiprocessing import get_context
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from rlhf import beyond_loop  # noqa: E402
from rlhf.checkpoint import save_checkpoint  # noqa: E402
from rlhf.config import ConfigError, make_config  # noqa: E402
from rlhf.data import encode_prompts, split_rows  # noqa: E402
from rlhf.evaluate import evaluate_policies, gold_judge_for  # noqa: E402
from rlhf.models import load_policy_models, load_ppo_models, load_score_model, load_tokenizer, resolve_preset  # noqa: E402
from rlhf.overrides import check_overrides  # noqa: E402
from rlhf.ppo_loop import train_ppo  # noqa: E402
from rlhf.sources import load_data  # noqa: E402
from rlhf.scoreboard import ALGORITHMS, board, curve_markdown, curve_summary, markdown, verdict  # noqa: E402



# ----------------------------------------------------------------------------- one run (in its own process)

def configs(task):
    """(preset, ppo_cfg, beyond_cfg, data_cfg, eval_cfg) of a task, every seed shifted by its seed."""
    preset, parsed, s = task["preset"], task["overrides"], task["seed"]
    make = lambda stage, **extra: make_config(stage, preset, **{**parsed.get(stage, {}), **extra})
    ppo_cfg = make("ppo", **task.get("ppo", {}))
    cfg = make("beyond", **({"token_budget": task["token_budget"]} if task.get("token_budget") else {}))
    data_cfg, eval_cfg = make("data", data_dir=task["data"]), make("eval")
    shift = lambda c: replace(c, seed=c.seed + s)
    return preset, shift(ppo_cfg), shift(cfg), data_cfg, shift(eval_cfg)


def peak_memory_mb(device) -> float:
    """The process's peak memory so far: torch's peak allocation on a GPU, else the peak RSS."""
    import torch

    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2 ** 20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: kilobytes


def train(algorithm, task, ppo_cfg, cfg, data_cfg, tokenizer, parts, judge, log):
    """Train one algorithm from model/actor and model/critic. Returns (policy, reward model, facts)."""
    actor_dir, critic_dir = f"{task['model_dir']}/actor", f"{task['model_dir']}/critic"
    texts = [r["prompt"] for r in parts["rlhf"]]
    prompt_ids = encode_prompts(parts["rlhf"], tokenizer, data_cfg.max_prompt_length)
    if algorithm == "ppo":
        models = load_ppo_models(actor_dir, critic_dir, ppo_cfg)
        actor, _, history, _ = train_ppo(models, tokenizer, prompt_ids, ppo_cfg, log=log, judge=judge,
                                         prompt_texts=texts, progress=False)
        tokens = sum(h["response_length"] * h["prompts"] for h in history)
        return actor, models[2], {"generated_tokens": round(tokens), "iterations": len(history), "history": history}
    models = load_policy_models(actor_dir, critic_dir, ppo_cfg)
    if algorithm == "dpo":
        pairs = beyond_loop.encode_dpo_pairs(parts["critic"], tokenizer, data_cfg.max_length, data_cfg.max_prompt_length)
        actor, history = beyond_loop.train_dpo(models, tokenizer, pairs, ppo_cfg, cfg, log)
        return actor, models[2], {"generated_tokens": 0, "steps": len(history), "pairs": len(pairs),
                                  "history": history[-1:]}
    actor, history = beyond_loop.train_online(algorithm, models, tokenizer, prompt_ids, ppo_cfg, cfg, log,
                                              judge, texts, progress=False)
    return actor, models[2], {"generated_tokens": history[-1]["tokens_used"], "iterations": len(history),
                              "history": history}


def run_one(task: dict) -> dict:
    """Train (unless SFT) and evaluate one algorithm at one seed: its figures and eval records."""
    from transformers import AutoModelForCausalLM

    preset, ppo_cfg, cfg, data_cfg, eval_cfg = configs(task)
    algorithm, log = task["algorithm"], (lambda message: print(f"[{task['algorithm']} {task['seed']}] {message}", flush=True))
    tokenizer = load_tokenizer(f"{task['model_dir']}/actor")
    train_rows, eval_rows = load_data(data_cfg)
    parts = split_rows(train_rows, data_cfg.split, data_cfg.seed)
    prompts = list(dict.fromkeys(r["prompt"] for r in eval_rows))[:eval_cfg.max_prompts or None]
    judge = gold_judge_for(prompts)
    sft = AutoModelForCausalLM.from_pretrained(f"{task['model_dir']}/actor").eval()
    start, facts = time.perf_counter(), {}
    if algorithm == "sft":
        policy = sft
        reward_model = load_score_model(f"{task['model_dir']}/critic", ppo_cfg).eval()
    else:
        policy, reward_model, facts = train(algorithm, task, ppo_cfg, cfg, data_cfg, tokenizer, parts, judge, log)
        if hasattr(policy, "merge_and_unload"):  # LoRA: a plain model again
            policy = policy.merge_and_unload()
    train_seconds = time.perf_counter() - start
    peak = peak_memory_mb(next(policy.parameters()).device) if task["own_process"] else None
    if algorithm == "dpo":
        eval_pairs = beyond_loop.encode_dpo_pairs(eval_rows, tokenizer, data_cfg.max_length, data_cfg.max_prompt_length)
        facts["implicit_reward"] = beyond_loop.implicit_rewards(policy, sft, eval_pairs, tokenizer.pad_token_id,
                                                                cfg, ppo_cfg.temperature)
    records = evaluate_policies({algorithm: policy}, sft, reward_model, tokenizer, prompts, eval_cfg,
                                data_cfg.max_prompt_length, judge=judge, progress=False)
    if task.get("save") and algorithm != "sft":
        save_checkpoint(f"{task['model_dir']}/{algorithm}", policy, tokenizer,
                        configs=[ppo_cfg, cfg, data_cfg], metrics={"preset": preset, **facts})
    return {"algorithm": algorithm, "seed": task["seed"], "kl_coef": ppo_cfg.kl_coef,
            "train_seconds": round(train_seconds, 1), "peak_mb": peak and round(peak), **facts,
            "records": records}


def run_all(tasks, in_process: bool):
    """run_one on each task in turn: each in a fresh spawned process, or all in this one."""
    if in_process:
        return [run_one({**task, "own_process": False}) for task in tasks]
    results = []
    for task in tasks:  # one at a time: each run has the machine to itself
        with ProcessPoolExecutor(max_workers=1, mp_context=get_context("spawn")) as pool:
            results.append(pool.submit(run_one, {**task, "own_process": True}).result())
    return results


# ----------------------------------------------------------------------------- the plot

def plot_curve(curves, path) -> None:
    """Gold and RM score against KL from SFT, one line per KL coefficient (smoothed), the
    held-out evaluation at the end as a marker."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    for curve in curves:
        kl = [p["kl"] for p in curve["points"]]
        for ax, key in zip(axes, ("gold", "rm_score")):
            line, = ax.plot(kl, [p[key] for p in curve["points"]], label=f"β = {curve['kl_coef']:g}")
            ax.plot(curve["final_eval"]["kl"], curve["final_eval"][key], "o", color=line.get_color())
    for ax, title in zip(axes, ("gold (true quality)", "reward-model score (the proxy)")):
        ax.set_xlabel("KL from SFT (nats per answer)")
        ax.set_title(title)
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


# ----------------------------------------------------------------------------- the command

def scoreboard_tasks(base, seeds, algorithms):
    """SFT and PPO first at each seed: the online runs' token budget is PPO's count at that seed."""
    return [[{**base, "algorithm": a, "seed": s, "save": s == 0} for a in ("sft", "ppo") if a == "sft" or a in algorithms]
            for s in range(seeds)]


def run_scoreboard(base, args, preset):
    """Every seed in turn: SFT and PPO, then the others at PPO's token count. The table is
    rewritten after each seed, so a long run that is stopped keeps the seeds it finished."""
    results = []
    for first in scoreboard_tasks(base, args.seeds, args.algorithms):
        done = run_all(first, args.in_process)
        ppo = next((r for r in done if r["algorithm"] == "ppo"), None)
        budget = ppo["generated_tokens"] if ppo else 0
        rest = [{**first[0], "algorithm": a, "token_budget": budget} for a in args.algorithms if a != "ppo"]
        results += done + run_all(rest, args.in_process)
        write_scoreboard(results, args, preset)
    print((args.out / "scoreboard.md").read_text())


def write_scoreboard(results, args, preset) -> None:
    rows = board(results)
    lines = verdict(rows) if len(rows) > 1 else []
    seeds = len({r["seed"] for r in results})
    header = (f"Scoreboard, preset {preset}, {seeds} of {args.seeds} seed(s), eval on the held-out prompts "
              f"(sampled answers; ± = 95% t interval over seeds): `{' '.join(sys.argv)}`")
    (args.out / "scoreboard.md").write_text(markdown(rows, lines, header))
    slim = [{k: v for k, v in r.items() if k != "records"} for r in results]
    (args.out / "scoreboard.json").write_text(json.dumps({"command": sys.argv, "preset": preset, "rows": rows,
                                                          "verdict": [line.en for line in lines],
                                                          "verdict_zh": [line.zh for line in lines], "runs": slim}, indent=1) + "\n")


def run_curve(base, args, preset):
    """PPO at each curve_kl_coefs; the table, JSON and plot rewritten after each run."""
    parsed = base["overrides"]
    cfg = make_config("beyond", preset, **parsed.get("beyond", {}))
    iterations = cfg.curve_iterations or make_config("ppo", preset, **parsed.get("ppo", {})).iterations
    header = (f"Over-optimisation, preset {preset}, PPO at each β for {iterations} iterations; along training: "
              f"the answers of each iteration (training prompts, 5-iteration trailing mean); held-out: "
              f"the eval prompts at the end: `{' '.join(sys.argv)}`")
    curves = []
    for coef in cfg.curve_kl_coefs:
        task = {**base, "algorithm": "ppo", "seed": 0, "ppo": {"kl_coef": coef, "iterations": iterations}}
        curves += [curve_summary(r) for r in run_all([task], args.in_process)]
        (args.out / "curve.md").write_text(curve_markdown(curves, header))
        (args.out / "curve.json").write_text(json.dumps({"command": sys.argv, "preset": preset, "curves": curves},
                                                        indent=1) + "\n")
        plot_curve(curves, args.out / "curve.png")
    print((args.out / "curve.md").read_text())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="auto")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--data", default="dataset")
    parser.add_argument("--model-dir", default="model", help="where actor/ and critic/ are, and the policies go")
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "scoreboard")
    parser.add_argument("--set", default="", dest="overrides", help='config overrides, "stage.field=value ..."')
    parser.add_argument("--algorithms", nargs="+", default=list(ALGORITHMS), choices=ALGORITHMS)
    parser.add_argument("--curve", action="store_true", help="the over-optimisation curve instead")
    parser.add_argument("--in-process", action="store_true", help="no process per run (no peak memory)")
    args = parser.parse_args()
    preset, _ = resolve_preset(args.preset, f"{args.model_dir}/base")
    try:
        overrides = check_overrides(args.overrides, preset)
    except ConfigError as err:
        parser.error(str(err))
    for stage in ("actor", "critic"):
        if not (Path(args.model_dir) / stage / "config.json").exists():
            parser.error(f"no {args.model_dir}/{stage}: run notebooks 0-2 first (make run)")
    args.out.mkdir(parents=True, exist_ok=True)
    base = {"preset": preset, "overrides": overrides, "data": args.data, "model_dir": args.model_dir}
    start = time.time()
    (run_curve if args.curve else run_scoreboard)(base, args, preset)
    print(f"wall time: {time.time() - start:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
