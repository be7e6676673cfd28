"""The supervised training loop shared by the actor (SFT) and the reward model.

One function, `fit`, drives any model whose loss a `loss_fn(model, batch) -> (loss, stats)`
computes. It creates its own `Accelerator` (device, mixed precision), so the same call runs in a
notebook, a script or under `accelerate launch`. Gradient accumulation is explicit: each
optimiser step sees `batch_size` examples in micro-batches; on an out-of-memory error the
micro-batch is halved and the step redone, so the effective batch never changes.
"""
from __future__ import annotations

import math
import time

import torch
from torch.optim import AdamW
from transformers import get_linear_schedule_with_warmup

from .runtime import free_gpu_cache, is_oom, resolve_mixed_precision


def make_accelerator(mixed_precision: str):
    from accelerate import Accelerator

    return Accelerator(mixed_precision=resolve_mixed_precision(mixed_precision))


def make_optimizer(model, cfg, total_steps: int, lr: float | None = None):
    """AdamW with linear warm-up over cfg.warmup_ratio of the steps, then linear decay to 0."""
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = AdamW(params, lr=lr or cfg.lr, weight_decay=cfg.weight_decay)
    warmup = int(cfg.warmup_ratio * total_steps)
    return optimizer, get_linear_schedule_with_warmup(optimizer, warmup, total_steps)


def step_batches(n_items: int, batch_size: int, epoch: int, seed: int):
    """Shuffled index lists of `batch_size` (the last one may be shorter), the same for a seed."""
    generator = torch.Generator().manual_seed(seed * 1000 + epoch)
    order = torch.randperm(n_items, generator=generator).tolist()
    return [order[i:i + batch_size] for i in range(0, n_items, batch_size)]


def accumulate_step(model, items, collate, loss_fn, accelerator, micro: int):
    """Forward/backward over `items` in micro-batches; gradients average over the step."""
    stats_sum, n = {}, len(items)
    for start in range(0, n, micro):
        chunk = items[start:start + micro]
        batch = {k: v.to(accelerator.device) for k, v in collate(chunk).items()}
        with accelerator.autocast():
            loss, stats = loss_fn(model, batch)
        accelerator.backward(loss * len(chunk) / n)
        for key, value in stats.items():
            stats_sum[key] = stats_sum.get(key, 0.0) + float(value) * len(chunk) / n
    return stats_sum


def robust_step(model, items, collate, loss_fn, accelerator, optimizer, micro: int, log):
    """One optimiser step that halves the micro-batch on out-of-memory. Returns (stats, micro)."""
    while True:
        optimizer.zero_grad(set_to_none=True)
        try:
            return accumulate_step(model, items, collate, loss_fn, accelerator, micro), micro
        except RuntimeError as err:
            if not is_oom(err) or micro == 1:
                raise
            micro = max(1, micro // 2)
            free_gpu_cache()
            log(f"out of memory: micro-batch halved to {micro} (effective batch unchanged)")


def fit(model, train_items, collate, loss_fn, cfg, log=print, evaluate=None, on_checkpoint=None,
        progress=True):
    """Train `model` on `train_items` for cfg.epochs; returns the per-step and per-epoch history.

    evaluate(model) -> dict is called after each epoch; on_checkpoint(model, step) every
    cfg.checkpoint_every steps.
    """
    from tqdm.auto import tqdm

    accelerator = make_accelerator(cfg.mixed_precision)
    if cfg.gradient_checkpointing:
        model.gradient_checkpointing_enable()
    per_epoch = math.ceil(len(train_items) / cfg.batch_size)
    total = per_epoch * cfg.epochs if not cfg.max_steps else min(cfg.max_steps, per_epoch * cfg.epochs)
    optimizer, scheduler = make_optimizer(model, cfg, total)
    model, optimizer = accelerator.prepare(model, optimizer)
    micro = max(1, cfg.batch_size // cfg.grad_accum)
    history = {"steps": [], "epochs": []}
    bar = tqdm(total=total, desc="train", disable=not progress)
    step, start = 0, time.time()
    for epoch in range(cfg.epochs):
        model.train()
        for indices in step_batches(len(train_items), cfg.batch_size, epoch, cfg.seed):
            items = [train_items[i] for i in indices]
            stats, micro = robust_step(model, items, collate, loss_fn, accelerator, optimizer, micro, log)
            grad_norm = accelerator.clip_grad_norm_(model.parameters(), cfg.max_grad_norm)
            if not all(math.isfinite(v) for v in stats.values()) or not torch.isfinite(grad_norm):
                log(f"step {step}: non-finite loss or gradient, update skipped")
                optimizer.zero_grad(set_to_none=True)
            else:
                optimizer.step()
            scheduler.step()
            step += 1
            history["steps"].append({"step": step, "epoch": epoch, "lr": scheduler.get_last_lr()[0],
                                     "grad_norm": float(grad_norm), **stats})
            bar.update(1)
            bar.set_postfix(loss=f"{stats.get('loss', float('nan')):.3f}")
            if on_checkpoint and cfg.checkpoint_every and step % cfg.checkpoint_every == 0:
                on_checkpoint(accelerator.unwrap_model(model), step)
            if step >= total:
                break
        if evaluate is not None:
            model.eval()
            result = {"epoch": epoch + 1, "step": step, **evaluate(accelerator.unwrap_model(model))}
            history["epochs"].append(result)
            log("epoch {epoch}: ".format(epoch=epoch + 1) + ", ".join(
                f"{k} {v:.4g}" for k, v in result.items() if isinstance(v, float)))
        if step >= total:
            break
    bar.close()
    history["train_seconds"] = time.time() - start
    model = accelerator.unwrap_model(model)
    model.eval()
    free_gpu_cache()
    return model, history
