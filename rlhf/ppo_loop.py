"""Stage 3, part 2: the PPO update and the training loop.

Each iteration: sample a rollout (rlhf.rollout.make_rollout), then `ppo_epochs` passes over
shuffled minibatches of it, each a clipped policy step on the actor and a clipped value step on
the critic, with separate optimisers and learning-rate schedules.
"""
from __future__ import annotations

import contextlib
import math
import time
from collections import defaultdict

import torch

from . import faults, ppo
from .reward import TokenScorer
from .rollout import make_rollout, response_logits, response_values


class Timer:
    """Seconds spent in named phases: `with timer("generate"): ...`."""

    def __init__(self):
        self.seconds = defaultdict(float)

    @contextlib.contextmanager
    def __call__(self, phase: str):
        start = time.perf_counter()
        yield
        self.seconds[phase] += time.perf_counter() - start


def minibatch(rollout, index):
    """The rows `index` of every per-row tensor of a rollout, as a dict."""
    keys = ("query_responses", "attention_mask", "responses", "mask", "logprobs", "values",
            "advantages", "returns")
    return {k: getattr(rollout, k)[index] for k in keys}


def ppo_losses(actor, critic, mb, P: int, cfg):
    """Policy and value losses of one minibatch, with their statistics."""
    logits = response_logits(actor, mb["query_responses"], mb["attention_mask"], P)   # (b, R, V)
    logprobs = ppo.logprobs_from_logits(logits, mb["responses"], cfg.temperature)     # (b, R)
    pg_loss, stats = ppo.policy_loss(logprobs, mb["logprobs"], mb["advantages"], mb["mask"], cfg.clip_ratio)
    values = response_values(critic, mb["query_responses"], mb["attention_mask"], P)  # (b, R)
    vf_loss, vstats = ppo.value_loss(values, mb["values"], mb["returns"], mb["mask"], cfg.clip_value)
    return pg_loss, vf_loss, {**stats, **vstats, "policy_loss": pg_loss.detach(), "value_loss": vf_loss.detach()}


def update_step(actor, critic, mb, P, cfg, opts, accelerator):
    """One optimiser step on actor and critic; False (and no step) if anything is not finite."""
    actor_opt, critic_opt = opts
    actor_opt.zero_grad(set_to_none=True)
    critic_opt.zero_grad(set_to_none=True)
    with accelerator.autocast():
        pg_loss, vf_loss, stats = ppo_losses(actor, critic, mb, P, cfg)
    if not (torch.isfinite(pg_loss) and torch.isfinite(vf_loss)):
        return False, stats
    accelerator.backward(pg_loss + vf_loss)  # disjoint parameters: each model gets its own gradient
    actor_norm = accelerator.clip_grad_norm_(actor.parameters(), cfg.max_grad_norm)
    critic_norm = accelerator.clip_grad_norm_(critic.parameters(), cfg.max_grad_norm)
    if not (torch.isfinite(actor_norm) and torch.isfinite(critic_norm)):
        return False, stats
    actor_opt.step()
    critic_opt.step()
    return True, {**stats, "actor_grad_norm": actor_norm, "critic_grad_norm": critic_norm}


def ppo_update(actor, critic, rollout, cfg, opts, accelerator, generator):
    """`ppo_epochs` passes over shuffled minibatches. Returns (mean stats, skipped updates)."""
    actor.train()
    critic.train()
    totals, n, skipped = defaultdict(float), 0, 0
    B = rollout.responses.shape[0]
    for _ in range(cfg.ppo_epochs):
        order = torch.randperm(B, generator=generator)
        for start in range(0, B, cfg.minibatch):
            mb = minibatch(rollout, order[start:start + cfg.minibatch].to(rollout.responses.device))
            ok, stats = update_step(actor, critic, mb, rollout.P, cfg, opts, accelerator)
            skipped += not ok
            if ok:
                n += 1
                for k, v in stats.items():
                    totals[k] += float(v)
    actor.eval()
    critic.eval()
    return {k: v / max(n, 1) for k, v in totals.items()}, skipped


def rollout_stats(rollout, kl_coef):
    """What to log about a rollout: scores, KL (per response), length, EOS rate."""
    mask = rollout.mask
    k1 = ppo.kl_per_token(rollout.logprobs, rollout.ref_logprobs, mask, "k1").sum(1)  # (B,)
    k3 = ppo.kl_per_token(rollout.logprobs, rollout.ref_logprobs, mask, "k3").sum(1)  # (B,)
    return {
        "score": float(rollout.raw_scores.mean()),
        "score_normalized": float(rollout.scores.mean()),
        "rlhf_reward": float((rollout.scores - kl_coef * k1).mean()),
        "kl": float(k1.mean()), "kl_k3": float(k3.mean()),
        "entropy": float(ppo.masked_mean(rollout.entropy, mask)),  # of the policy that sampled
        "response_length": float(mask.sum(1).mean()),
        "eos_rate": float(rollout.has_eos.float().mean()),
        "empty_responses": int((mask.sum(1) <= 1).sum()),
        "advantage_std": float(ppo.masked_var(rollout.advantages, mask).sqrt()),
        "kl_coef": kl_coef,
    }


def make_optimizers(actor, critic, cfg):
    """Separate AdamW optimisers and linear-to-zero schedules for actor and critic.

    train_ppo steps the schedules once per iteration, so iteration i trains at
    lr * (1 - i / iterations): the last at lr / iterations, and the run ends at 0.
    """
    from torch.optim.lr_scheduler import LambdaLR

    from .train import adamw

    decay = lambda iteration: max(0.0, 1.0 - iteration / cfg.iterations)
    actor_opt = adamw(actor, cfg.actor_lr, eps=1e-5)
    critic_opt = adamw(critic, cfg.critic_lr, eps=1e-5)
    return (actor_opt, critic_opt), (LambdaLR(actor_opt, decay), LambdaLR(critic_opt, decay))


def prompt_batch(prompt_ids, batch: int, seed: int, iteration: int):
    """The prompts of one iteration: shuffled passes over the prompts, a pure function of
    (seed, iteration) so a resumed run draws exactly the batches it would have drawn."""
    per_pass = max(1, len(prompt_ids) // batch)
    epoch, index = divmod(iteration, per_pass)
    order = torch.randperm(len(prompt_ids), generator=torch.Generator().manual_seed(seed * 1000 + epoch))
    return [prompt_ids[i] for i in order[index * batch:(index + 1) * batch].tolist()]


def ppo_iteration(models, tokenizer, ids, cfg, reward_stats, kl_coef, opts, accelerator, iteration):
    """Rollout and update on one batch of prompt ids. Returns (rollout, stats).

    Sampling and scoring use the plain models; the update goes through the prepared (in a
    multi-process run, DistributedDataParallel) actor and critic so their gradients are averaged.
    """
    from .data import collate_prompts

    actor, reference, reward_model, critic = models
    plain = (accelerator.unwrap_model(actor), reference, reward_model, accelerator.unwrap_model(critic).model)
    timer = Timer()
    batch = {k: v.to(accelerator.device) for k, v in collate_prompts(ids, tokenizer.pad_token_id).items()}
    with accelerator.autocast():  # the same precision as the update, so the first ratio is 1
        rollout = make_rollout(plain, tokenizer, batch["input_ids"], batch["attention_mask"], cfg,
                               reward_stats, kl_coef, timer)
    stats = {"iteration": iteration + 1, **rollout_stats(rollout, kl_coef)}
    generator = torch.Generator().manual_seed(cfg.seed * 1000 + iteration)
    with timer("train"):
        update, skipped = ppo_update(actor, critic, rollout, cfg, opts, accelerator, generator)
    stats.update(update, skipped_updates=skipped, **{f"time_{k}": v for k, v in timer.seconds.items()})
    return rollout, stats


def save_resume(resume_dir, actor, critic, tokenizer, opts, schedules, progress):
    """The resumable PPO checkpoint: actor (weights or LoRA adapters), critic, optimisers, RNG."""
    from .checkpoint import save_checkpoint

    save_checkpoint(resume_dir, actor, tokenizer, extra_models={"critic": critic},
                    train_state=(dict(zip(("actor", "critic"), opts)),
                                 dict(zip(("actor", "critic"), schedules)), progress))


def load_resume(resume_dir, actor, critic, opts, schedules, log):
    """Progress restored from `resume_dir`, or a fresh start."""
    from .checkpoint import has_train_state, load_train_state, load_weights

    if not (resume_dir and has_train_state(resume_dir)):
        return None
    for model, folder in ((actor, resume_dir), (critic, f"{resume_dir}/critic")):
        if hasattr(model, "disable_adapter"):  # LoRA: only the adapters (and value head) were saved
            from peft import set_peft_model_state_dict
            from safetensors.torch import load_file
            set_peft_model_state_dict(model, load_file(f"{folder}/adapter_model.safetensors"))
        else:
            load_weights(model, folder)
    progress = load_train_state(resume_dir, dict(zip(("actor", "critic"), opts)),
                                dict(zip(("actor", "critic"), schedules)))
    log(f"resumed from {resume_dir} at iteration {progress['iteration']}")
    return progress


def train_ppo(models, tokenizer, prompt_ids, cfg, reward_stats, log=print, judge=None,
              prompt_texts=None, progress=True, resume_dir=None):
    """Run cfg.iterations of PPO. Returns (actor, critic, history, samples).

    models: (actor, reference, reward, critic); reference None with LoRA. judge(prompt, text,
    ended) -> gold score, logged when given (built-in data only). With `resume_dir`, a resumable
    checkpoint is written every cfg.checkpoint_every iterations and a rerun continues from it.
    Stops with an error after cfg.max_bad_updates iterations in a row with no finite update.
    """
    from tqdm.auto import tqdm

    from .train import make_accelerator

    accelerator = make_accelerator(cfg.mixed_precision)
    actor, reference, reward_model, critic = models
    opts, schedules = make_optimizers(actor, critic, cfg)
    actor, critic, *opts = accelerator.prepare(actor, TokenScorer(critic), *opts)
    for frozen in (reference, reward_model):
        if frozen is not None:
            frozen.to(accelerator.device).eval().requires_grad_(False)
    torch.manual_seed(cfg.seed + accelerator.process_index)  # each process samples its own answers
    state = load_resume(resume_dir, accelerator.unwrap_model(actor), accelerator.unwrap_model(critic).model,
                        opts, schedules, log) or \
        {"iteration": 0, "kl_coef": cfg.kl_coef, "bad_in_a_row": 0, "history": [], "samples": []}
    text_of = {tuple(ids): text for ids, text in zip(prompt_ids, prompt_texts or [])}
    for it in tqdm(range(state["iteration"], cfg.iterations), desc="ppo", disable=not progress,
                   initial=state["iteration"], total=cfg.iterations):
        world, rank = accelerator.num_processes, accelerator.process_index
        ids = prompt_batch(prompt_ids, cfg.rollout_batch * world, cfg.seed, it)[rank::world]
        rollout, stats = ppo_iteration((actor, reference, reward_model, critic), tokenizer, ids, cfg,
                                       reward_stats, state["kl_coef"], opts, accelerator, it)
        for schedule in schedules:
            schedule.step()
        record_iteration(state, rollout, stats, [text_of.get(tuple(i), "") for i in ids], tokenizer,
                         cfg, judge, log)
        if resume_dir and cfg.checkpoint_every and (it + 1) % cfg.checkpoint_every == 0 \
                and it + 1 < cfg.iterations and accelerator.is_main_process:
            save_resume(resume_dir, accelerator.unwrap_model(actor), accelerator.unwrap_model(critic).model,
                        tokenizer, opts, schedules, state)
        faults.point("step")
    # keep_fp32_wrapper=False: the models handed back run in full precision, as they came in
    actor, critic = (accelerator.unwrap_model(m, keep_fp32_wrapper=False) for m in (actor, critic))
    return actor, critic.model, state["history"], state["samples"]


def record_iteration(state, rollout, stats, prompts, tokenizer, cfg, judge, log):
    """Gold score, adaptive KL, skipped-update bookkeeping, logging and samples of one iteration."""
    from .generation import decode_responses

    it = stats["iteration"]
    texts, ended = decode_responses(rollout.responses.cpu(), tokenizer)
    if judge is not None:
        stats["gold"] = sum(judge(p, t, e) for p, t, e in zip(prompts, texts, ended)) / len(texts)
    if stats["skipped_updates"]:
        log(f"iteration {it}: {stats['skipped_updates']} update(s) skipped (non-finite loss or gradient)")
    no_update = "policy_loss" not in stats  # every minibatch update of this iteration was skipped
    state["bad_in_a_row"] = state["bad_in_a_row"] + 1 if no_update else 0
    if state["bad_in_a_row"] >= cfg.max_bad_updates:
        raise FloatingPointError(f"{state['bad_in_a_row']} iterations in a row had only non-finite "
                                 "updates; lower the learning rates or check the reward model")
    if cfg.adaptive_kl:
        state["kl_coef"] = ppo.update_kl_coef(state["kl_coef"], stats["kl"], cfg.target_kl, len(texts), cfg.kl_horizon)
    state["history"].append(stats)
    if hasattr(log, "record"):
        log.record(stats)
    if (it - 1) % cfg.log_samples_every == 0 or it == cfg.iterations:
        state["samples"].append({"iteration": it, "prompt": prompts[0], "response": texts[0],
                                 "score": float(rollout.raw_scores[0])})
    state["iteration"] = it
