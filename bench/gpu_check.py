"""The GPU path, checked on a real GPU: a short pipeline at the opt-125m shape, offline.

    python bench/gpu_check.py                          # what `make gpu-check` runs after the CUDA tests
    python bench/gpu_check.py --shape tiny --allow-cpu # the same code at toy size on a CPU (a test does this)

For each precision (fp16 and bf16; bf16 only where the GPU has it natively), it trains the
project's own stages with random weights (bench/common.py builds them, so nothing is
downloaded): SFT steps, reward-model steps and PPO iterations, through rlhf.train.fit and
rlhf.ppo_loop.train_ppo unchanged. It prints one table: seconds per stage, tokens per second,
peak GPU memory, whether every loss stayed finite, how many steps the fp16 loss scaler skipped,
and the final loss scale. With 2 or more GPUs it then runs stages 1-3 of the ci preset under
`accelerate launch` with configs/accelerate/ddp.yaml on all of them. Everything is also written
to runs/gpu_check.json.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))                     # the project, for `rlhf`
sys.path.insert(0, str(Path(__file__).parent))    # bench/common.py

from common import (PAD, SHAPES, Settings, causal_lm, make_tokenizer, pair_rows,  # noqa: E402
                    ppo_models, ppo_prompts, scalar_head_model, sft_rows)

from rlhf.config import make_config  # noqa: E402
from rlhf.runtime import choose_precision  # noqa: E402


def peak_mib() -> float | None:
    return torch.cuda.max_memory_allocated() / 2**20 if torch.cuda.is_available() else None


def measured(run):
    """(result, seconds, peak GPU MiB) of run()."""
    if torch.cuda.is_available():
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    result = run()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return result, time.perf_counter() - start, peak_mib()


def fit_row(stage, st, precision):
    """SFT ("actor") or reward-model ("critic") steps through rlhf.train.fit."""
    from rlhf.data import collate_pairs, collate_sft
    from rlhf.reward import reward_loss_fn
    from rlhf.sft import sft_loss_fn
    from rlhf.train import fit

    if stage == "actor":
        items = [dict(input_ids=ids, labels=ids) for ids in sft_rows(st, st.steps)]
        model, collate, loss_fn = causal_lm(st.shape, st.seed), lambda c: collate_sft(c, PAD), sft_loss_fn
        tokens = st.steps * st.batch * st.seq_len
    else:
        items = [dict(chosen_ids=c, rejected_ids=r) for c, r in pair_rows(st, st.steps)]
        model, collate, loss_fn = scalar_head_model(st.shape, st.seed), lambda c: collate_pairs(c, PAD), reward_loss_fn
        tokens = st.steps * st.batch * 2 * st.seq_len
    cfg = make_config(stage, "opt-125m", batch_size=st.batch, epochs=1, max_steps=st.steps,
                      checkpoint_every=0, mixed_precision=precision, max_bad_steps=st.steps + 1)
    (_, history), seconds, peak = measured(lambda: fit(model, items, collate, loss_fn, cfg,
                                                       log=lambda m: None, progress=False))
    steps = history["steps"]
    return {"stage": "sft" if stage == "actor" else "reward", "seconds": seconds, "tokens_per_s": tokens / seconds,
            "peak_gpu_mib": peak, "finite": all(math.isfinite(s["loss"]) for s in steps),
            "skipped": sum(s["skipped"] for s in steps), "loss_scale": steps[-1].get("loss_scale")}


def ppo_row(st, precision):
    """PPO iterations through rlhf.ppo_loop.train_ppo with the four models."""
    from rlhf.models import disable_dropout
    from rlhf.ppo_loop import train_ppo

    cfg = make_config("ppo", "opt-125m", iterations=st.steps, rollout_batch=st.prompts, minibatch=st.prompts,
                      ppo_epochs=st.ppo_epochs, max_new_tokens=st.new_tokens, mixed_precision=precision,
                      log_samples_every=10**6, max_bad_updates=st.steps + 1, checkpoint_every=0)
    models = tuple(disable_dropout(m) for m in ppo_models(st.shape, st.seed))
    tokenizer = make_tokenizer(SHAPES[st.shape]["vocab_size"])
    (_, _, history, _), seconds, peak = measured(lambda: train_ppo(
        models, tokenizer, ppo_prompts(st), cfg, log=lambda m: None, progress=False))
    tokens = sum(st.prompts * (st.prompt_len + row["response_length"]) for row in history)
    losses = [row.get(k, float("nan")) for row in history for k in ("policy_loss", "value_loss")]
    return {"stage": "ppo", "seconds": seconds, "tokens_per_s": tokens / seconds, "peak_gpu_mib": peak,
            "finite": all(map(math.isfinite, losses)), "skipped": sum(r["skipped_updates"] for r in history),
            "loss_scale": history[-1].get("loss_scale"),
            "generate_s": sum(r["time_generate"] for r in history)}


def multi_gpu_rows(gpus: int) -> list[dict]:
    """Stages 1-3 of the ci preset under `accelerate launch` with configs/accelerate/ddp.yaml on
    `gpus` GPUs, in a scratch copy of the project (stage 0 first, in one process)."""
    import os
    import shutil
    import subprocess
    import tempfile

    work = Path(tempfile.mkdtemp(prefix="gpu_check_")) / "project"
    shutil.copytree(ROOT, work, ignore=shutil.ignore_patterns(".git", ".venv*", "model", "tokenizer", "runs"))
    env = {**os.environ, "MPLBACKEND": "Agg"}
    rows = []
    steps = [[sys.executable, "tools/run_stage.py", "0", "--preset", "ci"]] + [
        [sys.executable, "-m", "accelerate.commands.launch", "--config_file", "configs/accelerate/ddp.yaml",
         "--num_processes", str(gpus), "tools/run_stage.py", stage, "--preset", "ci"] for stage in "123"]
    for stage, cmd in zip("0123", steps):
        start = time.perf_counter()
        done = subprocess.run(cmd, cwd=work, env=env, capture_output=True, text=True, timeout=1800)
        rows.append({"stage": stage, "processes": 1 if stage == "0" else gpus, "ok": done.returncode == 0,
                     "seconds": time.perf_counter() - start, "error": done.stderr[-1500:] if done.returncode else ""})
        print(f"  DDP stage {stage} on {rows[-1]['processes']} GPU(s): {'ok' if rows[-1]['ok'] else 'FAILED'}", flush=True)
        if done.returncode:
            break
    return rows


def precisions_here(asked):
    """The precisions to check on this device, and a note for each one left out."""
    if not torch.cuda.is_available():
        return list(asked), []
    major, minor = torch.cuda.get_device_capability()
    native_bf16 = choose_precision((major, minor), False)[0] == "bf16"
    keep = [p for p in asked if p != "bf16" or native_bf16]
    notes = [f"bf16 left out: compute capability {major}.{minor} has no native bf16"] if len(keep) < len(asked) else []
    return keep, notes


def format_table(rows) -> str:
    head = ("precision", "stage", "seconds", "tokens/s", "peak GPU MiB", "finite", "skipped", "loss scale")
    cells = [head] + [(r["precision"], r["stage"], f"{r['seconds']:.1f}", f"{r['tokens_per_s']:.0f}",
                       "-" if r["peak_gpu_mib"] is None else f"{r['peak_gpu_mib']:.0f}",
                       "yes" if r["finite"] else "NO", str(r["skipped"]),
                       "-" if r["loss_scale"] is None else f"{r['loss_scale']:g}") for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(head))]
    lines = ["| " + " | ".join(c.ljust(w) for c, w in zip(row, widths)) + " |" for row in cells]
    lines.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", default="opt-125m", choices=sorted(SHAPES))
    parser.add_argument("--precisions", nargs="+", default=["fp16", "bf16"], choices=["fp16", "bf16", "no"])
    parser.add_argument("--steps", type=int, default=5, help="SFT/RM steps and PPO iterations per precision")
    parser.add_argument("--allow-cpu", action="store_true", help="run on a CPU (toy sizes; for the tests)")
    parser.add_argument("--out", default=str(ROOT / "runs" / "gpu_check.json"))
    args = parser.parse_args(argv)
    if not torch.cuda.is_available() and not args.allow_cpu:
        print("no CUDA GPU here: nothing to check. On a CPU the GPU path is tested by simulation "
              "(tests/test_gpu_path.py, part of make test).")
        return 1
    st = Settings(task="all", shape=args.shape, steps=args.steps, warmup=0, batch=8, seq_len=128,
                  prompts=16, prompt_len=32, new_tokens=32, ppo_epochs=4)
    precisions, notes = precisions_here(args.precisions)
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "CPU"
    print(f"device: {device} | torch {torch.__version__} | shape {args.shape} | {args.steps} steps each")
    rows = []
    for precision in precisions:
        for run in (lambda: fit_row("actor", st, precision), lambda: fit_row("critic", st, precision),
                    lambda: ppo_row(st, precision)):
            rows.append({"precision": precision, **run()})
            print(f"  {precision} {rows[-1]['stage']}: {rows[-1]['seconds']:.1f} s", flush=True)
    gpus = torch.cuda.device_count()
    ddp = multi_gpu_rows(gpus) if gpus > 1 else []
    print()
    print(format_table(rows))
    for row in ddp:
        print(f"DDP ({row['processes']} process(es)) stage {row['stage']}: {'ok' if row['ok'] else 'FAILED'} "
              f"in {row['seconds']:.0f} s" + (f"\n{row['error']}" if row["error"] else ""))
    if gpus < 2:
        notes.append("multi-GPU section skipped: fewer than 2 GPUs")
    for note in notes:
        print(note)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"device": device, "torch": torch.__version__, "shape": args.shape,
                                          "steps": args.steps, "rows": rows, "ddp": ddp, "notes": notes},
                                         indent=2) + "\n")
    return 0 if all(r["finite"] for r in rows) and all(r["ok"] for r in ddp) else 1


if __name__ == "__main__":
    sys.exit(main())
