"""Beyond PPO: the math of DPO, RLOO and GRPO as small pure functions on tensors.

The same conventions as rlhf/ppo.py: nothing here touches a model, everything is float32 under
any autocast (`full_precision`), `mask` is 1.0 on valid response tokens and 0.0 after them, and
masked positions may hold any finite value. Shapes: B prompts (or preference pairs), k samples
per prompt, R response length, N = B * k sampled responses laid out group by group (row b * k + j
is sample j of prompt b, which is what `advantages.reshape(-1)` of a (B, k) tensor gives).

- DPO (Rafailov et al. 2023) needs no reward model and no sampling: a Bradley-Terry loss on the
  implicit rewards beta * (log pi - log pi_ref) of the chosen and the rejected answer.
- RLOO (Ahmadian et al. 2024) is REINFORCE with k samples per prompt, each one's baseline the mean
  score of the other k - 1: no critic, one score per sequence.
- GRPO (Shao et al. 2024, DeepSeekMath) standardises the scores within each group of k and puts
  that one advantage on every token of the sequence in PPO's clipped objective, with a k3 KL
  penalty to the reference added to the loss instead of to the reward.
"""
from __future__ import annotations

import torch

from .ppo import full_precision, kl_per_token, masked_mean, masked_sum, policy_loss
from .reward import pairwise_loss


# ----------------------------------------------------------------------------- DPO

@full_precision
def sequence_logprobs(logprobs, mask):
    """log pi(y | x) = sum_t m_t log pi(y_t | x, y_<t): the response's per-token logprobs summed.  (B,)"""
    return masked_sum(logprobs, mask, dim=-1)                             # (B,)


@full_precision
def dpo_loss(policy_chosen, policy_rejected, ref_chosen, ref_rejected, beta, label_smoothing=0.0):
    """DPO on sequence logprobs, each (B,): mean[-log sigmoid(r_w - r_l)], r = beta * (log pi - log pi_ref).

    r_w = beta * (log pi(y_w) - log pi_ref(y_w)) and r_l likewise are the implicit rewards of the
    chosen and the rejected answer, so this is the reward model's Bradley-Terry loss
    (`reward.pairwise_loss`) with the policy as its own reward model. label_smoothing = e > 0 is
    conservative DPO: the label is taken to be wrong with probability e, and the loss becomes
    (1 - e) * BT(r_w, r_l) + e * BT(r_l, r_w).

    Returns (loss, stats); stats are detached: `chosen_rewards` and `rejected_rewards` (B,),
    `accuracy` (share of pairs with r_w > r_l, ties wrong) and `margin` = mean(r_w - r_l).
    """
    chosen_rewards = beta * (policy_chosen - ref_chosen)                  # (B,)
    rejected_rewards = beta * (policy_rejected - ref_rejected)            # (B,)
    loss, accuracy, margin = pairwise_loss(chosen_rewards, rejected_rewards)
    if label_smoothing:
        flipped_loss, _, _ = pairwise_loss(rejected_rewards, chosen_rewards)
        loss = (1.0 - label_smoothing) * loss + label_smoothing * flipped_loss
    stats = {"chosen_rewards": chosen_rewards.detach(), "rejected_rewards": rejected_rewards.detach(),
             "accuracy": accuracy, "margin": margin}
    return loss, stats


# ----------------------------------------------------------------------------- RLOO

def _check_groups(scores):
    if scores.dim() != 2 or scores.shape[1] < 2:
        raise ValueError(f"scores must be (B, k) with k >= 2 samples per prompt, got shape {tuple(scores.shape)}")


@full_precision
def rloo_advantages(scores):
    """A_i = r_i - mean_{j != i} r_j within each group, scores (B, k) with k >= 2.  (B, k)

    The baseline leaves r_i out, so it does not depend on the sample it is subtracted from and
    the gradient estimate stays unbiased. Equivalently A_i = k / (k - 1) * (r_i - mean_j r_j).
    """
    _check_groups(scores)
    k = scores.shape[1]
    others_mean = (scores.sum(1, keepdim=True) - scores) / (k - 1)        # (B, k)
    return scores - others_mean                                           # (B, k)


@full_precision
def kl_penalised_scores(scores, logprobs, ref_logprobs, mask, kl_coef, estimator="k1"):
    """score - beta * sum_t KL_t: the whole response's KL penalty folded into its one score.

    scores (N,), logprobs and ref_logprobs (N, R). RLOO has no per-token rewards to spread the
    penalty over, so it is paid once per sequence (TRL's RLOO trainer does the same).  (N,)
    """
    kl = kl_per_token(logprobs, ref_logprobs, mask, estimator).sum(-1)   # (N,)
    return scores - kl_coef * kl                                          # (N,)


@full_precision
def rloo_loss(seq_logprobs, advantages):
    """REINFORCE: -mean[A * log pi(y | x)], the advantage a constant (detached).  ()

    seq_logprobs and advantages have one entry per sampled response, any matching shape.
    Its gradient, -mean[A * grad log pi], raises the probability of answers better than their
    leave-one-out baseline and lowers the others.
    """
    return -(advantages.detach() * seq_logprobs).mean()                   # ()


# ----------------------------------------------------------------------------- GRPO

@full_precision
def grpo_advantages(scores, eps=1e-4):
    """A_i = (r_i - mean_g r) / (std_g r + eps) within each group, scores (B, k), k >= 2.  (B, k)

    std is the unbiased one (divides by k - 1), torch's default and what DeepSeekMath's and TRL's
    implementations use. A group whose scores are all equal carries no signal and gets A = 0
    exactly (computing it would give rounding noise divided by eps).
    """
    _check_groups(scores)
    mean = scores.mean(1, keepdim=True)                                   # (B, 1)
    std = scores.std(1, keepdim=True, unbiased=True)                      # (B, 1)
    advantages = (scores - mean) / (std + eps)                            # (B, k)
    same = (scores == scores[:, :1]).all(1, keepdim=True)                 # (B, 1)
    return torch.where(same, torch.zeros_like(advantages), advantages)


@full_precision
def per_sequence_weights(mask):
    """w_i = T / (N |o_i|), T valid tokens in all: mean_m[w * x] = mean_i[(1/|o_i|) sum_t x_it].  (N,)

    A token-level mean with these weights is the mean over sequences of each sequence's own token
    mean, so a long answer counts as much as a short one. An empty row gets weight 0.
    """
    lengths = masked_sum(torch.ones_like(mask), mask, dim=-1)             # (N,)
    weights = lengths.sum() / (mask.shape[0] * lengths.clamp(min=1))      # (N,)
    return torch.where(lengths > 0, weights, torch.zeros_like(weights))


@full_precision
def grpo_loss(logprobs, old_logprobs, ref_logprobs, advantages, mask, clip_ratio, kl_coef):
    """mean_i (1/|o_i|) sum_t [ max(-A_i rho_it, -A_i clip(rho_it, 1-eps, 1+eps)) + beta * k3_it ].

    logprobs, old_logprobs, ref_logprobs, mask (N, R); advantages (N,), one per sequence and the
    same on all its tokens. k3 = exp(ref - logp) - (ref - logp) - 1 >= 0 estimates KL(pi || pi_ref)
    on tokens sampled from pi (`ppo.kl_per_token`).

    Each sequence's tokens are averaged first, then the sequences (the paper's 1/|o_i|). The
    clipped term is `ppo.policy_loss`, a mean over all valid tokens, fed A_i * w_i with the
    `per_sequence_weights` w_i: for w >= 0 the clipped term is w times the one at A, so the token
    mean becomes the per-sequence mean. The alternative is a plain token-level mean over every
    valid token of the batch (DAPO, Dr. GRPO; `ppo.policy_loss` as is): it does not favour short
    answers, since a token's weight no longer shrinks with its answer's length.

    Returns (loss, stats); stats are detached 0-d tensors: `policy_loss`, `kl` (mean k3, averaged
    as in the loss), and `policy_loss`'s token-level `ratio_mean`, `clipfrac` and `approx_kl`.
    """
    weighted = (advantages.detach() * per_sequence_weights(mask)).unsqueeze(-1)  # (N, 1)
    surrogate, stats = policy_loss(logprobs, old_logprobs, weighted.expand_as(logprobs), mask, clip_ratio)
    k3 = kl_per_token(logprobs, ref_logprobs, mask, "k3")                 # (N, R)
    kl = masked_mean(k3, mask, dim=-1).mean()                             # ()
    loss = surrogate + kl_coef * kl                                       # ()
    stats = {**stats, "policy_loss": surrogate.detach(), "kl": kl.detach()}
    return loss, stats
