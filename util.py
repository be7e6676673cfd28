"""Everything the notebooks use, in one import: `import util`.

A thin facade over the `rlhf` package, where each piece lives in a short module:

  rlhf/config.py      one frozen config per stage, the presets, config tables
  rlhf/data.py        reading, validation, splitting, encoding, collation
  rlhf/tasks.py       the built-in tasks, the demonstrator and the gold judge
  rlhf/models.py      hub-or-fallback base model and tokenizer; the four models of PPO, dropout off
  rlhf/hub.py         is the Hugging Face Hub reachable (decided in seconds)
  rlhf/steps.py       what both loops step with: accelerator, process collectives, fp16 scaler, AdamW
  rlhf/train.py       the supervised loop (SFT and reward model)
  rlhf/sft.py         stage 1: the SFT loss
  rlhf/reward.py      stage 2: the pairwise loss, scores read at the last token
  rlhf/ppo.py         stage 3: the PPO math, small pure functions
  rlhf/rollout.py     stage 3: one rollout scored by the four models
  rlhf/ppo_loop.py    stage 3: the PPO update, and the resumable multi-process runner
  rlhf/evaluate.py    stage 4: SFT against RLHF
  rlhf/verdict.py     verdicts on a run in words, from window means of its own numbers
  rlhf/generation.py  sampling, decoding, chat
  rlhf/checkpoint.py  atomic Hugging Face checkpoint folders, resumable training state
  rlhf/runtime.py     precision choice, out-of-memory back-off, seeds, cache, logging
  rlhf/colab.py       setting up Colab (the notebooks' first cell), the Open-in-Colab links
  rlhf/sources.py     DATA from files, save_to_disk folders or the Hub; rm-static/hh-rlhf layouts
  rlhf/chat.py        the chat template; rows rendered with a hub model's own one
  rlhf/overrides.py   stage.field=value settings (the SET parameter) and command-line flags
  rlhf/tracking.py    TensorBoard / wandb / trackio through accelerate's trackers
  rlhf/cards.py       model cards in every checkpoint, push_to_hub

The math modules are reached as modules (`util.ppo.gae`, `util.reward.pairwise_loss`,
`util.rollout.score`, `util.verdict.training_verdict`), everything else by name.
"""
import shutil

from rlhf import ppo, reward, rollout, sft, verdict
from rlhf.cards import push_to_hub
from rlhf.checkpoint import read_json, require_checkpoint, save_checkpoint
from rlhf.config import config_table, make_config
from rlhf.data import (collate_pairs, collate_prompts, collate_sft, encode_pairs, encode_prompts,
                       encode_sft, format_summary, load_dataset_dir, split_rows, token_table)
from rlhf.evaluate import (bootstrap_interval, evaluate_policies, flaw_table, gold_judge_for, per_prompt_differences,
                           pick_examples, summarize, wrong_above_clean)
from rlhf.generation import chat, complete, decode_responses, generate, position_ids_from_mask
from rlhf.models import (check_tokenizer_matches, count_parameters, get_base, has_gpu,
                         load_policy_models, load_ppo_models, load_score_model, load_tokenizer,
                         resolve_preset)
from rlhf.ppo_loop import (Timer, make_optimizer, ppo_losses, ppo_update, prompt_batch,
                           rollout_stats, train_ppo)
from rlhf.overrides import check_overrides, stage_overrides
from rlhf.rollout import make_rollout
from rlhf.runtime import RunLog, explain_precision, free_gpu_cache, seed_everything
from rlhf.sources import load_data
from rlhf.steps import make_accelerator
from rlhf.tasks import FLAW_NAMES, gold_breakdown, gold_flaws, gold_score
from rlhf.tracking import open_log as open_tracked_log
from rlhf.train import fit

MODEL_DIR = "model"


def stage_dir(stage: str, root: str = MODEL_DIR) -> str:
    """Where a stage writes its checkpoint: model/base, model/actor, model/critic, model/rlhf."""
    return f"{root}/{stage}"


def resume_dir(stage: str, root: str = MODEL_DIR) -> str:
    """Where a stage keeps its resumable periodic checkpoint until it completes."""
    return f"{root}/resume/{stage}"


def clear_resume(stage: str, root: str = MODEL_DIR) -> None:
    shutil.rmtree(resume_dir(stage, root), ignore_errors=True)


def start(stage: str, preset: str = "auto", data_dir: str = "dataset", show=(), overrides: str = ""):
    """The first call of notebooks 1-4 (after the first cell has found the project and set up
    Colab): resolve the preset (and say why), check `overrides` ("ppo.lora_rank=8 actor.epochs=1":
    the SET parameter) for every stage, print the stage's config (the fields in `show` and
    those the preset changed; `config_table(cfg)` prints all) and the precision `auto` means here,
    seed everything. Returns (preset, data_cfg, cfg)."""
    name, reason = resolve_preset(preset)
    print(f"preset: {name} ({reason})")
    parsed = check_overrides(overrides, name)  # an unknown or ill-typed field stops here
    data_cfg = make_config("data", name, **{"data_dir": data_dir, **parsed.get("data", {})})
    cfg = make_config(stage, name, **parsed.get(stage, {}))
    print(config_table(cfg, show))
    if hasattr(cfg, "mixed_precision"):
        precision, why = explain_precision(cfg.mixed_precision)
        print(f"mixed precision: {cfg.mixed_precision} -> {precision} ({why})")
    seed_everything(getattr(cfg, "seed", 0))
    return name, data_cfg, cfg


def open_log(stage: str, configs=(), preset: str = "opt-125m", overrides: str = "") -> RunLog:
    """The stage's RunLog under model/logs, with the experiment trackers TrackConfig.report_to
    asks for (TensorBoard by default when installed; `tensorboard --logdir model/logs`)."""
    track_cfg = make_config("track", preset, **stage_overrides(overrides, "track"))
    return open_tracked_log(stage, configs, track_cfg, folder=stage_dir("logs"))
