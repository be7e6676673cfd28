"""TRL's side of the benchmark: one measurement, one JSON line. Runs in bench/.venv-trl.

    bench/.venv-trl/bin/python bench/trl_side.py --settings '{"task": "sft", ...}'

SFT, the reward model, DPO, RLOO and GRPO use the current trl (SFTTrainer, RewardTrainer,
DPOTrainer, RLOOTrainer, GRPOTrainer); PPO uses the last trl that has it
(trl.experimental.ppo.PPOTrainer, trl 1.12), which run.py puts first on PYTHONPATH.
TRL's defaults are kept except where the comparison needs them equal to ours: precision
(fp32 / bf16; `default` keeps TRL's own), gradient checkpointing off, learning rate, batch,
lengths, models and data, no logging integrations, no saving, no progress bar. The optimiser is
TRL's default, torch's fused AdamW, which is also what the project uses.
"""
from __future__ import annotations

import copy
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")

from common import (PAD, SHAPES, StepClock, causal_lm, dpo_rows, emit, group_prompts,  # noqa: E402
                    ids_text, make_tokenizer, matmul_params, pair_rows, parse_settings, policy_models,
                    ppo_models, ppo_prompts, scalar_head_model, sft_rows)

from rlhf.models import lora_config  # noqa: E402  (the project's adapters, on both sides)

SIDE = "trl"


def common_args(st, out_dir: str) -> dict:
    """TrainingArguments fields set the same way for every TRL trainer here."""
    precision = {} if st.precision == "default" else {"bf16": st.precision == "bf16"}  # default: bf16=True
    return dict(output_dir=out_dir, learning_rate=st.lr, weight_decay=0.0, max_grad_norm=1.0,
                optim="adamw_torch_fused", fp16=False, **precision,
                gradient_checkpointing=False, use_cpu=True, report_to="none",
                save_strategy="no", disable_tqdm=True, seed=st.seed, data_seed=st.seed,
                dataloader_num_workers=0)


# the optimiser the project's DPO, RLOO and GRPO loops build (rlhf/beyond_loop.py: AdamW with eps
# 1e-5 and torch's default weight decay 0.01), given to TRL's trainers for those three tasks
BEYOND_OPTIMISER = dict(weight_decay=0.01, adam_epsilon=1e-5)


def step_clock_callback(clock: StepClock, last_end: StepClock, every: int = 1):
    """Marks the beginning of every `every`-th optimiser step (one GRPO iteration is
    num_iterations steps) and the end of the last step."""
    from transformers import TrainerCallback

    class StepMarks(TrainerCallback):
        def on_step_begin(self, args, state, control, **kwargs):
            if state.global_step % every == 0:
                clock.tick()

        def on_step_end(self, args, state, control, **kwargs):
            last_end.start()  # keeps only the latest step end
    return StepMarks()


def run_trainer(trainer, every: int = 1) -> StepClock:
    """Train; returns the clock. A step (`every` optimiser steps) runs from one on_step_begin to
    the next, the last one to its on_step_end."""
    clock, last_end = StepClock(), StepClock()
    trainer.add_callback(step_clock_callback(clock, last_end, every))
    trainer.train()
    clock.marks.append(last_end.marks[0])
    clock.cpu.append(last_end.cpu[0])
    return clock


def completion_lengths(trainer) -> list[float]:
    """The mean completion length of each generation batch, appended as the trainer's `_generate`
    returns (RLOO and GRPO alike return prompt ids, completion ids, ...); nothing else changes."""
    generate, lengths = trainer._generate, []

    def counted(prompts):
        out = generate(prompts)
        lengths.append(sum(map(len, out[1])) / len(out[1]))
        return out
    trainer._generate = counted
    return lengths


def bench_sft(st):
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    n = st.warmup + st.steps
    data = Dataset.from_dict({"input_ids": sft_rows(st, n)})  # tokenised: every token labelled
    model = causal_lm(st.shape, st.seed)
    with tempfile.TemporaryDirectory() as out:
        args = SFTConfig(**common_args(st, out), per_device_train_batch_size=st.batch,
                         gradient_accumulation_steps=1, max_steps=n, max_length=st.seq_len,
                         packing=False)
        trainer = SFTTrainer(model=model, args=args, train_dataset=data,
                             processing_class=make_tokenizer(SHAPES[st.shape]["vocab_size"]))
        clock = run_trainer(trainer)
    emit(st, SIDE, clock, {"model": matmul_params(model)}, tokens_per_step=st.batch * st.seq_len)


def bench_rm(st):
    from datasets import Dataset
    from trl import RewardConfig, RewardTrainer

    n = st.warmup + st.steps
    pairs = pair_rows(st, n)
    data = Dataset.from_dict({"chosen_ids": [c for c, _ in pairs], "rejected_ids": [r for _, r in pairs]})
    model = scalar_head_model(st.shape, st.seed)
    with tempfile.TemporaryDirectory() as out:
        args = RewardConfig(**common_args(st, out), per_device_train_batch_size=st.batch,
                            gradient_accumulation_steps=1, max_steps=n, max_length=st.seq_len)
        trainer = RewardTrainer(model=model, args=args, train_dataset=data,
                                processing_class=make_tokenizer(SHAPES[st.shape]["vocab_size"]))
        clock = run_trainer(trainer)
    emit(st, SIDE, clock, {"model": matmul_params(model)}, pairs_per_step=st.batch)


class PPOPhases:
    """Splits each PPOTrainer iteration into generate / score / train without touching its loop:
    the module-level `batch_generation` and `forward` it calls are wrapped with clocks.
    generate = batch_generation; score = from its end to the first training forward (the
    reference, value and reward passes and the advantages); train = from there to the end of
    the iteration (on_step_end)."""

    def __init__(self, module):
        self.clock, self.rows, self.row = StepClock(), [], {}
        generate, forward = module.batch_generation, module.forward

        def timed_generation(*args, **kwargs):
            start = time.perf_counter()
            out = generate(*args, **kwargs)
            self.gen_end = time.perf_counter()
            self.row = {"generate": self.gen_end - start, "response_width": out[1].shape[1]}
            return out  # (query_responses, logits (B, R, V))

        def timed_forward(model, *args, **kwargs):
            if isinstance(model, module.PolicyAndValueWrapper) and "score" not in self.row:
                self.train_start = time.perf_counter()
                self.row["score"] = self.train_start - self.gen_end
            return forward(model, *args, **kwargs)

        module.batch_generation, module.forward = timed_generation, timed_forward

    def callback(self):
        from transformers import TrainerCallback

        phases = self

        class IterationEnd(TrainerCallback):
            def on_train_begin(self, args, state, control, **kwargs):
                phases.clock.start()

            def on_step_end(self, args, state, control, **kwargs):
                phases.clock.tick()
                phases.row["train"] = phases.clock.marks[-1] - phases.train_start
                phases.rows.append(phases.row)
        return IterationEnd()


def bench_ppo(st):
    from datasets import Dataset
    from trl.experimental.ppo import PPOConfig, PPOTrainer
    from trl.experimental.ppo import ppo_trainer as module

    tokenizer = make_tokenizer(SHAPES[st.shape]["vocab_size"])
    tokenizer.padding_side = "left"  # TRL's PPO generates from left-padded prompts
    prompts = Dataset.from_dict({"input_ids": ppo_prompts(st)})
    actor, reference, reward, critic = ppo_models(st.shape, st.seed)
    params = dict(zip(("actor", "reference", "reward", "critic"),
                      map(matmul_params, (actor, reference, reward, critic))))
    if st.lora_rank:
        reference = None  # not kept in memory: the adapter-free actor is the reference
    n = st.warmup + st.steps
    phases = PPOPhases(module)
    if st.precision == "bf16":
        # PPOTrainer builds its own Accelerator() and ignores args.bf16; accelerate reads the
        # precision from this variable (what `accelerate launch --mixed_precision bf16` sets).
        # `default` leaves it unset: fp32, what a TRL user gets from PPOConfig's bf16=True.
        os.environ["ACCELERATE_MIXED_PRECISION"] = "bf16"
    with tempfile.TemporaryDirectory() as out:
        args = PPOConfig(**common_args(st, out), per_device_train_batch_size=st.prompts,
                         gradient_accumulation_steps=1, num_mini_batches=1,
                         total_episodes=n * st.prompts, local_rollout_forward_batch_size=st.prompts,
                         num_ppo_epochs=st.ppo_epochs, response_length=st.new_tokens,
                         temperature=st.temperature, stop_token=None, num_sample_generations=0,
                         missing_eos_penalty=1.0, kl_coef=0.1, logging_steps=1)
        lora = dict(peft_config=lora_config(st.lora_rank), ref_model=None) if st.lora_rank else \
            dict(ref_model=reference)  # with LoRA, TRL too uses the adapter-free actor as reference
        trainer = PPOTrainer(args=args, processing_class=tokenizer, model=actor, reward_model=reward,
                             value_model=critic, train_dataset=prompts, eval_dataset=prompts, **lora)
        trainer.add_callback(phases.callback())
        trainer.train()
    timed = phases.rows[st.warmup:]
    emit(st, SIDE, phases.clock, params,
         phases={p: [r[p] for r in timed] for p in ("generate", "score", "train")},
         response_length=[float(r["response_width"]) for r in timed])


def bench_dpo(st):
    """DPOTrainer tokenises text itself, so the pairs go in as the text of their ids; each answer
    already ends in EOS, so it adds none."""
    from datasets import Dataset
    from trl import DPOConfig, DPOTrainer

    n = st.warmup + st.steps
    rows = dpo_rows(st, n)
    data = Dataset.from_dict({"prompt": [ids_text(p) for p, _, _ in rows],
                              "chosen": [" " + ids_text(c) for _, c, _ in rows],
                              "rejected": [" " + ids_text(r) for _, _, r in rows]})
    model = causal_lm(st.shape, st.seed)
    with tempfile.TemporaryDirectory() as out:
        args = DPOConfig(**{**common_args(st, out), **BEYOND_OPTIMISER}, per_device_train_batch_size=st.batch,
                         gradient_accumulation_steps=1, max_steps=n, max_length=st.seq_len,
                         beta=st.dpo_beta, loss_type=["sigmoid"], precompute_ref_log_probs=False)
        trainer = DPOTrainer(model=model, ref_model=copy.deepcopy(model), args=args, train_dataset=data,
                             processing_class=make_tokenizer(SHAPES[st.shape]["vocab_size"]))
        clock = run_trainer(trainer)
    emit(st, SIDE, clock, {"model": matmul_params(model)}, pairs_per_step=st.batch)


def bench_online(st):
    """RLOOTrainer or GRPOTrainer (st.task) with the reward model as its reward function.

    Neither takes a reference model: with beta > 0 it loads one from the policy's
    config.name_or_path, so the policy is saved first and that folder named there (the reference
    is then a copy of the actor, as on our side). Prompts go in as text, with a trailing space so
    that the prompt + completion text TRL builds for the reward model splits into the same ids."""
    from datasets import Dataset
    from trl import GRPOConfig, GRPOTrainer, RLOOConfig, RLOOTrainer

    n = st.warmup + st.steps
    tokenizer = make_tokenizer(SHAPES[st.shape]["vocab_size"])
    prompts = Dataset.from_dict({"prompt": [ids_text(ids) + " " for ids in group_prompts(st, n)]})
    actor, reward = policy_models(st.shape, st.seed)
    params = {"actor": matmul_params(actor), "reference": matmul_params(actor), "reward": matmul_params(reward)}
    passes = st.grpo_epochs if st.task == "grpo" else 1
    with tempfile.TemporaryDirectory() as out:
        actor.save_pretrained(Path(out) / "reference")
        actor.config.name_or_path = str(Path(out) / "reference")
        shared = dict(**{**common_args(st, out), **BEYOND_OPTIMISER}, per_device_train_batch_size=st.prompts,
                      gradient_accumulation_steps=1, steps_per_generation=1, num_generations=st.samples,
                      max_completion_length=st.new_tokens, temperature=st.temperature, num_iterations=passes,
                      max_steps=n * passes)
        if st.task == "rloo":
            args = RLOOConfig(**shared, beta=st.rloo_kl_coef, normalize_advantages=False)
            trainer_class = RLOOTrainer
        else:
            args = GRPOConfig(**shared, beta=st.grpo_kl_coef, epsilon=0.2, loss_type="grpo",
                              scale_rewards="group")
            trainer_class = GRPOTrainer
        trainer = trainer_class(model=actor, reward_funcs=reward, args=args, train_dataset=prompts,
                                processing_class=tokenizer, reward_processing_classes=tokenizer)
        lengths = completion_lengths(trainer)
        clock = run_trainer(trainer, every=passes)
    emit(st, SIDE, clock, params, response_length=lengths[st.warmup:])


if __name__ == "__main__":
    import trl

    settings = parse_settings()
    print(f"trl {trl.__version__}", flush=True)
    {"sft": bench_sft, "rm": bench_rm, "ppo": bench_ppo, "dpo": bench_dpo, "rloo": bench_online,
     "grpo": bench_online}[settings.task](settings)
