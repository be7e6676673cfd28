"""Plumbing written once: device and precision, seeds, GPU cache, logging (Colab set-up is in
rlhf/colab.py). Each is a one-line call from the notebooks."""
from __future__ import annotations

import gc
import json
import numbers
import os
import random
import sys
import time
from pathlib import Path

import numpy as np
import torch

def cpu_has_bf16() -> bool:
    """The CPU multiplies bf16 in hardware (AVX512-BF16 or AMX). Elsewhere torch emulates bf16
    on the CPU, which is slower than fp32."""
    try:
        return bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())
    except AttributeError:  # a torch without these probes
        return False


def choose_precision(cuda_capability: tuple[int, int] | None, cpu_bf16: bool) -> tuple[str, str]:
    """What mixed_precision="auto" means on this hardware, and why: (precision, reason).

    cuda_capability: the GPU's (major, minor) compute capability, None without a GPU.
    bf16 only where the hardware multiplies it natively: a GPU of compute capability >= 8.0
    (A100, L4, H100) or a CPU with AVX512-BF16 or AMX. An older GPU (Colab's free T4 is 7.5, a
    V100 7.0) emulates bf16 more slowly than fp32, so it gets fp16 with loss scaling. Weights,
    optimiser state and the PPO math stay fp32 in every case.
    """
    if cuda_capability is not None:
        major, minor = cuda_capability
        if major >= 8:
            return "bf16", f"GPU compute capability {major}.{minor} >= 8.0: native bf16"
        return "fp16", (f"GPU compute capability {major}.{minor} < 8.0: bf16 would be emulated "
                        "(slower than fp32), so fp16 with a loss scaler")
    if cpu_bf16:
        return "bf16", "no GPU; the CPU has bf16 instructions (AVX512-BF16 or AMX)"
    return "no", "no GPU and no bf16 instructions on the CPU: fp32"


def explain_precision(mode: str) -> tuple[str, str]:
    """(precision, reason) for a config's mixed_precision on this machine."""
    if mode != "auto":
        return mode, "asked for"
    capability = torch.cuda.get_device_capability() if torch.cuda.is_available() else None
    return choose_precision(capability, cpu_has_bf16())


def resolve_mixed_precision(mode: str) -> str:
    """'auto' -> bf16, fp16 or 'no' (fp32) as `choose_precision` decides; anything else as is."""
    return explain_precision(mode)[0]


def keep_freed_cpu_memory() -> bool:
    """Ask glibc's malloc to keep freed memory for reuse instead of returning it to the system.

    Every training step allocates and frees the same big CPU tensors (an embedding's gradient,
    the logits). glibc serves blocks over 32 MB with mmap and unmaps them when they are freed,
    so each step gets fresh pages that the kernel faults in and zeroes 4 KiB at a time. On the
    2-core machines here that was 9% of a PPO iteration of the opt-125m shape, spent zero-filling
    embedding gradients; with this call an iteration took 32% less time and an SFT step 23% less
    (bench/README.md). It is what PyTorch's caching allocator does on a GPU, and what jemalloc or
    tcmalloc give under LD_PRELOAD. The price: the process keeps its peak memory until it ends.
    Returns False (and changes nothing) where the C library is not glibc.
    """
    import ctypes

    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        M_TRIM_THRESHOLD, M_MMAP_MAX = -1, -4  # from glibc's malloc.h
        return bool(libc.mallopt(M_MMAP_MAX, 0)) and bool(libc.mallopt(M_TRIM_THRESHOLD, 2**31 - 1))
    except (OSError, AttributeError):  # musl, or no libc.so.6
        return False


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def free_gpu_cache() -> dict:
    """Collect garbage and release cached GPU memory; returns allocated/reserved MiB after."""
    gc.collect()
    if not torch.cuda.is_available():
        return {}
    torch.cuda.empty_cache()
    return {"allocated_mib": torch.cuda.memory_allocated() / 2**20,
            "reserved_mib": torch.cuda.memory_reserved() / 2**20}


def is_oom(err: BaseException) -> bool:
    return isinstance(err, torch.OutOfMemoryError) or "out of memory" in str(err).lower()


def halve_on_oom(run, size: int, log, what: str):
    """run(size), and on out-of-memory free the cache and run again with half the size.

    Returns (result, the size that fitted). `size` is a number of rows, `what` names it ("micro-
    batch", "generation chunk"); at 1 row the error becomes a MemoryError that says what to do next.
    """
    while True:
        try:
            return run(size), size
        except RuntimeError as err:  # torch.OutOfMemoryError is a RuntimeError
            if not is_oom(err):
                raise
            if size == 1:
                raise MemoryError(f"out of memory with a {what} of 1 row. Last resort: run on "
                                  "the CPU (CUDA_VISIBLE_DEVICES='' or Colab's CPU runtime), or set "
                                  "mixed_precision / gradient_checkpointing / a shorter max_length "
                                  "or max_new_tokens.") from err
        free_gpu_cache()  # outside the except block: the error's frames no longer hold tensors
        size = max(1, size // 2)
        log(f"out of memory: {what} halved to {size} rows")


class RunLog:
    """Prints a line and appends it to a text log; `record` appends a JSON line of metrics and
    sends its numbers to the experiment trackers, if any (rlhf/tracking.py attaches them)."""

    def __init__(self, folder, stage: str, trackers=()):
        self.folder = Path(folder)
        self.trackers = list(trackers)
        self.writes = int(os.environ.get("RANK", "0")) == 0  # in a multi-process run, rank 0 logs
        self.text = self.folder / f"{stage}.log"
        self.jsonl = self.folder / f"{stage}.jsonl"
        if self.writes:
            self.folder.mkdir(parents=True, exist_ok=True)
            self.jsonl.write_text("")
        self.start = time.time()

    def __call__(self, message: str) -> None:
        if not self.writes:
            return
        line = f"[{time.time() - self.start:7.1f}s] {message}"
        print(line, flush=True)
        with open(self.text, "a") as handle:
            handle.write(line + "\n")

    def record(self, metrics: dict, step: int | None = None) -> None:
        """One JSON line; to each tracker its numbers at `step` (default: the metrics' iteration
        or step)."""
        if not self.writes:
            return
        with open(self.jsonl, "a") as handle:
            handle.write(json.dumps(metrics) + "\n")
        if self.trackers:
            step = step if step is not None else metrics.get("iteration", metrics.get("step"))
            values = numbers_of(metrics)
            for tracker in self.trackers:
                tracker.log(values, step=step)

    def finish(self) -> None:
        """Close the trackers (flushes TensorBoard's event files); safe to call twice."""
        trackers, self.trackers = self.trackers, []
        for tracker in trackers:
            tracker.finish()


def numbers_of(metrics: dict, prefix: str = "") -> dict:
    """The numeric entries of `metrics` (bools and NaN-free floats included), nested dicts flattened."""
    out = {}
    for key, value in metrics.items():
        if isinstance(value, dict):
            out.update(numbers_of(value, f"{prefix}{key}/"))
        elif isinstance(value, numbers.Number):
            out[f"{prefix}{key}"] = float(value)
    return out
