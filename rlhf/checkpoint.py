"""Checkpoints are Hugging Face folders, written to a temporary folder and renamed into place.

A crash at any moment leaves either the previous complete checkpoint or the new complete one,
never a half-written folder. Weights are safetensors; nothing is ever pickled or unpickled.
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from .config import config_to_dict

STAGE_MAKERS = {"base": "0_download.ipynb", "actor": "1_actor.ipynb", "critic": "2_critic.ipynb",
                "rlhf": "3_rlhf.ipynb", "eval": "4_test.ipynb"}


def _siblings(out: Path) -> tuple[Path, Path]:
    return out.with_name(f".{out.name}.tmp"), out.with_name(f".{out.name}.old")


def recover(out_dir) -> None:
    """Finish an interrupted swap: if only the `.old` copy survived, put it back."""
    out = Path(out_dir)
    tmp, old = _siblings(out)
    if not out.exists() and old.exists():
        os.replace(old, out)
    shutil.rmtree(old, ignore_errors=True)
    shutil.rmtree(tmp, ignore_errors=True)


def _fsync_tree(folder: Path) -> None:
    for path in folder.rglob("*"):
        if path.is_file():
            with open(path, "rb") as handle:
                os.fsync(handle.fileno())


def write_json(path, obj) -> None:
    Path(path).write_text(json.dumps(obj, indent=2, sort_keys=False) + "\n")


def save_checkpoint(out_dir, model=None, tokenizer=None, configs=(), metrics=None, files=None) -> Path:
    """Write a checkpoint folder atomically.

    model/tokenizer: saved with save_pretrained (safetensors); configs: stage config dataclasses,
    saved together as stage_config.json; metrics: dict saved as metrics.json; files: extra
    {name: json-able object} written as JSON.
    """
    out = Path(out_dir)
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
    for name, obj in (files or {}).items():
        write_json(tmp / name, obj)
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
    return path


def read_json(path) -> dict:
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing")
    return json.loads(path.read_text())
