"""What both training loops, the supervised one (rlhf/train.py) and PPO's (rlhf/ppo_loop.py),
build their optimiser steps from: the Accelerator, decisions shared by every process, the fp16
loss scaler and its state in a resumable checkpoint, fused AdamW, gradient checkpointing.
"""
from __future__ import annotations

import contextlib
import math

import torch
from torch.optim import AdamW

from .runtime import is_oom, keep_freed_cpu_memory, resolve_mixed_precision


def make_accelerator(mixed_precision: str):
    """An Accelerator for this process: the GPU if there is one, else the CPU (and, launched with
    several processes, DDP over gloo).

    fp16 means the same sequence on every device: fp16 autocast and a loss scaler. On a GPU
    accelerate sets them up; on a CPU it would silently train in fp32, so we give it torch's CPU
    GradScaler and switch its autocast on. That is how the CUDA fp16 path (scale, unscale, skip on
    overflow, back off) runs and is tested on machines without a GPU.
    """
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState

    precision, on_cpu = resolve_mixed_precision(mixed_precision), not torch.cuda.is_available()
    if on_cpu:
        keep_freed_cpu_memory()  # no page faults on every step's big tensors (runtime.py)
    if AcceleratorState._shared_state.get("_mixed_precision", precision) != precision:
        # Accelerate keeps one state per process and refuses a second precision ("restart your
        # runtime"); forget it, so a stage can run again with another config in the same kernel.
        AcceleratorState._reset_state()  # the process group (PartialState) is kept
    accelerator = Accelerator(mixed_precision=precision, cpu=on_cpu)
    check_engine(accelerator.distributed_type.value)
    if precision == "fp16" and accelerator.scaler is None and accelerator.device.type == "cpu":
        accelerator.native_amp = True  # prepare() then wraps forward in fp16 autocast, as on a GPU
        accelerator.scaler = torch.amp.GradScaler("cpu")
    return accelerator


def check_engine(distributed_type: str) -> None:
    """Refuse the engines these loops do not support, before anything trains.

    One process, or several under DDP (`configs/accelerate/ddp.yaml`), is what fit and train_ppo
    do correctly and what the tests run. DeepSpeed and FSDP would need one engine per trained
    model in PPO, parameters gathered for generation and for every checkpoint, and engine-aware
    gradient accumulation; none of that is implemented, so they are not offered.
    """
    if distributed_type in ("DEEPSPEED", "FSDP", "MEGATRON_LM"):
        raise NotImplementedError(
            f"{distributed_type} is not supported by this project's training loops (README, "
            "'Many GPUs'). Launch with configs/accelerate/ddp.yaml, and for a model that does not "
            "fit use lora_rank / critic_lora_rank, gradient_checkpointing and mixed precision.")


def enable_gradient_checkpointing(model) -> None:
    """Recompute activations in the backward pass instead of storing them (less memory, ~30% more
    compute). Non-reentrant, so it also works when only LoRA adapters need gradients."""
    # transformers 5.x renamed gradient_checkpointing_enable; both take the checkpoint kwargs first
    enable = getattr(model, "activation_checkpointing_enable", None) or model.gradient_checkpointing_enable
    enable({"use_reentrant": False})


def adamw(params, lr: float, **kwargs):
    """torch's AdamW over `params` (tensors, or parameter groups as dicts), fused where torch has
    a fused kernel.

    Same update as the default AdamW; the fused kernel walks all parameters in one pass, which
    makes the step ~8x faster on a CPU (bench/README.md). Falls back to the default otherwise.
    """
    params = list(params)
    try:
        return AdamW(params, lr=lr, fused=True, **kwargs)
    except (RuntimeError, TypeError, ValueError):  # a device or dtype without the fused kernel
        return AdamW(params, lr=lr, **kwargs)


def sum_over_processes(accelerator, value: float) -> float:
    """`value` summed over every process of the run (itself in a single process). A collective:
    every process must call it at the same point."""
    if accelerator.num_processes == 1:
        return float(value)
    total = torch.tensor(float(value), dtype=torch.float64, device=accelerator.device)
    return float(accelerator.reduce(total, "sum"))


def all_processes(accelerator, flag: bool) -> bool:
    """True when `flag` holds in every process: a decision all ranks then take together."""
    return sum_over_processes(accelerator, float(not flag)) == 0


def any_process(accelerator, flag: bool) -> bool:
    """True when `flag` holds in some process (a collective, as sum_over_processes)."""
    return sum_over_processes(accelerator, float(flag)) > 0


@contextlib.contextmanager
def out_of_memory_together(accelerator):
    """Run the block; with several processes, an out-of-memory error in it on any of them is
    raised on all, once every one has run it (one scalar all-reduce). halve_on_oom then redoes
    the step with half the micro-batch on every rank at once, so no rank ever waits in a
    collective that another, retrying, does not join. One process: the block, nothing added."""
    if accelerator.num_processes == 1:
        yield
        return
    ran_out = False
    try:
        yield
    except RuntimeError as err:  # torch.OutOfMemoryError is a RuntimeError
        if not is_oom(err):
            raise
        ran_out = True  # the error, and the tensors its frames hold, are let go here
    if any_process(accelerator, ran_out):
        raise torch.OutOfMemoryError(f"out of memory in a micro-batch in {'this' if ran_out else 'another'} "
                                     "process (lower micro_batch / grad_accum to start smaller)")


GRADIENT_BUCKET = 2**22  # elements (16 MB in fp32) per all-reduce of average_gradients, as DDP's 25 MB buckets


def average_gradients(accelerator, models, bucket: int = GRADIENT_BUCKET) -> None:
    """Every trainable parameter's gradient averaged over the processes, in place: DDP's
    all-reduce, done once after the step's last micro-batch has got through out_of_memory_together
    (the backward passes run under no_sync, so an error inside one cannot strand a rank in DDP's).
    The gradients travel flattened, `bucket` elements of one dtype per collective, not one
    collective per tensor (a Llama has hundreds of them)."""
    if accelerator.num_processes == 1:
        return
    grads = []
    for model in models:
        for param in model.parameters():
            if param.requires_grad:
                if param.grad is None:  # every rank must reduce the same tensors
                    param.grad = torch.zeros_like(param)
                grads.append(param.grad)
    buckets, size = [], 0
    for grad in grads:
        if not buckets or size + grad.numel() > bucket or grad.dtype != buckets[-1][0].dtype:
            buckets.append([])
            size = 0
        buckets[-1].append(grad)
        size += grad.numel()
    for group in buckets:
        flat = torch.cat([g.reshape(-1) for g in group])                    # (sum of numels,)
        torch.distributed.all_reduce(flat)
        flat.div_(accelerator.num_processes)
        for grad, part in zip(group, flat.split([g.numel() for g in group])):
            grad.copy_(part.view_as(grad))


def mean_over_processes(accelerator, stats: dict) -> dict:
    """Every number of `stats` averaged over the processes, so each rank logs and decides the same
    (every rank must pass the same keys)."""
    if accelerator.num_processes == 1 or not stats:
        return stats
    keys = sorted(stats)
    values = torch.tensor([float(stats[k]) for k in keys], dtype=torch.float64, device=accelerator.device)
    return dict(zip(keys, accelerator.reduce(values, "mean").tolist()))


def loss_scale(accelerator) -> float | None:
    """The fp16 loss scaler's current scale; None without one (bf16, fp32)."""
    return None if accelerator.scaler is None else float(accelerator.scaler.get_scale())


def is_overflow(accelerator, stats) -> bool:
    """A skipped fp16 step that the scaler explains: the loss was finite, only the scaled
    gradients overflowed, and the scale has room left to back off (it starts at 2^16, where
    the first steps often overflow). Such steps do not count towards max_bad_steps."""
    scale = loss_scale(accelerator)
    return scale is not None and scale >= 1.0 and all(math.isfinite(v) for v in stats.values())


def scaler_state(accelerator) -> dict | None:
    """The fp16 loss scaler's state (scale, growth tracker) as JSON, for a resumable checkpoint."""
    return None if accelerator.scaler is None else accelerator.scaler.state_dict()


def restore_scaler(accelerator, progress: dict) -> None:
    """Put the scaler state a resumed run saved (progress["scaler"]) back into the fp16 scaler."""
    if accelerator.scaler is not None and progress.get("scaler"):
        accelerator.scaler.load_state_dict(progress["scaler"])
