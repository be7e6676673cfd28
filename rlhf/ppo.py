"""The math of PPO for RLHF: small pure functions on response-only tensors.

Nothing here touches a model. Every function takes tensors and returns tensors, so each one can be
called on a 2x5 toy batch and checked by hand. Shapes: B batch, R response length, V vocabulary.
`mask` is 1.0 on valid response tokens (up to and including the first EOS) and 0.0 after it; the
valid tokens of a row are a prefix of the row. Masked positions may hold any finite value: every
function ignores them and writes 0 there.

Every function computes in float32, whatever autocast is active around it (`full_precision`):
the rollout and the update run under bf16/fp16 autocast, and GAE as a bf16 matmul is off by
hundredths, which is the critic's target and the size of a whitened advantage's error.
"""
from __future__ import annotations

import functools

import torch
import torch.nn.functional as F


def full_precision(fn):
    """Run `fn` with autocast off and its floating-point tensor arguments cast to float32."""
    def up(x):
        return x.float() if torch.is_tensor(x) and x.is_floating_point() else x

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        with torch.autocast("cpu", enabled=False), torch.autocast("cuda", enabled=False):
            return fn(*map(up, args), **{k: up(v) for k, v in kwargs.items()})
    return wrapper


# ----------------------------------------------------------------------------- logits -> logprobs

def scale(logits, temperature: float):
    """logits / T; at T = 1 the logits themselves (a pass over (B, R, V) saved, forward and back)."""
    return logits if temperature == 1.0 else logits / temperature


@full_precision
def logprobs_from_logits(logits, tokens, temperature=1.0):
    """log pi(token) = logits[token]/T - logsumexp(logits/T), always in float32.

    The logits are cast up before the softmax, so bf16/fp16 models still give fp32 logprobs.
    Pass the sampling temperature (checklist #5), else the first PPO ratio is not 1.
    """
    logits = scale(logits.float(), temperature)                           # (B, R, V)
    token_logits = logits.gather(-1, tokens.unsqueeze(-1)).squeeze(-1)    # (B, R)
    return token_logits - torch.logsumexp(logits, dim=-1)                 # (B, R)


@full_precision
def entropy_from_logits(logits, temperature=1.0):
    """H = -sum_v pi(v) log pi(v) of the temperature-scaled distribution, in float32."""
    all_logprobs = torch.log_softmax(scale(logits.float(), temperature), dim=-1)  # (B, R, V)
    return -(all_logprobs.exp() * all_logprobs).sum(-1)                     # (B, R)


# ----------------------------------------------------------------------------- masked statistics

@full_precision
def masked_sum(x, mask, dim=None):
    """sum_i m_i x_i over `dim` (all of it when None); masked values are never read."""
    x = torch.where(mask.bool(), x, torch.zeros_like(x))                  # (B, R)
    return x.sum() if dim is None else x.sum(dim)


@full_precision
def masked_mean(x, mask, dim=None):
    """sum_i m_i x_i / sum_i m_i; 0 where nothing is valid (an empty batch gives 0, not NaN)."""
    count = masked_sum(torch.ones_like(x), mask, dim)
    return masked_sum(x, mask, dim) / count.clamp(min=1)


@full_precision
def masked_var(x, mask, unbiased=True):
    """Variance of the valid entries: mean_m[(x - mean_m(x))^2], times n/(n-1) when unbiased.

    With fewer than two valid entries the Bessel factor is left out instead of dividing by zero.
    """
    centred = x - masked_mean(x, mask)                                    # (B, R)
    var = masked_mean(centred ** 2, mask)                                 # ()
    if unbiased:
        n = masked_sum(torch.ones_like(x), mask)                          # ()
        var = var * n / (n - 1).clamp(min=1)
    return var


@full_precision
def masked_whiten(x, mask, shift_mean=True, eps=1e-8):
    """(x - mean_m(x)) / sqrt(var_m(x) + eps), statistics over valid entries only; 0 at pads.

    shift_mean=False adds the mean back: only the scale changes (OpenAI's reward whitening).
    """
    mean, var = masked_mean(x, mask), masked_var(x, mask)                 # (), ()
    whitened = (x - mean) * torch.rsqrt(var + eps)                        # (B, R)
    if not shift_mean:
        whitened = whitened + mean
    return torch.where(mask.bool(), whitened, torch.zeros_like(whitened))


# ----------------------------------------------------------------------------- rollout post-processing

@full_precision
def response_mask(responses, eos_token_id, pad_token_id):
    """Cut each response after its first EOS: (mask, truncated responses, has_eos).

    m_t = 1 if no EOS occurs strictly before t. The first EOS stays (valid, mask 1); every token
    after it becomes `pad_token_id`. Only response positions are searched, so a prompt that starts
    with an EOS-as-BOS (OPT's `</s>`) can never be taken for the end of the answer.
    """
    is_eos = (responses == eos_token_id).long()                           # (B, R)
    after_eos = (is_eos.cumsum(1) - is_eos) > 0                           # (B, R) strictly after the first EOS
    truncated = responses.masked_fill(after_eos, pad_token_id)            # (B, R)
    mask = (~after_eos).float()                                           # (B, R)
    has_eos = is_eos.bool().any(1)                                        # (B,)
    return mask, truncated, has_eos


# ----------------------------------------------------------------------------- rewards

@full_precision
def kl_per_token(logprobs, ref_logprobs, mask, estimator="k1"):
    """Per-token estimate of KL(pi || pi_ref) on tokens sampled from pi; 0 at masked positions.

    k1 = log pi - log pi_ref                  (unbiased; single tokens can be negative)
    k3 = exp(-k1) - 1 + k1                    (unbiased and >= 0; Schulman, "Approximating KL")
    """
    k1 = logprobs - ref_logprobs                                          # (B, R)
    if estimator == "k1":
        kl = k1
    elif estimator == "k3":
        kl = torch.expm1(-k1) + k1                                        # (B, R)
    else:
        raise ValueError(f"unknown KL estimator {estimator!r}; use 'k1' or 'k3'")
    return torch.where(mask.bool(), kl, torch.zeros_like(kl))


@full_precision
def last_token_onehot(mask):
    """One-hot of the last valid position of each row; an all-zero row gives an all-zero row."""
    R = mask.shape[1]
    positions = torch.arange(1, R + 1, device=mask.device)                # (R,)
    last = (mask.bool() * positions).argmax(1)                            # (B,)
    has_valid = mask.bool().any(1, keepdim=True)                          # (B, 1)
    return F.one_hot(last, R).to(mask.dtype) * has_valid                  # (B, R)


@full_precision
def compute_rewards(scores, logprobs, ref_logprobs, mask, kl_coef):
    """r_t = -beta * (log pi_t - log pi_ref,t) + [t = last valid token] * score.

    Returns (rewards, non_score_rewards), both (B, R) and 0 at masked positions.
    """
    non_score_rewards = -kl_coef * kl_per_token(logprobs, ref_logprobs, mask, "k1")  # (B, R)
    at_end = last_token_onehot(mask).to(non_score_rewards.dtype)          # (B, R)
    rewards = non_score_rewards + scores.unsqueeze(1).to(at_end.dtype) * at_end  # (B, R)
    return rewards, non_score_rewards


@full_precision
def apply_missing_eos_penalty(scores, has_eos, penalty):
    """score - penalty for every response that never emitted EOS (the 'EOS trick')."""
    return torch.where(has_eos, scores, scores - penalty)                 # (B,)


# ----------------------------------------------------------------------------- advantages

@full_precision
def gae_naive(values, rewards, mask, gamma, lam):
    """Generalised advantage estimation, the obvious reverse loop (reference for `gae`).

    delta_t = r_t + gamma * m_{t+1} V_{t+1} - V_t      (the next value is 0 after the last token)
    A_t     = delta_t + gamma * lam * A_{t+1}
    returns = A + V. Both outputs are 0 at masked positions.
    """
    values, rewards = values * mask, rewards * mask                       # (B, R)
    B, R = values.shape
    next_value = values.new_zeros(B)                                      # (B,)
    next_advantage = values.new_zeros(B)                                  # (B,)
    advantages = []
    for t in reversed(range(R)):
        delta = rewards[:, t] + gamma * next_value - values[:, t]         # (B,)
        next_advantage = delta + gamma * lam * next_advantage             # (B,)
        next_value = values[:, t]
        advantages.append(next_advantage)
    advantages = torch.stack(advantages[::-1], dim=1) * mask              # (B, R)
    return advantages, (advantages + values) * mask


@full_precision
def gae(values, rewards, mask, gamma, lam):
    """The same GAE as `gae_naive`, without a Python loop: A_t = sum_{k>=t} (gamma*lam)^(k-t) delta_k.

    The sum is one matmul with the upper-triangular (R, R) discount matrix D[t, k] = (gamma*lam)^(k-t)
    for k >= t; it costs O(B R^2), which is nothing next to a forward pass for R in the hundreds.
    """
    values, rewards = values * mask, rewards * mask                       # (B, R)
    next_values = F.pad(values[:, 1:], (0, 1))                            # (B, R) V_{t+1}, 0 after the end
    deltas = rewards + gamma * next_values - values                       # (B, R)
    R = values.shape[1]
    steps = torch.arange(R, device=values.device)                         # (R,)
    lag = steps.unsqueeze(0) - steps.unsqueeze(1)                         # (R, R) k - t
    discount = torch.where(lag >= 0, (gamma * lam) ** lag.clamp(min=0).to(values.dtype),
                           torch.zeros((), dtype=values.dtype, device=values.device))  # (R, R)
    advantages = (deltas @ discount.T) * mask                             # (B, R)
    return advantages, (advantages + values) * mask


# ----------------------------------------------------------------------------- losses

@full_precision
def policy_loss(logprobs, old_logprobs, advantages, mask, clip_ratio):
    """Clipped surrogate: mean_m[ max(-A * rho, -A * clip(rho, 1-eps, 1+eps)) ], rho = pi / pi_old.

    Returns (loss, stats). stats are detached 0-d tensors: `ratio_mean` (should stay near 1),
    `clipfrac` (share of valid tokens where the clipped term wins), and `approx_kl`
    = mean_m[0.5 * (log pi - log pi_old)^2], the quadratic estimate of KL(pi_old || pi).
    """
    log_ratio = torch.where(mask.bool(), logprobs - old_logprobs, torch.zeros_like(logprobs))  # (B, R)
    ratio = log_ratio.exp()                                               # (B, R)
    unclipped = -advantages * ratio                                       # (B, R)
    clipped = -advantages * ratio.clamp(1.0 - clip_ratio, 1.0 + clip_ratio)  # (B, R)
    loss = masked_mean(torch.maximum(unclipped, clipped), mask)           # ()
    with torch.no_grad():
        stats = {
            "ratio_mean": masked_mean(ratio, mask),
            "clipfrac": masked_mean((clipped > unclipped).float(), mask),
            "approx_kl": masked_mean(0.5 * log_ratio ** 2, mask),
        }
    return loss, stats


@full_precision
def value_loss(values, old_values, returns, mask, clip_value):
    """0.5 * mean_m[ max((V - R)^2, (V_old + clip(V - V_old, -c, c) - R)^2) ].

    Returns (loss, stats) with `vf_clipfrac`: share of valid tokens where the clipped term is the
    larger one, i.e. V moved more than c away from V_old and that move lowered the error.
    """
    clipped_values = old_values + (values - old_values).clamp(-clip_value, clip_value)  # (B, R)
    unclipped_loss = (values - returns) ** 2                              # (B, R)
    clipped_loss = (clipped_values - returns) ** 2                        # (B, R)
    loss = 0.5 * masked_mean(torch.maximum(unclipped_loss, clipped_loss), mask)  # ()
    with torch.no_grad():
        stats = {"vf_clipfrac": masked_mean((clipped_loss > unclipped_loss).float(), mask)}
    return loss, stats


@full_precision
def explained_variance(values, returns, mask):
    """1 - Var_m[returns - values] / Var_m[returns], over the valid tokens (CleanRL's metric).

    How much of the returns' spread the critic's values account for: 1 when every value equals its
    return, 0 when the values are no better than one constant guess, below 0 when they are worse.
    NaN when the returns do not vary (nothing to explain). Returns a 0-d tensor.
    """
    var_returns = masked_var(returns, mask, unbiased=False)               # ()
    var_error = masked_var(returns - values, mask, unbiased=False)        # ()
    return torch.where(var_returns > 0, 1.0 - var_error / var_returns, torch.full_like(var_returns, float("nan")))


# ----------------------------------------------------------------------------- KL controller

@full_precision
def update_kl_coef(kl_coef, kl, target, n_steps, horizon):
    """Adaptive beta (Ziegler et al. 2019): beta * (1 + clip(KL/target - 1, -0.2, 0.2) * n/horizon).

    `kl` is the measured KL per response (summed over its tokens), `n_steps` how many samples
    the measurement covers. KL above target raises beta, below lowers it, by at most 20% per `horizon` samples.
    """
    error = min(max(float(kl) / target - 1.0, -0.2), 0.2)
    return kl_coef * (1.0 + error * n_steps / horizon)
