"""The supervised training loop shared by the actor (SFT) and the reward model.

One function, `fit`, drives any model whose loss a `loss_fn(model, batch) -> (loss, stats)`
computes. It creates its own `Accelerator` (device, mixed precision), so the same call runs in a
notebook, a script or under `accelerate launch`. Gradient accumulation is explicit: each
optimiser step sees `batch_size` examples in micro-batches; on an out-of-memory error the
micro-batch is halved and the step redone, so the effective batch never changes.
"""
from __future__ import annotations

import contextlib
import math
import time

import torch
from transformers import get_linear_schedule_with_warmup

from . import faults
from .checkpoint import gather_rng_states, has_train_state, load_train_state, load_weights, save_checkpoint
from .runtime import free_gpu_cache, halve_on_oom
from .steps import (adamw, all_processes, enable_gradient_checkpointing, is_overflow, loss_scale,
                    make_accelerator, mean_over_processes, restore_scaler, scaler_state,
                    sum_over_processes)


def make_optimizer(model, cfg, total_steps: int, lr: float | None = None):
    """AdamW with linear warm-up over cfg.warmup_ratio of the steps, then linear decay to 0."""
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = adamw(trainable, lr or cfg.lr, weight_decay=cfg.weight_decay)
    warmup = int(cfg.warmup_ratio * total_steps)
    return optimizer, get_linear_schedule_with_warmup(optimizer, warmup, total_steps)


def step_batches(n_items: int, batch_size: int, epoch: int, seed: int):
    """Shuffled index lists of `batch_size` (the last one may be shorter), the same for a seed."""
    generator = torch.Generator().manual_seed(seed * 1000 + epoch)
    order = torch.randperm(n_items, generator=generator).tolist()
    return [order[i:i + batch_size] for i in range(0, n_items, batch_size)]


def loss_units(batch) -> int:
    """What a loss_fn's mean runs over: the labelled tokens of an SFT batch (labels other than
    -100, after the one-position shift), otherwise its rows (a reward batch: 2 per pair)."""
    if "labels" in batch:
        return int((batch["labels"][:, 1:] != -100).sum())
    return int(batch["input_ids"].shape[0])


def accumulate_step(model, items, collate, loss_fn, accelerator, micro: int, step_units: float):
    """Forward/backward over `items` in micro-batches of `micro`; returns the step's stats.

    Each micro-batch's mean loss is weighted by its share of `step_units` (the loss units of the
    step's whole batch over all processes) times the number of processes, which DDP's gradient
    average divides out again: the gradient is the token mean of the global batch whatever the
    split into processes and micro-batches. Gradients are all-reduced once, on the last
    micro-batch (`no_sync` on the others).
    """
    batches = [collate(items[i:i + micro]) for i in range(0, len(items), micro)]
    units = [loss_units(batch) for batch in batches]
    scale = accelerator.num_processes / max(step_units, 1.0)
    stats_sum = {}
    for i, (batch, n) in enumerate(zip(batches, units)):
        batch = {k: v.to(accelerator.device) for k, v in batch.items()}
        last = i == len(batches) - 1
        with contextlib.nullcontext() if last else accelerator.no_sync(model):
            with accelerator.autocast():
                loss, stats = loss_fn(model, batch)
            # a micro-batch with nothing to learn has an undefined (NaN) mean: it adds nothing
            accelerator.backward(loss * (n * scale) if n else loss.nan_to_num() * 0.0)
        for key, value in stats.items():
            stats_sum[key] = stats_sum.get(key, 0.0) + float(value) * n / max(sum(units), 1)
    return stats_sum


def robust_step(model, items, collate, loss_fn, accelerator, optimizer, micro: int, log):
    """One step's gradients; on out-of-memory the micro-batch is halved and the step redone
    (the effective batch is unchanged). Returns (stats, micro)."""
    step_units = sum_over_processes(accelerator, loss_units(collate(items)))  # once, outside the retries

    def attempt(micro):
        optimizer.zero_grad(set_to_none=True)
        return accumulate_step(model, items, collate, loss_fn, accelerator, micro, step_units)
    return halve_on_oom(attempt, micro, log, "micro-batch")


def apply_step(model, stats, accelerator, optimizer, cfg) -> tuple[bool, float]:
    """Clip and step. Returns (stepped, the gradient norm before clipping).

    Without a loss scaler, a non-finite loss or gradient skips the step. With one (fp16), the step
    always goes to the scaler: it skips the update itself when the scaled gradients overflowed and
    halves its scale. (GradScaler needs step() and update() every step; skipping them here would
    leave it un-updated, and the next unscale would raise.)
    """
    grad_norm = float(accelerator.clip_grad_norm_(model.parameters(), cfg.max_grad_norm))  # fp16: unscales first
    finite = all_processes(accelerator, math.isfinite(grad_norm) and all(math.isfinite(v) for v in stats.values()))
    if finite or accelerator.scaler is not None:
        optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return finite, grad_norm


def resume(model, optimizer, scheduler, accelerator, resume_dir, log) -> dict:
    """Training progress: fresh, or restored from the resumable checkpoint in `resume_dir`."""
    progress = {"step": 0, "micro": None, "bad_in_a_row": 0, "history": {"steps": [], "epochs": []}}
    if resume_dir and has_train_state(resume_dir):
        load_weights(model, resume_dir)
        progress = load_train_state(resume_dir, {"model": optimizer}, {"model": scheduler},
                                    rank=accelerator.process_index)
        restore_scaler(accelerator, progress)
        log(f"resumed from {resume_dir} at step {progress['step']}")
    return progress


def fit(model, train_items, collate, loss_fn, cfg, log=print, evaluate=None, resume_dir=None,
        tokenizer=None, progress=True):
    """Train `model` on `train_items` for cfg.epochs; returns (model, history).

    evaluate(model) -> dict runs after each epoch. With `resume_dir`, a resumable checkpoint
    (weights, optimiser, scheduler, RNG, step, history) is written there every
    cfg.checkpoint_every steps, and a rerun continues from it: the result is the same as an
    uninterrupted run. Non-finite steps are skipped; cfg.max_bad_steps in a row stop the stage.
    """
    from tqdm.auto import tqdm

    accelerator = make_accelerator(cfg.mixed_precision)
    if cfg.gradient_checkpointing:
        enable_gradient_checkpointing(model)
    world, rank = accelerator.num_processes, accelerator.process_index
    global_batch = cfg.batch_size * world  # each process takes cfg.batch_size items of a step
    per_epoch = math.ceil(len(train_items) / global_batch)
    total = min(cfg.max_steps or per_epoch * cfg.epochs, per_epoch * cfg.epochs)
    optimizer, scheduler = make_optimizer(model, cfg, total)
    model, optimizer = accelerator.prepare(model, optimizer)
    state = resume(accelerator.unwrap_model(model), optimizer, scheduler, accelerator, resume_dir, log)
    history, micro = state["history"], state["micro"] or max(1, cfg.batch_size // cfg.grad_accum)
    bar = tqdm(total=total, initial=state["step"], desc="train", disable=not progress)
    start, step = time.time(), 0
    for epoch in range(cfg.epochs):
        model.train()
        for indices in step_batches(len(train_items), global_batch, epoch, cfg.seed):
            if step >= total:
                break
            step += 1
            if step <= state["step"]:
                continue  # done before the interruption
            items = [train_items[i] for i in (indices[rank::world] or indices[:1])]
            stats, micro = robust_step(model, items, collate, loss_fn, accelerator, optimizer, micro, log)
            stepped, grad_norm = apply_step(model, stats, accelerator, optimizer, cfg)
            stats = mean_over_processes(accelerator, stats)  # what every rank logs and decides on
            scheduler.step()
            overflow = not stepped and is_overflow(accelerator, stats)
            bad = not (stepped or overflow)
            state.update(step=step, micro=micro, bad_in_a_row=state["bad_in_a_row"] + 1 if bad else 0,
                         scaler=scaler_state(accelerator))
            if overflow:
                log(f"step {step}: fp16 gradients overflowed, update skipped, loss scale now "
                    f"{loss_scale(accelerator):g}")
            elif bad:
                log(f"step {step}: non-finite loss or gradient, update skipped")
                if state["bad_in_a_row"] >= cfg.max_bad_steps:
                    raise FloatingPointError(f"{state['bad_in_a_row']} non-finite steps in a row: "
                                             "lower the learning rate or check the data")
            history["steps"].append({"step": step, "epoch": epoch, "lr": scheduler.get_last_lr()[0],
                                     "grad_norm": grad_norm, "skipped": not stepped,
                                     **({"loss_scale": loss_scale(accelerator)} if accelerator.scaler else {}),
                                     **stats})
            if hasattr(log, "record"):  # a RunLog: the JSON lines and the experiment trackers
                log.record(history["steps"][-1])
            bar.update(1)
            bar.set_postfix(loss=f"{stats.get('loss', float('nan')):.3f}")
            if resume_dir and cfg.checkpoint_every and step % cfg.checkpoint_every == 0 and step < total:
                rng = gather_rng_states(accelerator)  # every process's generators, to rank 0
                if accelerator.is_main_process:
                    save_checkpoint(resume_dir, accelerator.unwrap_model(model), tokenizer,
                                    train_state=({"model": optimizer}, {"model": scheduler}, state, rng))
            faults.point("step")
        if evaluate is not None and epoch + 1 > len(history["epochs"]):
            model.eval()
            result = {"epoch": epoch + 1, "step": step, **evaluate(accelerator.unwrap_model(model))}
            history["epochs"].append(result)
            if hasattr(log, "record"):
                log.record(result)
            log(f"epoch {epoch + 1}: " + ", ".join(f"{k} {v:.4g}" for k, v in result.items()
                                                   if isinstance(v, float)))
        if step >= total:
            break
    bar.close()
    history["train_seconds"] = history.get("train_seconds", 0.0) + time.time() - start
    model = accelerator.unwrap_model(model, keep_fp32_wrapper=False)  # no autocast left on forward
    model.eval()
    free_gpu_cache()
    return model, history
