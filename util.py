"""Everything the notebooks use, in one import: `import util`.

A thin facade over the small `rlhf` package, where each piece lives in a short module:
config (one frozen config per stage, presets), data (reading, validation, encoding), tasks (the
built-in tasks and the gold judge), models (hub or offline fallback), train (the supervised loop),
sft, reward, ppo (the PPO math), rollout and rlhf_loop (stage 3), evaluate (stage 4),
checkpoint (atomic Hugging Face folders), runtime (Colab, device, cache, logging).
"""
import torch

from rlhf.checkpoint import read_json, recover, require_checkpoint, save_checkpoint, write_json
from rlhf.config import (ConfigError, config_table, make_config, save_config, ActorConfig,
                         BaseConfig, CriticConfig, DataConfig, EvalConfig, PPOConfig, PRESETS)
from rlhf.data import (DataError, collate_pairs, collate_prompts, collate_sft, encode_pairs,
                       encode_prompts, encode_sft, format_summary, load_dataset_dir, load_rows,
                       pad_left, pad_right, split_rows)
from rlhf.generation import chat, complete, decode_responses, generate, position_ids_from_mask
from rlhf.models import (check_tokenizer_matches, count_parameters, ensure_pad_token, get_base,
                         has_gpu, hub_reachable, load_tokenizer, lora_config, resolve_preset,
                         train_tokenizer)
from rlhf.colab import find_project_root, in_colab, setup_colab
from rlhf.runtime import (RunLog, cpu_has_bf16, free_gpu_cache, resolve_mixed_precision,
                          seed_everything)
from rlhf.tasks import gold_breakdown, gold_score
from rlhf.train import fit
from rlhf import ppo, reward, sft

MODEL_DIR = "model"


def stage_dir(stage: str, root: str = MODEL_DIR) -> str:
    """Where a stage writes its checkpoint: model/base, model/actor, model/critic, model/rlhf."""
    return f"{root}/{stage}"
from rlhf.evaluate import evaluate_policies, gold_judge_for, summarize
from rlhf.ppo_loop import train_ppo


def resume_dir(stage: str, root: str = MODEL_DIR) -> str:
    """Where a stage keeps its resumable periodic checkpoint until it completes."""
    return f"{root}/resume/{stage}"


def clear_resume(stage: str, root: str = MODEL_DIR) -> None:
    import shutil
    shutil.rmtree(resume_dir(stage, root), ignore_errors=True)


def start(stage: str, preset: str = "auto", data_dir: str = "dataset"):
    """The first call of notebooks 1-4: install what Colab lacks, resolve the preset (and say
    why), print the stage's config as a table, seed everything. Returns (preset, data_cfg, cfg)."""
    setup_colab()
    name, reason = resolve_preset(preset)
    print(f"preset: {name} ({reason})")
    data_cfg = make_config("data", name, data_dir=data_dir)
    cfg = make_config(stage, name)
    print(config_table(cfg))
    if hasattr(cfg, "mixed_precision"):
        device = "cuda" if torch.cuda.is_available() else "cpu"
        print(f"mixed precision: {cfg.mixed_precision} -> {resolve_mixed_precision(cfg.mixed_precision)} "
              f"on {device}" + (" (the CPU has bf16 instructions)" if device == "cpu" and cpu_has_bf16() else ""))
    seed_everything(getattr(cfg, "seed", 0))
    return name, data_cfg, cfg
