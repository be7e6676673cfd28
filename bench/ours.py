"""The project's side of the benchmark: one measurement, one JSON line.

    python bench/ours.py --settings '{"task": "sft", "shape": "tiny", ...}'

Runs the project's own training functions unchanged: rlhf.train.fit with rlhf.sft.sft_loss_fn /
rlhf.reward.reward_loss_fn and the rlhf.data collate functions, rlhf.ppo_loop.train_ppo, and
rlhf.beyond_loop.train_dpo / train_online ("rloo", "grpo"). Nothing in them is patched. A step's
time is read from where the project's functions call back into the benchmark: an SFT/RM step runs
from one call of `collate` (each optimiser step collates its batch first) to the next, the last
one to fit's end-of-epoch `evaluate` call; a PPO, RLOO or GRPO iteration and a DPO step end at
the loop's `log.record`.
"""
from __future__ import annotations

import copy
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the project root, for `rlhf`

from common import (PAD, StepClock, causal_lm, dpo_rows, emit, group_prompts,  # noqa: E402
                    make_tokenizer, matmul_params, pair_rows, parse_settings, policy_models, ppo_models,
                    ppo_prompts, scalar_head_model, sft_rows, SHAPES)

from rlhf.models import lora_config  # noqa: E402  (the project's adapters, on both sides)

SIDE = "ours"
MIXED = {"fp32": "no", "bf16": "bf16", "default": "auto"}  # Settings.precision -> mixed_precision


def fit_config(stage: str, st):
    """The stage's config at the benchmark's settings: one epoch of warmup + steps steps."""
    from rlhf.config import make_config

    return make_config(stage, "opt-125m", lr=st.lr, batch_size=st.batch, grad_accum=1, epochs=1,
                       max_steps=st.warmup + st.steps, weight_decay=0.0, max_grad_norm=1.0,
                       mixed_precision=MIXED[st.precision], gradient_checkpointing=False,
                       checkpoint_every=0)


def run_fit(model, items, collate, loss_fn, cfg, st, extra):
    """fit as the notebooks call it. A step starts when fit collates its batch; the last one
    ends when fit calls `evaluate` after the epoch (so fit's clean-up is not counted)."""
    from rlhf.train import fit

    clock = StepClock()

    def timed_collate(chunk):
        clock.tick()
        return collate(chunk)

    def end_of_epoch(model):
        clock.tick()
        return {}

    fit(model, items, timed_collate, loss_fn, cfg, log=lambda m: None, evaluate=end_of_epoch,
        progress=False)
    emit(st, SIDE, clock, {"model": matmul_params(model)}, **extra)


def bench_sft(st):
    from rlhf.data import collate_sft
    from rlhf.sft import sft_loss_fn

    n = st.warmup + st.steps
    items = [dict(input_ids=ids, labels=ids) for ids in sft_rows(st, n)]  # every token labelled
    model = causal_lm(st.shape, st.seed)
    run_fit(model, items, lambda chunk: collate_sft(chunk, PAD), sft_loss_fn,
            fit_config("actor", st), st, {"tokens_per_step": st.batch * st.seq_len})


def bench_rm(st):
    from rlhf.data import collate_pairs
    from rlhf.reward import reward_loss_fn

    n = st.warmup + st.steps
    items = [dict(chosen_ids=c, rejected_ids=r) for c, r in pair_rows(st, n)]
    model = scalar_head_model(st.shape, st.seed)
    run_fit(model, items, lambda chunk: collate_pairs(chunk, PAD), reward_loss_fn,
            fit_config("critic", st), st, {"pairs_per_step": st.batch})


class IterationLog:
    """The `log` train_ppo takes: ignores messages, timestamps each iteration's record."""

    def __init__(self):
        self.clock, self.records = StepClock(), []

    def __call__(self, message):
        pass

    def record(self, stats):
        self.clock.tick()
        self.records.append(stats)


def bench_ppo(st):
    from rlhf.config import make_config
    from rlhf.models import disable_dropout
    from rlhf.ppo_loop import train_ppo

    cfg = make_config("ppo", "opt-125m", iterations=st.warmup + st.steps, lora_rank=st.lora_rank,
                      critic_lora_rank=st.lora_rank,
                      rollout_batch=st.prompts, minibatch=st.prompts, ppo_epochs=st.ppo_epochs,
                      max_new_tokens=st.new_tokens, temperature=st.temperature,
                      actor_lr=st.lr, critic_lr=st.lr, mixed_precision=MIXED[st.precision],
                      log_samples_every=10**6, seed=st.seed)
    models = tuple(disable_dropout(m) for m in ppo_models(st.shape, st.seed))
    params = dict(zip(("actor", "reference", "reward", "critic"), map(matmul_params, models)))
    if st.lora_rank:  # as notebook 3 does it: adapters on the actor (no separate reference) and critic
        from peft import get_peft_model
        models = (get_peft_model(models[0], lora_config(st.lora_rank)), None, models[2],
                  get_peft_model(models[3], lora_config(st.lora_rank, "SEQ_CLS")))
    tokenizer = make_tokenizer(SHAPES[st.shape]["vocab_size"])
    log = IterationLog()
    log.clock.start()
    train_ppo(models, tokenizer, ppo_prompts(st), cfg, log=log,
              progress=False)
    timed = log.records[st.warmup:]
    phases = {p: [r[f"time_{p}"] for r in timed] for p in ("generate", "score", "train")}
    lengths = [r["response_length"] for r in timed]
    emit(st, SIDE, log.clock, params, phases=phases, response_length=lengths)


def beyond_configs(st, **ppo_fields):
    """(PPOConfig, BeyondConfig) at the benchmark's settings: the sampling and precision fields
    DPO, RLOO and GRPO read from PPOConfig, their own from BeyondConfig, lr st.lr for each."""
    from rlhf.config import make_config

    n = st.warmup + st.steps
    ppo_cfg = make_config("ppo", "opt-125m", iterations=n, temperature=st.temperature,
                          mixed_precision=MIXED[st.precision], seed=st.seed, **ppo_fields)
    cfg = make_config("beyond", "opt-125m", dpo_beta=st.dpo_beta, dpo_lr=st.lr, dpo_steps=n,
                      rloo_k=st.samples, rloo_lr=st.lr, rloo_kl_coef=st.rloo_kl_coef,
                      grpo_group=st.samples, grpo_lr=st.lr, grpo_kl_coef=st.grpo_kl_coef,
                      grpo_epochs=st.grpo_epochs, iterations=n, seed=st.seed)
    return ppo_cfg, cfg


def bench_dpo(st):
    from rlhf.beyond_loop import train_dpo

    # one step: minibatch / 2 pairs (each pair's chosen and rejected rows together)
    ppo_cfg, cfg = beyond_configs(st, rollout_batch=2 * st.batch, minibatch=2 * st.batch)
    pairs = [dict(chosen_ids=p + c, rejected_ids=p + r, prompt_length=len(p)) for p, c, r in
             dpo_rows(st, st.warmup + st.steps)]
    actor = causal_lm(st.shape, st.seed)
    models = (actor, copy.deepcopy(actor))
    log = IterationLog()
    log.clock.start()
    train_dpo(models, make_tokenizer(SHAPES[st.shape]["vocab_size"]), pairs, ppo_cfg, cfg, log=log)
    emit(st, SIDE, log.clock, {"model": matmul_params(actor)}, pairs_per_step=st.batch)


def bench_online(st):
    """RLOO or GRPO (st.task): prompts / samples prompts an iteration, each answered `samples`
    times, all answers one minibatch; no EOS penalty (TRL's RLOO and GRPO have none)."""
    from rlhf.beyond_loop import train_online
    from rlhf.models import disable_dropout

    ppo_cfg, cfg = beyond_configs(st, rollout_batch=st.prompts, minibatch=st.prompts,
                                  max_new_tokens=st.new_tokens, missing_eos_penalty=0.0)
    actor, reward = (disable_dropout(m) for m in policy_models(st.shape, st.seed))
    models = (actor, copy.deepcopy(actor), reward)
    params = dict(zip(("actor", "reference", "reward"), map(matmul_params, models)))
    log = IterationLog()
    log.clock.start()
    train_online(st.task, models, make_tokenizer(SHAPES[st.shape]["vocab_size"]),
                 group_prompts(st, st.warmup + st.steps), ppo_cfg, cfg, log=log, progress=False)
    lengths = [r["response_length"] for r in log.records[st.warmup:]]
    emit(st, SIDE, log.clock, params, response_length=lengths)


if __name__ == "__main__":
    settings = parse_settings()
    {"sft": bench_sft, "rm": bench_rm, "ppo": bench_ppo, "dpo": bench_dpo, "rloo": bench_online,
     "grpo": bench_online}[settings.task](settings)
