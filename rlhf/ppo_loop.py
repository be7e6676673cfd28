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

from . import ppo
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
    with torch.no_grad():
        entropy = ppo.masked_mean(ppo.entropy_from_logits(logits, cfg.temperature), mb["mask"])
    return pg_loss, vf_loss, {**stats, **vstats, "entropy": entropy,
                              "policy_loss": pg_loss.detach(), "value_loss": vf_loss.detach()}


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
        "response_length": float(mask.sum(1).mean()),
        "eos_rate": float(rollout.has_eos.float().mean()),
        "empty_responses": int((mask.sum(1) <= 1).sum()),
        "advantage_std": float(ppo.masked_var(rollout.advantages, mask).sqrt()),
        "kl_coef": kl_coef,
    }


def make_optimizers(actor, critic, cfg):
    """Separate AdamW optimisers and linear-to-zero schedules for actor and critic."""
    from torch.optim import AdamW
    from torch.optim.lr_scheduler import LambdaLR

    updates = cfg.iterations * cfg.ppo_epochs * (cfg.rollout_batch // cfg.minibatch)
    decay = lambda step: max(0.0, 1.0 - step / updates)
    actor_opt = AdamW([p for p in actor.parameters() if p.requires_grad], lr=cfg.actor_lr, eps=1e-5)
    critic_opt = AdamW([p for p in critic.parameters() if p.requires_grad], lr=cfg.critic_lr, eps=1e-5)
    return (actor_opt, critic_opt), (LambdaLR(actor_opt, decay), LambdaLR(critic_opt, decay))


def iterate_prompts(prompt_ids, batch: int, seed: int):
    """Endless shuffled batches of prompt-id lists; reshuffled after each pass."""
    generator = torch.Generator().manual_seed(seed)
    while True:
        order = torch.randperm(len(prompt_ids), generator=generator).tolist()
        for start in range(0, len(order) - batch + 1, batch):
            yield [prompt_ids[i] for i in order[start:start + batch]]


def train_ppo(models, tokenizer, prompt_ids, cfg, reward_stats, log=print, judge=None,
              prompt_texts=None, progress=True, on_checkpoint=None):
    """Run cfg.iterations of PPO. Returns (history, samples).

    models: (actor, reference, reward, critic); reference None with LoRA. judge(prompt, text,
    ended) -> gold score, logged when given (built-in data only). Stops with an error after
    cfg.max_bad_updates consecutive iterations whose updates were all non-finite.
    """
    from accelerate import Accelerator
    from tqdm.auto import tqdm

    from .data import collate_prompts
    from .runtime import resolve_mixed_precision

    accelerator = Accelerator(mixed_precision=resolve_mixed_precision(cfg.mixed_precision))
    actor, reference, reward_model, critic = models
    opts, schedules = make_optimizers(actor, critic, cfg)
    actor, critic, *opts = accelerator.prepare(actor, critic, *opts)
    for frozen in (reference, reward_model):
        if frozen is not None:
            frozen.to(accelerator.device).eval().requires_grad_(False)
    models = (actor, reference, reward_model, critic)
    text_of = {tuple(ids): text for ids, text in zip(prompt_ids, prompt_texts or [])}
    batches = iterate_prompts(prompt_ids, cfg.rollout_batch, cfg.seed)
    generator = torch.Generator().manual_seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    kl_coef, bad_in_a_row = cfg.kl_coef, 0
    history, samples = [], []
    for it in tqdm(range(cfg.iterations), desc="ppo", disable=not progress):
        timer = Timer()
        ids = next(batches)
        batch = {k: v.to(accelerator.device) for k, v in collate_prompts(ids, tokenizer.pad_token_id).items()}
        rollout = make_rollout(models, tokenizer, batch["input_ids"], batch["attention_mask"], cfg,
                               reward_stats, kl_coef, timer)
        stats = {"iteration": it + 1, **rollout_stats(rollout, kl_coef)}
        with timer("train"):
            update, skipped = ppo_update(actor, critic, rollout, cfg, opts, accelerator, generator)
        for schedule in schedules:
            schedule.step()
        stats.update(update, skipped_updates=skipped, **{f"time_{k}": v for k, v in timer.seconds.items()})
        bad_in_a_row = bad_in_a_row + 1 if skipped and not update else 0
        if skipped:
            log(f"iteration {it + 1}: {skipped} update(s) skipped (non-finite loss or gradient)")
        if bad_in_a_row >= cfg.max_bad_updates:
            raise FloatingPointError(f"{bad_in_a_row} iterations in a row had only non-finite updates; "
                                     "lower the learning rates or check the reward model")
        texts, ended = _texts(rollout, tokenizer)
        prompts = [text_of.get(tuple(i), "") for i in ids]
        if judge is not None:
            stats["gold"] = sum(judge(p, t, e) for p, t, e in zip(prompts, texts, ended)) / len(texts)
        if cfg.adaptive_kl:
            kl_coef = ppo.update_kl_coef(kl_coef, stats["kl"], cfg.target_kl, len(texts), cfg.kl_horizon)
        history.append(stats)
        log.record(stats) if hasattr(log, "record") else None
        if it % cfg.log_samples_every == 0 or it == cfg.iterations - 1:
            samples.append({"iteration": it + 1, "prompt": prompts[0], "response": texts[0],
                            "score": float(rollout.raw_scores[0])})
        if on_checkpoint and cfg.checkpoint_every and (it + 1) % cfg.checkpoint_every == 0:
            on_checkpoint(accelerator.unwrap_model(actor), accelerator.unwrap_model(critic), it + 1)
    return accelerator.unwrap_model(actor), accelerator.unwrap_model(critic), history, samples


def _texts(rollout, tokenizer):
    from .generation import decode_responses
    return decode_responses(rollout.responses.cpu(), tokenizer)
