"""Experiment tracking through accelerate's trackers: TensorBoard, wandb, trackio.

`open_log(stage, configs, track_cfg)` returns the stage's RunLog (text log and JSON lines, as
before) with the trackers TrackConfig.report_to asks for attached: the stage configs go in as
hyperparameters, and every `log.record(metrics)` (each SFT or reward-model step and epoch, each
PPO iteration) goes to every tracker at its step. "auto" means TensorBoard when it is installed
(event files under model/logs/<stage>/; `tensorboard --logdir model/logs` shows them), else only
the text and JSON lines. A tracker that is asked for but not installed is a ConfigError.
"""
from __future__ import annotations

import dataclasses
import numbers
import os

from .config import ConfigError, TrackConfig
from .runtime import RunLog


def available() -> dict[str, bool]:
    """Which trackers this environment could use."""
    from accelerate.utils import is_tensorboard_available, is_trackio_available, is_wandb_available

    return {"tensorboard": bool(is_tensorboard_available()), "wandb": bool(is_wandb_available()),
            "trackio": bool(is_trackio_available())}


def resolve_report_to(report_to: str) -> list[str]:
    """The tracker names `report_to` means here: "auto" is tensorboard when installed, "none" none."""
    have = available()
    if report_to == "auto":
        return ["tensorboard"] if have["tensorboard"] else []
    names = [n.strip() for n in report_to.split(",") if n.strip() and n.strip() != "none"]
    for name in names:
        if name not in have:
            raise ConfigError(f"TrackConfig.report_to: unknown tracker {name!r}; choose from "
                              f"none, auto, {', '.join(have)}")
        if not have[name]:
            raise ConfigError(f"TrackConfig.report_to asks for {name}, which is not installed: "
                              f"pip install {name}")
    return names


def hyperparameters(configs) -> dict:
    """The stage configs flattened to {"PPOConfig/kl_coef": 0.1, ...}: scalars as they are,
    anything else (the split tuple) as its repr, which every tracker can store."""
    flat = {}
    for config in configs:
        for key, value in dataclasses.asdict(config).items():
            keep = isinstance(value, (bool, numbers.Number, str)) or value is None
            flat[f"{type(config).__name__}/{key}"] = value if keep else repr(value)
    return flat


def make_trackers(names, stage: str, track_cfg: TrackConfig):
    """Started accelerate trackers, one per name; TensorBoard writes to logging_dir/stage."""
    from accelerate.tracking import LOGGER_TYPE_TO_CLASS

    trackers = []
    for name in names:
        cls = LOGGER_TYPE_TO_CLASS[name]
        if name == "tensorboard":
            tracker = cls(stage, track_cfg.logging_dir)
        else:  # wandb and trackio take the project as their run name, the stage as the run
            tracker = cls(track_cfg.project, name=stage)
        tracker.main_process_only = False  # open_log makes them on rank 0 only
        if hasattr(tracker, "start"):
            tracker.start()
        trackers.append(tracker)
    return trackers


def open_log(stage: str, configs=(), track_cfg: TrackConfig | None = None, folder: str = "model/logs"):
    """The stage's RunLog with its trackers; `log.finish()` closes them (also done at exit)."""
    import atexit

    track_cfg = track_cfg or TrackConfig()
    names = resolve_report_to(track_cfg.report_to)
    if names:  # accelerate's trackers log through its state: set it up on every rank, together
        from accelerate import PartialState

        PartialState()
    if int(os.environ.get("RANK", "0")) != 0:
        names = []  # in a multi-process run, rank 0 logs (as RunLog and save_checkpoint)
    log = RunLog(folder, stage, trackers=make_trackers(names, stage, track_cfg) if names else ())
    if log.trackers:
        params = hyperparameters(configs)
        for tracker in log.trackers:
            tracker.store_init_configuration(params)
        where = f" (event files in {track_cfg.logging_dir}/{stage})" if "tensorboard" in names else ""
        log(f"tracking with {', '.join(names)}{where}")
        atexit.register(log.finish)
    return log
