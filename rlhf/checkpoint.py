"""Checkpoints are Hugging Face folders, written to a temporary folder and renamed into place.

A crash at any moment leaves either the previous complete checkpoint or the new complete one,
never a half-written folder. Weights are safetensors; nothing is ever pickled or unpickled.
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from . import faults
from .cards import write_card
from .config import config_to_dict

STAGE_MAKERS = {"base": "0_download.ipynb", "actor": "1_actor.ipynb", "critic": "2_critic.ipynb",
                "rlhf": "3_rlhf.ipynb", "eval": "4_test.ipynb"}


def _siblings(out: Path) -> tuple[Path, Path]:
    return out.with_name(f".{out.name}.tmp"), out.with_name(f".{out.name}.old")


def recover(out_dir) -> None:
    """Finish an interrupted swap: if only the `.old` copy survived, put it back.

    Every process of a run that loads a checkpoint calls this (require_checkpoint); if another
    put `.old` back between our check and our rename, the checkpoint is in place and that is all.
    """
    out = Path(out_dir)
    tmp, old = _siblings(out)
    if not out.exists() and old.exists():
        try:
            os.replace(old, out)
        except FileNotFoundError:
            if not out.exists():
                raise
    shutil.rmtree(old, ignore_errors=True)
    shutil.rmtree(tmp, ignore_errors=True)


def _fsync_tree(folder: Path) -> None:
    for path in folder.rglob("*"):
        if path.is_file():
            with open(path, "rb") as handle:
                os.fsync(handle.fileno())


def write_json(path, obj) -> None:
    Path(path).write_text(json.dumps(obj, indent=2, sort_keys=False) + "\n")


def save_checkpoint(out_dir, model=None, tokenizer=None, configs=(), metrics=None, files=None,
                    train_state=None, extra_models=None) -> Path:
    """Write a checkpoint folder atomically.

    model/tokenizer: saved with save_pretrained (safetensors); configs: stage config dataclasses,
    saved together as stage_config.json; metrics: dict saved as metrics.json; files: extra
    {name: json-able object} written as JSON; extra_models: {subfolder: model}; train_state: (optimizers, schedulers, progress)
    for a resumable periodic checkpoint (see save_train_state).
    """
    out = Path(out_dir)
    if int(os.environ.get("RANK", "0")) != 0:
        return out  # in a multi-process run, rank 0 writes
    out.parent.mkdir(parents=True, exist_ok=True)
    recover(out)
    tmp, old = _siblings(out)
    tmp.mkdir()
    if model is not None:
        model.save_pretrained(tmp)
    if tokenizer is not None:
        tokenizer.save_pretrained(tmp)
    if configs:
        write_json(tmp / "stage_config.json", {type(c).__name__: config_to_dict(c) for c in configs})
    if metrics is not None:
        write_json(tmp / "metrics.json", metrics)
    if model is not None and train_state is None:  # a stage's result: a model card (rlhf/cards.py)
        write_card(tmp, out.name, configs, metrics, out=out)
    for name, obj in (files or {}).items():
        write_json(tmp / name, obj)
    for name, extra in (extra_models or {}).items():
        extra.save_pretrained(tmp / name)
    if train_state is not None:
        save_train_state(tmp, *train_state)
    faults.point("save")
    _fsync_tree(tmp)
    if out.exists():
        os.replace(out, old)
    os.replace(tmp, out)
    shutil.rmtree(old, ignore_errors=True)
    return out


def require_checkpoint(path, stage: str) -> Path:
    """The checkpoint folder of `stage`, or a clear error naming the notebook that makes it."""
    path = Path(path)
    recover(path)
    has_weights = any(path.glob("*.safetensors")) if path.is_dir() else False
    if not has_weights:
        raise FileNotFoundError(f"no {stage} checkpoint at {path}: run {STAGE_MAKERS[stage]} first")
    for file in path.glob("*.safetensors"):
        check_safetensors(file, f"the {stage} checkpoint (rerun {STAGE_MAKERS[stage]})")
    return path


def check_safetensors(file, what: str) -> None:
    """Raise a clear error if a safetensors file is truncated or corrupt (header and sizes)."""
    import struct

    file = Path(file)
    size = file.stat().st_size
    try:
        with open(file, "rb") as handle:
            (header_len,) = struct.unpack("<Q", handle.read(8))
            header = json.loads(handle.read(header_len)) if 8 + header_len <= size else None
    except (struct.error, ValueError, UnicodeDecodeError):
        header = None
    if header is None:
        raise ValueError(f"{file} is corrupt (unreadable header): {what}")
    end = max((v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"), default=0)
    if 8 + header_len + end != size:
        raise ValueError(f"{file} is truncated ({size} bytes, the header promises "
                         f"{8 + header_len + end}): {what}")


def read_json(path) -> dict:
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing")
    return json.loads(path.read_text())


# ----------------------------------------------------------------------------- resumable training state
# Optimiser, scheduler and RNG state as safetensors (tensors) plus JSON (everything else), so a
# resume never unpickles anything.

def _rng_state() -> tuple[dict, dict]:
    import random

    import numpy as np
    import torch

    version, state, gauss = random.getstate()
    np_state = np.random.get_state()
    tensors = {"rng.torch": torch.get_rng_state(), "rng.numpy": torch.from_numpy(np_state[1].astype("int64"))}
    if torch.cuda.is_available():  # sampling on a GPU draws from each device's own generator
        tensors.update({f"rng.cuda.{i}": state for i, state in enumerate(torch.cuda.get_rng_state_all())})
    meta = {"python": [version, list(state), gauss], "numpy": [np_state[0], int(np_state[2]), int(np_state[3]), float(np_state[4])]}
    return tensors, meta


def _set_rng_state(tensors: dict, meta: dict) -> None:
    import random

    import numpy as np
    import torch

    version, state, gauss = meta["python"]
    random.setstate((version, tuple(state), gauss))
    name, pos, has_gauss, cached = meta["numpy"]
    np.random.set_state((name, tensors["rng.numpy"].numpy().astype("uint32"), pos, has_gauss, cached))
    torch.set_rng_state(tensors["rng.torch"])
    cuda = [tensors[f"rng.cuda.{i}"] for i in range(len(tensors)) if f"rng.cuda.{i}" in tensors]
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda[:torch.cuda.device_count()])


def _optimizer_state(optimizer, prefix: str) -> tuple[dict, dict]:
    state = optimizer.state_dict()
    tensors, scalars = {}, {}
    for index, slots in state["state"].items():
        for name, value in slots.items():
            key = f"{prefix}.{index}.{name}"
            if hasattr(value, "shape"):
                tensors[key] = value.detach().cpu().contiguous()
            else:
                scalars[key] = value
    return tensors, {"param_groups": state["param_groups"], "scalars": scalars}


def _load_optimizer_state(optimizer, prefix: str, tensors: dict, meta: dict) -> None:
    state: dict = {}
    for key, value in list(tensors.items()) + list(meta["scalars"].items()):
        if key.startswith(prefix + "."):
            _, index, name = key.split(".", 2)
            state.setdefault(int(index), {})[name] = value
    optimizer.load_state_dict({"state": state, "param_groups": meta["param_groups"]})


def gather_rng_states(accelerator) -> list:
    """Every process's RNG state, in rank order, on every process (a collective: all ranks call
    it). Each rank samples its own answers, so a resume must give each its own generators back."""
    import torch

    state = _rng_state()
    if accelerator.num_processes == 1:
        return [state]
    states = [None] * accelerator.num_processes
    torch.distributed.all_gather_object(states, state)  # in memory between the processes
    return states


def save_train_state(folder, optimizers: dict, schedulers: dict, progress: dict, rng_states=None) -> None:
    """Write train_state.safetensors + train_state.json into `folder` (inside a checkpoint being
    written). optimizers/schedulers: {name: object}; progress: JSON-able (step, history, ...);
    rng_states: gather_rng_states' list, one per process (default: this process's alone)."""
    from safetensors.torch import save_file

    tensors, meta = {}, {"progress": progress, "rng": [], "optimizers": {}, "schedulers": {}}
    for rank, (rng_tensors, rng_meta) in enumerate(rng_states or [_rng_state()]):
        tensors.update({f"rank{rank}.{key}": value for key, value in rng_tensors.items()})
        meta["rng"].append(rng_meta)
    for name, optimizer in optimizers.items():
        opt_tensors, meta["optimizers"][name] = _optimizer_state(optimizer, f"opt_{name}")
        tensors.update(opt_tensors)
    for name, scheduler in schedulers.items():
        meta["schedulers"][name] = {k: v for k, v in scheduler.state_dict().items() if k != "lr_lambdas"}
    save_file(tensors, str(Path(folder) / "train_state.safetensors"))
    write_json(Path(folder) / "train_state.json", meta)


def load_train_state(folder, optimizers: dict, schedulers: dict, rank: int = 0) -> dict:
    """Restore what save_train_state wrote, with process `rank`'s RNG state; returns `progress`."""
    from safetensors.torch import load_file

    tensors = load_file(str(Path(folder) / "train_state.safetensors"))
    meta = read_json(Path(folder) / "train_state.json")
    for name, optimizer in optimizers.items():
        _load_optimizer_state(optimizer, f"opt_{name}", tensors, meta["optimizers"][name])
    for name, scheduler in schedulers.items():
        scheduler.load_state_dict({**scheduler.state_dict(), **meta["schedulers"][name]})
    saved = rank % len(meta["rng"])  # resumed with more processes than saved: reuse, in turn
    prefix = f"rank{saved}."
    _set_rng_state({k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}, meta["rng"][saved])
    return meta["progress"]


def recover_on_one_process(accelerator, folder) -> None:
    """recover(folder) in the main process while the others wait (a collective: every process
    calls it). Run by every rank at once, two would both find only `.old` and both rename it
    back, and the second's os.replace would fail."""
    if accelerator.is_main_process:
        recover(folder)
    accelerator.wait_for_everyone()


def has_train_state(folder) -> bool:
    """The folder holds a resumable training state (recover it first: recover_on_one_process)."""
    folder = Path(folder)
    return (folder / "train_state.json").exists() and (folder / "train_state.safetensors").exists()


def load_weights(model, folder) -> None:
    """Load a checkpoint folder's safetensors weights into an existing model (strict)."""
    from safetensors.torch import load_file

    files = sorted(Path(folder).glob("*.safetensors"))
    state = {}
    for file in files:
        if file.name != "train_state.safetensors":
            state.update(load_file(str(file)))
    missing, unexpected = model.load_state_dict(state, strict=False)
    tied = {k for k in missing if "lm_head" in k or "embed_out" in k}
    if set(missing) - tied or unexpected:
        raise ValueError(f"{folder}: weights do not match the model (missing {sorted(set(missing) - tied)[:3]}, "
                         f"unexpected {sorted(unexpected)[:3]})")
