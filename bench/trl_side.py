"""TRL's side of the benchmark: one measurement, one JSON line. Runs in bench/.venv-trl.

    bench/.venv-trl/bin/python bench/trl_side.py --settings '{"task": "sft", ...}'

SFT and the reward model use the current trl (SFTTrainer, RewardTrainer); PPO uses the last trl
that has it (trl.experimental.ppo.PPOTrainer, trl 1.12), which run.py puts first on PYTHONPATH.
TRL's defaults are kept except where the comparison needs them equal to ours: precision
(fp32 / bf16; `default` keeps TRL's own), gradient checkpointing off, learning rate, batch,
lengths, models and data, no logging integrations, no saving, no progress bar. The optimiser is
TRL's default, torch's fused AdamW, which is also what the project uses.
"""
from __future__ import annotations

import os
import tempfile
import time

os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")

from common import (PAD, SHAPES, StepClock, causal_lm, emit,  # noqa: E402
                    make_tokenizer, matmul_params, pair_rows, parse_settings, ppo_models, ppo_prompts,
                    scalar_head_model, sft_rows)

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


def step_clock_callback(clock: StepClock, last_end: StepClock):
    from transformers import TrainerCallback

    class StepMarks(TrainerCallback):
        def on_step_begin(self, args, state, control, **kwargs):
            clock.tick()

        def on_step_end(self, args, state, control, **kwargs):
            last_end.start()  # keeps only the latest step end
    return StepMarks()


def run_trainer(trainer, st, model, extra):
    """A step runs from one on_step_begin to the next, the last one to its on_step_end."""
    clock, last_end = StepClock(), StepClock()
    trainer.add_callback(step_clock_callback(clock, last_end))
    trainer.train()
    clock.marks.append(last_end.marks[0])
    clock.cpu.append(last_end.cpu[0])
    emit(st, SIDE, clock, {"model": matmul_params(model)}, **extra)


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
        run_trainer(trainer, st, model, {"tokens_per_step": st.batch * st.seq_len})


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
        run_trainer(trainer, st, model, {"pairs_per_step": st.batch})


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


if __name__ == "__main__":
    import trl

    settings = parse_settings()
    print(f"trl {trl.__version__}", flush=True)
    {"sft": bench_sft, "rm": bench_rm, "ppo": bench_ppo}[settings.task](settings)
