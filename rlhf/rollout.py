"""Stage 3, part 1: the four models, and one rollout with everything PPO needs to learn from it.

actor (trainable policy, from model/actor) · reference (frozen copy of the actor) ·
reward (frozen, model/critic) · critic (trainable value model, initialised from the reward model).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from . import ppo
from .generation import generate, position_ids_from_mask
from .reward import sequence_scores, token_scores


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
    raw_scores: torch.Tensor        # (B,) reward model's score
    scores: torch.Tensor            # (B,) after the EOS penalty, normalisation and clipping
    rewards: torch.Tensor = None    # (B, R) -beta*KL per token + score at the last token
    non_score_rewards: torch.Tensor = None  # (B, R) the -beta*KL part alone
    advantages: torch.Tensor = None  # (B, R) whitened GAE advantages
    returns: torch.Tensor = None    # (B, R) GAE advantages + V_old (before whitening)

    @property
    def P(self) -> int:
        return self.query_responses.shape[1] - self.responses.shape[1]


def sample(actor, tokenizer, prompt_ids, prompt_mask, cfg):
    """Sample responses and cut them at the first EOS: (query_responses, attention_mask,
    responses, mask, has_eos)."""
    raw = generate(actor, prompt_ids, prompt_mask, tokenizer, cfg.max_new_tokens,
                   do_sample=True, temperature=cfg.temperature)               # (B, R)
    mask, responses, has_eos = ppo.response_mask(raw, tokenizer.eos_token_id, tokenizer.pad_token_id)
    query_responses = torch.cat([prompt_ids, responses], 1)                   # (B, T)
    attention_mask = torch.cat([prompt_mask, mask.long()], 1)                 # (B, T)
    return query_responses, attention_mask, responses, mask, has_eos


def reference_logprobs(actor, reference, query_responses, attention_mask, P, temperature):
    """log pi_ref; with LoRA the reference is the actor with its adapters switched off."""
    if reference is None:
        with actor.disable_adapter():
            logits = response_logits(actor, query_responses, attention_mask, P)
    else:
        logits = response_logits(reference, query_responses, attention_mask, P)
    return ppo.logprobs_from_logits(logits, query_responses[:, P:], temperature)


@torch.no_grad()
def score(reward_model, query_responses, attention_mask, has_eos, cfg, stats):
    """The reward model's score at the last real token, then the EOS penalty, normalisation and
    clipping. `stats` holds the SFT-sample mean and std saved by stage 2."""
    raw = sequence_scores(reward_model, query_responses, attention_mask)      # (B,)
    scores = raw
    if cfg.normalize_score:
        scores = (scores - stats["mean"]) / stats["std"]
    scores = ppo.apply_missing_eos_penalty(scores, has_eos, cfg.missing_eos_penalty)
    return raw, scores.clamp(-cfg.score_clip, cfg.score_clip)


@torch.no_grad()
def make_rollout(models, tokenizer, prompt_ids, prompt_mask, cfg, reward_stats, kl_coef, timer):
    """Generate, evaluate with all four models, and compute rewards and advantages."""
    actor, reference, reward_model, critic = models
    with timer("generate"):
        qr, am, responses, mask, has_eos = sample(actor, tokenizer, prompt_ids, prompt_mask, cfg)
    P = prompt_ids.shape[1]
    with timer("score"):
        logits = response_logits(actor, qr, am, P)                              # (B, R, V)
        logprobs = ppo.logprobs_from_logits(logits, responses, cfg.temperature)  # (B, R)
        entropy = ppo.entropy_from_logits(logits, cfg.temperature)               # (B, R)
        del logits
        ref_logprobs = reference_logprobs(actor, reference, qr, am, P, cfg.temperature)
        values = response_values(critic, qr, am, P)
        raw_scores, scores = score(reward_model, qr, am, has_eos, cfg, reward_stats)
    rollout = Rollout(qr, am, responses, mask, has_eos, logprobs, ref_logprobs, values, entropy,
                      raw_scores, scores)
    rollout.rewards, rollout.non_score_rewards = ppo.compute_rewards(
        scores, logprobs, ref_logprobs, mask, kl_coef)                        # (B, R)
    advantages, rollout.returns = ppo.gae(values, rollout.rewards, mask, cfg.gamma, cfg.lam)
    rollout.advantages = ppo.masked_whiten(advantages, mask)                  # (B, R)
    return rollout
