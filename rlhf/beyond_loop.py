"""Beyond PPO, part 2: the training loops of DPO, RLOO and GRPO (their math: rlhf/beyond.py).

All three start from the SFT actor and keep it, frozen, as the reference. The online two, RLOO
and GRPO, sample and score exactly as PPO does (rlhf/rollout.py: `generate` from pi / T, the
reward model with stage 2's statistics folded into its head, the EOS penalty, the clip), and
read those settings from the same PPOConfig; what is theirs alone is in BeyondConfig. Neither has
a critic. DPO samples nothing: it learns from the preference pairs the reward model learned from.

Each algorithm is one function you can read top to bottom (`dpo_step`, `rloo_iteration`,
`grpo_iteration`); the runners around them (`train_dpo`, `train_online`) are plumbing: the
accelerator, the optimiser, the token budget, logging. One process (no DDP); LoRA when
PPOConfig.lora_rank > 0, the reference then being the actor with its adapters off.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from . import beyond, ppo
from .data import build_sequence, collate_pairs, collate_prompts, prompt_to_ids
from .generation import decode_responses, generate, position_ids_from_mask
from .ppo_loop import prompt_batch
from .rollout import in_chunks, pad_columns, reference_logprobs, response_logits, score
from .steps import adamw, make_accelerator
from .train import step_batches


# ----------------------------------------------------------------------------- models and data (plumbing)

def encode_dpo_pairs(rows, tokenizer, max_length: int, max_prompt_length: int):
    """[dict(chosen_ids, rejected_ids, prompt_length)] built like the reward model's pairs
    (data.build_sequence), with where each answer starts; rows without a rejected answer, or
    whose answers do not fit, are skipped."""
    pairs = []
    for i, row in enumerate(rows):
        if not row["rejected"].strip():
            continue
        prompt, _ = prompt_to_ids(tokenizer, row["prompt"], max_prompt_length, f"row {i}")
        chosen, n_chosen, _ = build_sequence(tokenizer, prompt, row["chosen"], max_length)
        rejected, n_rejected, _ = build_sequence(tokenizer, prompt, row["rejected"], max_length)
        if n_chosen and n_rejected:
            pairs.append(dict(chosen_ids=chosen, rejected_ids=rejected, prompt_length=len(prompt)))
    if not pairs:
        raise ValueError("no preference pair fits: DPO has nothing to learn from")
    return pairs


def answer_logprobs(model, input_ids, attention_mask, prompt_lengths, temperature):
    """log pi of every answer token of right-padded prompt + answer rows, and the answer mask.

    Position t - 1 predicts token t; a token is an answer token from its row's prompt_length on.
    Returns (logprobs, mask), both (B, T - 1).
    """
    logits = model(input_ids=input_ids, attention_mask=attention_mask,
                   position_ids=position_ids_from_mask(attention_mask), use_cache=False).logits  # (B, T, V)
    logprobs = ppo.logprobs_from_logits(logits[:, :-1], input_ids[:, 1:], temperature)  # (B, T-1)
    positions = torch.arange(1, input_ids.shape[1], device=input_ids.device)           # (T-1,)
    mask = (positions[None] >= prompt_lengths[:, None]) & attention_mask[:, 1:].bool()  # (B, T-1)
    return logprobs, mask.float()


def pair_sequence_logprobs(actor, reference, batch, temperature):
    """log pi(y | x) and log pi_ref(y | x) of every row of a collate_pairs batch.  (2B,), (2B,)"""
    args = (batch["input_ids"], batch["attention_mask"], batch["prompt_lengths"], temperature)
    logprobs, mask = answer_logprobs(actor, *args)
    with torch.no_grad():
        if reference is None:  # LoRA: the reference is the actor with its adapters off
            with actor.disable_adapter():
                ref_logprobs, _ = answer_logprobs(actor, *args)
        else:
            ref_logprobs, _ = answer_logprobs(reference, *args)
    return beyond.sequence_logprobs(logprobs, mask), beyond.sequence_logprobs(ref_logprobs, mask)


def collate_dpo(pairs, pad_id: int, device) -> dict:
    """collate_pairs' batch (chosen rows first, then rejected) with each row's prompt length."""
    batch = collate_pairs(pairs, pad_id)
    lengths = torch.tensor([p["prompt_length"] for p in pairs] * 2)                    # (2B,)
    return {**{k: v.to(device) for k, v in batch.items()}, "prompt_lengths": lengths.to(device)}


# ----------------------------------------------------------------------------- optimiser step (plumbing)

def optimiser_step(actor, optimizer, accelerator, loss, max_grad_norm: float) -> float:
    """Backward, unscale (fp16), clip, step. Returns the gradient norm, NaN when the loss or the
    gradient was not finite and the step was skipped (an fp16 overflow: the scaler skips it)."""
    optimizer.zero_grad(set_to_none=True)
    if not torch.isfinite(loss):
        return math.nan
    accelerator.backward(loss)
    accelerator.unscale_gradients()
    norm = float(torch.nn.utils.clip_grad_norm_(actor.parameters(), max_grad_norm))
    if math.isfinite(norm) or accelerator.scaler is not None:
        optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return norm


def largest_finite(norms) -> float:
    """The largest finite gradient norm of an iteration's steps; NaN when none was finite."""
    finite = [n for n in norms if math.isfinite(n)]
    return max(finite) if finite else math.nan


def check_finite(history, window: int, what: str) -> None:
    """Stop when the last `window` entries of history all had a non-finite gradient."""
    recent = history[-window:]
    if len(recent) == window and all(not math.isfinite(h["grad_norm"]) for h in recent):
        raise FloatingPointError(f"{what}: {window} steps in a row with a non-finite loss or gradient; "
                                 "lower the learning rate")


# ----------------------------------------------------------------------------- DPO

def dpo_steps(ppo_cfg, cfg) -> int:
    """DPO's budget: cfg.dpo_steps, or (0) as many optimiser steps as PPO's actor takes, each on
    as many sequences as one PPO minibatch (minibatch / 2 pairs, chosen and rejected)."""
    return cfg.dpo_steps or ppo_cfg.iterations * ppo_cfg.ppo_epochs * (ppo_cfg.rollout_batch // ppo_cfg.minibatch)


def dpo_step(actor, reference, batch, ppo_cfg, cfg, optimizer, accelerator) -> dict:
    """One DPO step on a batch of pairs: the implicit reward r = beta * log(pi / pi_ref) of each
    answer, the Bradley-Terry loss on r_chosen - r_rejected, one optimiser step."""
    with accelerator.autocast():
        logprobs, ref_logprobs = pair_sequence_logprobs(actor, reference, batch, ppo_cfg.temperature)  # (2B,)
    chosen, rejected = logprobs.chunk(2)                                                  # (B,), (B,)
    ref_chosen, ref_rejected = ref_logprobs.chunk(2)
    loss, stats = beyond.dpo_loss(chosen, rejected, ref_chosen, ref_rejected, cfg.dpo_beta,
                                  cfg.dpo_label_smoothing)
    norm = optimiser_step(actor, optimizer, accelerator, loss, ppo_cfg.max_grad_norm)
    return {"loss": float(loss.detach()), "accuracy": float(stats["accuracy"]), "margin": float(stats["margin"]),
            "chosen_reward": float(stats["chosen_rewards"].mean()),
            "rejected_reward": float(stats["rejected_rewards"].mean()), "grad_norm": norm}


@torch.no_grad()
def implicit_rewards(actor, reference, pairs, pad_id, cfg, temperature, batch_size: int = 32) -> dict:
    """DPO's implicit reward model on held-out pairs: the share where r_chosen > r_rejected, the
    mean margin, and the mean r of the chosen and the rejected answers."""
    device = next(actor.parameters()).device
    chosen, rejected = [], []
    for start in range(0, len(pairs), batch_size):
        batch = collate_dpo(pairs[start:start + batch_size], pad_id, device)
        logprobs, ref_logprobs = pair_sequence_logprobs(actor, reference, batch, temperature)
        rewards = cfg.dpo_beta * (logprobs - ref_logprobs)                                # (2b,)
        c, r = rewards.chunk(2)
        chosen += c.tolist()
        rejected += r.tolist()
    c, r = torch.tensor(chosen), torch.tensor(rejected)
    return {"implicit_accuracy": float((c > r).float().mean()), "implicit_margin": float((c - r).mean()),
            "implicit_chosen": float(c.mean()), "implicit_rejected": float(r.mean())}


def train_dpo(models, tokenizer, pairs, ppo_cfg, cfg, log=print):
    """dpo_steps(ppo_cfg, cfg) DPO steps of minibatch / 2 pairs, shuffled passes over `pairs`
    (encode_dpo_pairs), lr decaying linearly to 0. models: (actor, reference) or
    load_policy_models' three. Returns (actor, history)."""
    actor, reference = models[0], models[1]
    accelerator = make_accelerator(ppo_cfg.mixed_precision)
    steps, batch_pairs = dpo_steps(ppo_cfg, cfg), max(1, ppo_cfg.minibatch // 2)
    optimizer = adamw([p for p in actor.parameters() if p.requires_grad], cfg.dpo_lr, eps=1e-5)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0 - step / steps)
    actor, optimizer = accelerator.prepare(actor, optimizer)
    if reference is not None:
        reference.to(accelerator.device).eval().requires_grad_(False)
    torch.manual_seed(cfg.seed)
    per_pass = step_batches(len(pairs), batch_pairs, 0, cfg.seed)
    history = []
    for step in range(steps):
        epoch, index = divmod(step, len(per_pass))
        rows = step_batches(len(pairs), batch_pairs, epoch, cfg.seed)[index]
        batch = collate_dpo([pairs[i] for i in rows], tokenizer.pad_token_id, accelerator.device)
        actor.train()
        history.append({"step": step + 1, **dpo_step(actor, reference, batch, ppo_cfg, cfg, optimizer, accelerator)})
        schedule.step()
        check_finite(history, ppo_cfg.max_bad_updates, "DPO")
        if hasattr(log, "record"):
            log.record(history[-1])
    actor.eval()
    return accelerator.unwrap_model(actor, keep_fp32_wrapper=False), history


# ----------------------------------------------------------------------------- sampling for RLOO and GRPO

@dataclass
class Samples:
    """k answers to each prompt, row b * k + j the j-th answer to prompt b. N rows, R tokens."""
    query_responses: torch.Tensor   # (N, T) left-padded prompt + answer, pads after EOS
    attention_mask: torch.Tensor    # (N, T)
    responses: torch.Tensor         # (N, R) answer tokens, pad after the first EOS
    mask: torch.Tensor              # (N, R) 1.0 on valid answer tokens (up to the first EOS)
    logprobs: torch.Tensor          # (N, R) log pi_old of each token (temperature applied)
    ref_logprobs: torch.Tensor      # (N, R) log pi_ref
    raw_scores: torch.Tensor        # (N,) the reward model's score (normalised in its head)
    scores: torch.Tensor            # (N,) after the EOS penalty and the clip, as PPO's

    @property
    def P(self) -> int:
        return self.query_responses.shape[1] - self.responses.shape[1]


@torch.no_grad()
def sample_groups(actor, reference, reward_model, tokenizer, prompt_ids, k: int, cfg, log=print) -> Samples:
    """k sampled answers to each prompt (a list of id lists), scored as PPO scores its rollouts.
    Generation runs cfg.generation_batch rows at a time (0 = all), halved on out-of-memory."""
    device = next(actor.parameters()).device
    batch = collate_prompts([ids for ids in prompt_ids for _ in range(k)], tokenizer.pad_token_id, device)
    queries, query_mask = batch["input_ids"], batch["attention_mask"]                      # (N, P)
    N, P = queries.shape
    parts, _ = in_chunks(lambda rows: generate(actor, queries[rows], query_mask[rows], tokenizer,
                                               cfg.max_new_tokens, True, cfg.temperature),
                         N, cfg.generation_batch or N, log, "generation chunk")
    mask, responses, has_eos = ppo.response_mask(pad_columns(parts, tokenizer.pad_token_id),
                                                 tokenizer.eos_token_id, tokenizer.pad_token_id)
    qr = torch.cat([queries, responses], 1)                                               # (N, T)
    am = torch.cat([query_mask, mask.long()], 1)                                          # (N, T)
    logprobs = ppo.logprobs_from_logits(response_logits(actor, qr, am, P), responses, cfg.temperature)  # (N, R)
    ref_logprobs = reference_logprobs(actor, reference, qr, am, P, cfg.temperature)       # (N, R)
    raw_scores, scores = score(reward_model, qr, am, has_eos, cfg)                        # (N,), (N,)
    return Samples(qr, am, responses, mask, logprobs, ref_logprobs, raw_scores, scores)


def current_logprobs(actor, samples: Samples, rows, temperature):
    """log pi of the sampled tokens of `rows` under the actor as it is now (with gradient).  (b, R)"""
    logits = response_logits(actor, samples.query_responses[rows], samples.attention_mask[rows], samples.P)
    return ppo.logprobs_from_logits(logits, samples.responses[rows], temperature)


def sample_stats(samples: Samples) -> dict:
    """What to log about an iteration's answers (the names of ppo_loop.rollout_stats)."""
    k1 = ppo.kl_per_token(samples.logprobs, samples.ref_logprobs, samples.mask).sum(1)     # (N,)
    return {"score": float(samples.raw_scores.mean()), "score_clipped": float(samples.scores.mean()),
            "kl": float(k1.mean()), "response_length": float(samples.mask.sum(1).mean()),
            "tokens": int(samples.mask.sum()), "prompts": samples.responses.shape[0]}


# ----------------------------------------------------------------------------- RLOO

def rloo_iteration(models, tokenizer, prompt_ids, ppo_cfg, cfg, optimizer, accelerator, iteration, log=print):
    """One RLOO iteration: k answers per prompt, each one's score minus beta * its KL to the
    reference, minus the mean of the other k - 1 (the baseline), and one REINFORCE pass over the
    answers in minibatches. Returns (samples, stats)."""
    actor, reference, reward_model = models
    with accelerator.autocast():
        samples = sample_groups(actor, reference, reward_model, tokenizer, prompt_ids, cfg.rloo_k, ppo_cfg, log)
    rewards = beyond.kl_penalised_scores(samples.scores, samples.logprobs, samples.ref_logprobs,
                                         samples.mask, cfg.rloo_kl_coef)                  # (N,)
    advantages = beyond.rloo_advantages(rewards.view(-1, cfg.rloo_k)).reshape(-1)         # (N,)
    losses, norms = [], []
    actor.train()
    for start in range(0, len(advantages), ppo_cfg.minibatch):
        rows = slice(start, start + ppo_cfg.minibatch)
        with accelerator.autocast():
            logprobs = current_logprobs(actor, samples, rows, ppo_cfg.temperature)        # (b, R)
        loss = beyond.rloo_loss(beyond.sequence_logprobs(logprobs, samples.mask[rows]), advantages[rows])
        norms.append(optimiser_step(actor, optimizer, accelerator, loss, ppo_cfg.max_grad_norm))
        losses.append(float(loss.detach()))
    actor.eval()
    return samples, {"loss": sum(losses) / len(losses), "rlhf_reward": float(rewards.mean()),
                     "grad_norm": largest_finite(norms)}


# ----------------------------------------------------------------------------- GRPO

def grpo_iteration(models, tokenizer, prompt_ids, ppo_cfg, cfg, optimizer, accelerator, iteration, log=print):
    """One GRPO iteration: a group of answers per prompt, each one's score standardised within
    its group (the advantage of every one of its tokens), then grpo_epochs passes of PPO's clipped
    objective plus beta * k3 KL to the reference, in shuffled minibatches. Returns (samples, stats)."""
    actor, reference, reward_model = models
    with accelerator.autocast():
        samples = sample_groups(actor, reference, reward_model, tokenizer, prompt_ids, cfg.grpo_group, ppo_cfg, log)
    advantages = beyond.grpo_advantages(samples.scores.view(-1, cfg.grpo_group)).reshape(-1)  # (N,)
    generator = torch.Generator().manual_seed(cfg.seed * 1000 + iteration)
    totals, norms = {}, []
    actor.train()
    for _ in range(cfg.grpo_epochs):
        order = torch.randperm(len(advantages), generator=generator).to(advantages.device)
        for start in range(0, len(order), ppo_cfg.minibatch):
            rows = order[start:start + ppo_cfg.minibatch]
            with accelerator.autocast():
                logprobs = current_logprobs(actor, samples, rows, ppo_cfg.temperature)    # (b, R)
            loss, stats = beyond.grpo_loss(logprobs, samples.logprobs[rows], samples.ref_logprobs[rows],
                                           advantages[rows], samples.mask[rows], cfg.grpo_clip, cfg.grpo_kl_coef)
            norms.append(optimiser_step(actor, optimizer, accelerator, loss, ppo_cfg.max_grad_norm))
            stats["kl_k3"] = stats.pop("kl")  # the loss's KL term; "kl" is the answers' k1 KL (sample_stats)
            for key, value in {"loss": loss.detach(), **stats}.items():
                totals[key] = totals.get(key, 0.0) + float(value) / (cfg.grpo_epochs * math.ceil(len(order) / ppo_cfg.minibatch))
    actor.eval()
    return samples, {**totals, "grad_norm": largest_finite(norms)}


# ----------------------------------------------------------------------------- the online runner (plumbing)

ONLINE = {"rloo": (rloo_iteration, "rloo_k", "rloo_lr"), "grpo": (grpo_iteration, "grpo_group", "grpo_lr")}


def token_budget(ppo_cfg, cfg) -> int:
    """The answer tokens an online loop may generate: cfg.token_budget, or (0) the most PPO's
    iterations could generate, iterations x rollout_batch x max_new_tokens."""
    return cfg.token_budget or ppo_cfg.iterations * ppo_cfg.rollout_batch * ppo_cfg.max_new_tokens


def train_online(algorithm, models, tokenizer, prompt_ids, ppo_cfg, cfg, log=print, judge=None,
                 prompt_texts=None, progress=True):
    """RLOO or GRPO until the token budget is spent (or cfg.iterations). Returns (actor, history).

    Each iteration answers rollout_batch / k prompts k times: as many answers as a PPO rollout.
    The budget counts valid answer tokens (up to and including EOS), so a loop whose answers grow
    shorter runs more iterations; the learning rate falls linearly to 0 over the budget, as PPO's
    falls over its iterations. judge(prompt, text, ended) -> gold, logged when given.
    """
    from tqdm.auto import tqdm

    iteration_fn, k_field, lr_field = ONLINE[algorithm]
    k, lr = getattr(cfg, k_field), getattr(cfg, lr_field)
    if ppo_cfg.rollout_batch % k:
        raise ValueError(f"PPOConfig.rollout_batch ({ppo_cfg.rollout_batch}) must be a multiple of "
                         f"BeyondConfig.{k_field} ({k}): each iteration answers as many times as PPO")
    actor, reference, reward_model = models
    accelerator = make_accelerator(ppo_cfg.mixed_precision)
    optimizer = adamw([p for p in actor.parameters() if p.requires_grad], lr, eps=1e-5)
    actor, optimizer = accelerator.prepare(actor, optimizer)
    for frozen in (reference, reward_model):
        if frozen is not None:
            frozen.to(accelerator.device).eval().requires_grad_(False)
    torch.manual_seed(cfg.seed)
    budget, used, history = token_budget(ppo_cfg, cfg), 0, []
    text_of = {tuple(ids): text for ids, text in zip(prompt_ids, prompt_texts or [])}
    bar = tqdm(total=budget, desc=algorithm, unit="tok", disable=not progress)
    for it in range(cfg.iterations):
        if used >= budget:
            break
        for group in optimizer.param_groups:
            group["lr"] = lr * max(0.0, 1.0 - used / budget)
        ids = prompt_batch(prompt_ids, ppo_cfg.rollout_batch // k, cfg.seed, it)
        samples, stats = iteration_fn((actor, reference, reward_model), tokenizer, ids, ppo_cfg, cfg,
                                      optimizer, accelerator, it, log)
        stats = {"iteration": it + 1, **sample_stats(samples), **stats}
        used += stats["tokens"]
        bar.update(stats["tokens"])
        if judge is not None:
            texts, ended = decode_responses(samples.responses.cpu(), tokenizer)
            prompts = [text_of.get(tuple(i), "") for i in ids for _ in range(k)]
            stats["gold"] = sum(judge(p, t, e) for p, t, e in zip(prompts, texts, ended)) / len(texts)
        history.append({**stats, "tokens_used": used})
        check_finite(history, ppo_cfg.max_bad_updates, algorithm.upper())
        if hasattr(log, "record"):
            log.record(history[-1])
    bar.close()
    return accelerator.unwrap_model(actor, keep_fp32_wrapper=False), history
