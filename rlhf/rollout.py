"""Stage 3, part 1: the four models, and one rollout with everything PPO needs to learn from it.

actor (trainable policy, from model/actor) · reference (frozen copy of the actor) ·
reward (frozen, model/critic) · critic (trainable value model, initialised from the reward model;
both score in normalised units, rlhf.models.load_ppo_models).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from . import ppo
from .generation import generate, position_ids_from_mask
from .reward import sequence_scores, token_scores
from .runtime import halve_on_oom


def response_logits(actor, query_responses, attention_mask, P: int):
    """Logits that predict each response token: position t-1 predicts token t.  (B, R, V)

    The LM head runs on those R positions only (`logits_to_keep`): on the prompt its V-wide
    output would be thrown away. No KV cache is built: this is a training/scoring pass.
    """
    keep = torch.arange(P - 1, query_responses.shape[1] - 1, device=query_responses.device)  # (R,)
    return actor(input_ids=query_responses, attention_mask=attention_mask,
                 position_ids=position_ids_from_mask(attention_mask),
                 logits_to_keep=keep, use_cache=False).logits                 # (B, R, V)


def response_values(critic, query_responses, attention_mask, P: int):
    """V(s_t) of the state before each response token, read one position earlier.  (B, R)"""
    return token_scores(critic, query_responses, attention_mask)[:, P - 1:-1]  # (B, R)


@dataclass
class Rollout:
    """One batch of experience. Shapes: B prompts, P prompt length, R response length."""
    query_responses: torch.Tensor   # (B, T) left-padded prompt + response, pads after EOS
    attention_mask: torch.Tensor    # (B, T) 1 on real prompt and valid response tokens
    responses: torch.Tensor         # (B, R) response tokens, pad after the first EOS
    mask: torch.Tensor              # (B, R) 1.0 on valid response tokens (up to the first EOS)
    has_eos: torch.Tensor           # (B,) the response ended with EOS
    logprobs: torch.Tensor          # (B, R) log pi_old of each token (temperature applied)
    ref_logprobs: torch.Tensor      # (B, R) log pi_ref of each token
    values: torch.Tensor            # (B, R) V_old
    entropy: torch.Tensor           # (B, R) entropy of pi_old where each token was drawn
    raw_scores: torch.Tensor        # (B,) reward model's score (normalised in its head by load_ppo_models)
    scores: torch.Tensor            # (B,) after the EOS penalty and clipping
    rewards: torch.Tensor = None    # (B, R) -beta*KL per token + score at the last token
    non_score_rewards: torch.Tensor = None  # (B, R) the -beta*KL part alone
    advantages: torch.Tensor = None  # (B, R) whitened GAE advantages
    returns: torch.Tensor = None    # (B, R) GAE advantages + V_old (before whitening)

    @property
    def P(self) -> int:
        return self.query_responses.shape[1] - self.responses.shape[1]


def in_chunks(fn, rows: int, chunk: int, log, what: str):
    """fn(rows slice) over consecutive slices of `chunk` rows; a slice that runs out of memory
    is redone with half the rows. Returns (list of outputs, the chunk that fitted)."""
    outputs, start = [], 0
    while start < rows:
        out, chunk = halve_on_oom(lambda size: fn(slice(start, start + size)), chunk, log, what)
        outputs.append(out)
        start = min(rows, start + chunk)
    return outputs, chunk


def pad_columns(tensors, value):
    """Right-pad 2-D tensors with `value` to the widest, and stack their rows.  (sum B, max R)"""
    width = max(t.shape[1] for t in tensors)
    return torch.cat([torch.nn.functional.pad(t, (0, width - t.shape[1]), value=value) for t in tensors])


def reference_logprobs(actor, reference, query_responses, attention_mask, P, temperature):
    """log pi_ref; with LoRA the reference is the actor with its adapters switched off."""
    if reference is None:
        with actor.disable_adapter():
            logits = response_logits(actor, query_responses, attention_mask, P)
    else:
        logits = response_logits(reference, query_responses, attention_mask, P)
    return ppo.logprobs_from_logits(logits, query_responses[:, P:], temperature)


@torch.no_grad()
def score(reward_model, query_responses, attention_mask, has_eos, cfg):
    """The reward model's score at the last real token, then the EOS penalty and clipping. The
    normalisation is in the reward model's head already (load_ppo_models folds stage 2's SFT
    statistics into it when cfg.normalize_score), so it is not applied here a second time."""
    raw = sequence_scores(reward_model, query_responses, attention_mask)      # (B,)
    scores = ppo.apply_missing_eos_penalty(raw, has_eos, cfg.missing_eos_penalty)
    return raw, scores.clamp(-cfg.score_clip, cfg.score_clip)


@torch.no_grad()
def make_rollout(models, tokenizer, prompt_ids, prompt_mask, cfg, kl_coef, timer,
                 chunk=None, log=print):
    """Generate, evaluate with all four models, and compute rewards and advantages.

    Generation and scoring run `chunk` rows at a time (cfg.generation_batch, 0 = all at once),
    halved on out-of-memory. Returns (rollout, the chunk that fitted).
    """
    actor, reference, reward_model, critic = models
    B, P = prompt_ids.shape
    chunk = chunk or cfg.generation_batch or B
    with timer("generate"):
        parts, chunk = in_chunks(lambda rows: generate(actor, prompt_ids[rows], prompt_mask[rows], tokenizer,
                                                       cfg.max_new_tokens, True, cfg.temperature),
                                 B, chunk, log, "generation chunk")
    raw = pad_columns(parts, tokenizer.pad_token_id)                          # (B, R) as sampled
    mask, responses, has_eos = ppo.response_mask(raw, tokenizer.eos_token_id, tokenizer.pad_token_id)
    qr = torch.cat([prompt_ids, responses], 1)                                # (B, T)
    am = torch.cat([prompt_mask, mask.long()], 1)                             # (B, T)

    def score_rows(rows):
        logits = response_logits(actor, qr[rows], am[rows], P)                # (b, R, V)
        logprobs = ppo.logprobs_from_logits(logits, responses[rows], cfg.temperature)  # (b, R)
        entropy = ppo.entropy_from_logits(logits, cfg.temperature)            # (b, R)
        del logits  # the largest tensor of the rollout
        return (logprobs, entropy, reference_logprobs(actor, reference, qr[rows], am[rows], P, cfg.temperature),
                response_values(critic, qr[rows], am[rows], P),              # (b, R)
                *score(reward_model, qr[rows], am[rows], has_eos[rows], cfg))  # (b,), (b,)
    with timer("score"):
        parts, chunk = in_chunks(score_rows, B, chunk, log, "scoring chunk")
    logprobs, entropy, ref_logprobs, values, raw_scores, scores = (torch.cat(t) for t in zip(*parts))
    rollout = Rollout(qr, am, responses, mask, has_eos, logprobs, ref_logprobs, values, entropy,
                      raw_scores, scores)
    rollout.rewards, rollout.non_score_rewards = ppo.compute_rewards(
        scores, logprobs, ref_logprobs, mask, kl_coef)                        # (B, R)
    advantages, rollout.returns = ppo.gae(values, rollout.rewards, mask, cfg.gamma, cfg.lam)
    rollout.advantages = ppo.masked_whiten(advantages, mask)                  # (B, R)
    return rollout, chunk
