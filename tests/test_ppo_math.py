"""The PPO math of rlhf/ppo.py against hand-computed values, naive loops and the checklist
in shared/guides/ppo-details.md (the numbers in brackets are its rows)."""
import math

import pytest
import torch

from rlhf import ppo, reward


def prefix_mask(lengths, R):
    """Rows of 1.0 on the first `length` positions and 0.0 after."""
    return (torch.arange(R).unsqueeze(0) < torch.tensor(lengths).unsqueeze(1)).float()  # (B, R)


# ----------------------------------------------------------------------------- logprobs, entropy

def test_logprobs_match_log_softmax_gather():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 5, 7, generator=g)                            # (B, R, V)
    tokens = torch.randint(0, 7, (2, 5), generator=g)                     # (B, R)
    expected = torch.log_softmax(logits, -1).gather(-1, tokens.unsqueeze(-1)).squeeze(-1)
    torch.testing.assert_close(ppo.logprobs_from_logits(logits, tokens), expected)
    # one entry by hand
    b, t = 1, 3
    by_hand = logits[b, t, tokens[b, t]] - math.log(logits[b, t].exp().sum())
    assert ppo.logprobs_from_logits(logits, tokens)[b, t].item() == pytest.approx(by_hand.item(), abs=1e-5)


def test_temperature_divides_logits():                                    # [5]
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(2, 4, 9, generator=g)
    tokens = torch.randint(0, 9, (2, 4), generator=g)
    hot = ppo.logprobs_from_logits(logits, tokens, temperature=0.7)
    torch.testing.assert_close(hot, ppo.logprobs_from_logits(logits / 0.7, tokens))
    assert not torch.allclose(hot, ppo.logprobs_from_logits(logits, tokens))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_low_precision_logits_give_float32_logprobs(dtype):               # [25]
    g = torch.Generator().manual_seed(2)
    logits = torch.randn(4, 16, 1000, generator=g)
    tokens = torch.randint(0, 1000, (4, 16), generator=g)
    low = ppo.logprobs_from_logits(logits.to(dtype), tokens)
    assert low.dtype == torch.float32
    assert (low - ppo.logprobs_from_logits(logits, tokens)).abs().max() < 1e-2


def test_entropy():
    uniform = torch.zeros(2, 3, 8)
    torch.testing.assert_close(ppo.entropy_from_logits(uniform), torch.full((2, 3), math.log(8)))
    logits = torch.tensor([[[2.0, 0.0, -1.0]]])
    p = torch.softmax(logits / 2.0, -1)
    by_hand = -(p * p.log()).sum(-1)
    torch.testing.assert_close(ppo.entropy_from_logits(logits, temperature=2.0), by_hand)
    assert ppo.entropy_from_logits(logits.bfloat16()).dtype == torch.float32


# ----------------------------------------------------------------------------- masked statistics

def test_masked_sum_and_mean():
    x = torch.tensor([[1.0, 2.0, 3.0, 100.0], [4.0, 5.0, -7.0, 9.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0, 0.0], [1.0, 1.0, 0.0, 0.0]])
    assert ppo.masked_sum(x, mask).item() == 15.0
    assert ppo.masked_mean(x, mask).item() == 3.0
    torch.testing.assert_close(ppo.masked_sum(x, mask, dim=1), torch.tensor([6.0, 9.0]))
    torch.testing.assert_close(ppo.masked_mean(x, mask, dim=1), torch.tensor([2.0, 4.5]))
    assert ppo.masked_mean(x, torch.zeros_like(mask)).item() == 0.0      # empty batch: 0, no NaN
    nan_pads = x.masked_fill(mask == 0, float("nan"))
    assert ppo.masked_mean(nan_pads, mask).item() == 3.0


@pytest.mark.parametrize("unbiased", [True, False])
def test_masked_var_matches_torch_var_of_valid_values(unbiased):
    g = torch.Generator().manual_seed(3)
    x = torch.randn(4, 6, generator=g)
    mask = prefix_mask([6, 3, 0, 2], 6)
    expected = x[mask.bool()].var(unbiased=unbiased)
    torch.testing.assert_close(ppo.masked_var(x, mask, unbiased=unbiased), expected)


def test_masked_whiten_uses_valid_tokens_only():                          # [16, 17]
    g = torch.Generator().manual_seed(4)
    x = torch.randn(3, 7, generator=g) * 3 + 2
    mask = prefix_mask([7, 4, 2], 7)
    white = ppo.masked_whiten(x, mask)
    valid = white[mask.bool()]
    assert valid.mean().abs() < 1e-6 and (valid.std() - 1).abs() < 1e-5
    assert (white[~mask.bool()] == 0).all()
    garbage = torch.where(mask.bool(), x, torch.full_like(x, 1e6))
    torch.testing.assert_close(ppo.masked_whiten(garbage, mask), white)


def test_masked_whiten_without_shift_keeps_the_mean():                    # [16]
    g = torch.Generator().manual_seed(5)
    x = torch.randn(3, 5, generator=g) + 4.0
    mask = prefix_mask([5, 3, 1], 5)
    white = ppo.masked_whiten(x, mask, shift_mean=False)
    torch.testing.assert_close(ppo.masked_mean(white, mask), ppo.masked_mean(x, mask))
    assert (ppo.masked_var(white, mask) - 1).abs() < 1e-5


# ----------------------------------------------------------------------------- response mask

def test_response_mask_truncates_after_first_eos():                       # [8]
    a, b, c, d, EOS, PAD = 5, 6, 7, 8, 2, 1
    responses = torch.tensor([[a, b, EOS, c, d],
                              [a, b, c, d, a],                            # never ends
                              [EOS, a, EOS, b, c],                        # only the first EOS counts
                              [a, b, c, d, EOS]])
    mask, truncated, has_eos = ppo.response_mask(responses, EOS, PAD)
    assert mask.tolist() == [[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0], [1, 1, 1, 1, 1]]
    assert truncated.tolist() == [[a, b, EOS, PAD, PAD], [a, b, c, d, a],
                                  [EOS, PAD, PAD, PAD, PAD], [a, b, c, d, EOS]]
    assert has_eos.tolist() == [True, False, True, True]
    assert mask.dtype == torch.float32


def test_response_mask_never_sees_an_eos_used_as_bos():                   # [2]
    EOS, PAD = 2, 1                                                       # OPT: BOS == EOS == 2
    query_responses = torch.tensor([[EOS, 9, 9, 5, 6, 7]])                # prompt of P = 3, then the response
    mask, _, has_eos = ppo.response_mask(query_responses[:, 3:], EOS, PAD)
    assert mask.tolist() == [[1, 1, 1]] and has_eos.tolist() == [False]


# ----------------------------------------------------------------------------- KL and rewards

def test_kl_is_zero_when_policy_equals_reference_and_at_pads():           # [12]
    g = torch.Generator().manual_seed(6)
    logprobs = -torch.rand(3, 5, generator=g) * 4
    ref_logprobs = -torch.rand(3, 5, generator=g) * 4
    mask = prefix_mask([5, 2, 0], 5)
    for estimator in ("k1", "k3"):
        assert (ppo.kl_per_token(logprobs, logprobs, mask, estimator) == 0).all()
        kl = ppo.kl_per_token(logprobs, ref_logprobs, mask, estimator)
        assert (kl[~mask.bool()] == 0).all() and (kl[mask.bool()] != 0).all()
    with pytest.raises(ValueError):
        ppo.kl_per_token(logprobs, ref_logprobs, mask, "k2")


def test_kl_estimators_by_hand():
    logprobs, ref_logprobs = torch.tensor([[-1.0, -2.0]]), torch.tensor([[-1.5, -1.0]])
    mask = torch.ones(1, 2)
    torch.testing.assert_close(ppo.kl_per_token(logprobs, ref_logprobs, mask), torch.tensor([[0.5, -1.0]]))
    k3 = [math.exp(-0.5) - 1 + 0.5, math.exp(1.0) - 1 - 1.0]
    torch.testing.assert_close(ppo.kl_per_token(logprobs, ref_logprobs, mask, "k3"), torch.tensor([k3]))


def test_k1_and_k3_agree_on_samples_from_the_policy():                    # [13]
    g = torch.Generator().manual_seed(7)
    policy_logits = torch.randn(10, generator=g)
    ref_logits = policy_logits + 0.3 * torch.randn(10, generator=g)       # a nearby reference
    policy, ref = torch.log_softmax(policy_logits, -1), torch.log_softmax(ref_logits, -1)
    exact_kl = (policy.exp() * (policy - ref)).sum()
    tokens = torch.multinomial(policy.exp(), 200_000, replacement=True, generator=g).view(1, -1)
    logprobs, ref_logprobs = policy[tokens], ref[tokens]                  # (1, N)
    mask = torch.ones_like(logprobs)
    k1 = ppo.kl_per_token(logprobs, ref_logprobs, mask, "k1")
    k3 = ppo.kl_per_token(logprobs, ref_logprobs, mask, "k3")
    assert (k3 >= 0).all() and (k1 < 0).any()
    assert abs(k1.mean() - exact_kl) < 2e-3 and abs(k3.mean() - exact_kl) < 2e-3
    assert abs(k1.mean() - k3.mean()) < 2e-3


def test_compute_rewards_puts_the_score_on_the_last_valid_token():        # [11, 12]
    logprobs = torch.tensor([[-1.0, -2.0, -3.0, 7.0], [-1.0, -1.0, -1.0, -1.0], [5.0, 5.0, 5.0, 5.0]])
    ref_logprobs = torch.tensor([[-1.5, -2.0, -2.0, 0.0], [-2.0, -2.0, -2.0, -2.0], [0.0, 0.0, 0.0, 0.0]])
    mask = prefix_mask([3, 4, 0], 4)                                      # the last row is empty
    scores = torch.tensor([10.0, 20.0, 30.0])
    rewards, non_score = ppo.compute_rewards(scores, logprobs, ref_logprobs, mask, kl_coef=0.1)
    torch.testing.assert_close(non_score, torch.tensor([[-0.05, 0.0, 0.1, 0.0],
                                                        [-0.1, -0.1, -0.1, -0.1],
                                                        [0.0, 0.0, 0.0, 0.0]]))
    torch.testing.assert_close(rewards, torch.tensor([[-0.05, 0.0, 10.1, 0.0],
                                                      [-0.1, -0.1, -0.1, 19.9],
                                                      [0.0, 0.0, 0.0, 0.0]]))


def test_rewards_are_only_the_score_when_policy_equals_reference():       # [12]
    logprobs = -torch.rand(2, 5)
    mask = prefix_mask([2, 5], 5)
    rewards, non_score = ppo.compute_rewards(torch.tensor([1.5, -2.0]), logprobs, logprobs, mask, 0.2)
    assert (non_score == 0).all()
    assert rewards.tolist() == [[0, 1.5, 0, 0, 0], [0, 0, 0, 0, -2.0]]


def test_missing_eos_penalty():                                           # [9]
    scores = torch.tensor([1.0, 0.0, 5.0, -5.0])
    penalised = ppo.apply_missing_eos_penalty(scores, torch.tensor([True, False, True, False]), 1.0)
    assert penalised.tolist() == [1.0, -1.0, 5.0, -6.0]


# ----------------------------------------------------------------------------- GAE

@pytest.mark.parametrize("gae_fn", [ppo.gae_naive, ppo.gae])
def test_gae_three_tokens_by_hand(gae_fn):                                # [18]
    values = torch.tensor([[1.0, 2.0, 3.0, 9.0]])                         # the 9 is a pad
    rewards = torch.tensor([[0.5, 0.0, 1.0, 9.0]])
    mask = prefix_mask([3], 4)
    # gamma=0.9, lam=0.5: delta = [0.5+1.8-1, 0+2.7-2, 1+0-3] = [1.3, 0.7, -2]; gamma*lam = 0.45
    # A_2 = -2, A_1 = 0.7 - 0.9 = -0.2, A_0 = 1.3 - 0.09 = 1.21
    advantages, returns = gae_fn(values, rewards, mask, gamma=0.9, lam=0.5)
    torch.testing.assert_close(advantages, torch.tensor([[1.21, -0.2, -2.0, 0.0]]))
    torch.testing.assert_close(returns, torch.tensor([[2.21, 1.8, 1.0, 0.0]]))


@pytest.mark.parametrize("gamma,lam", [(1.0, 0.95), (0.9, 0.5), (1.0, 1.0), (0.99, 0.0)])
def test_fast_gae_matches_the_naive_loop(gamma, lam):                     # [18]
    g = torch.Generator().manual_seed(8)
    B, R = 16, 12
    values, rewards = torch.randn(B, R, generator=g), torch.randn(B, R, generator=g)
    lengths = torch.randint(0, R + 1, (B,), generator=g).tolist()
    mask = prefix_mask(lengths[:-2] + [0, R], R)                          # an empty row and a full one
    fast, fast_returns = ppo.gae(values, rewards, mask, gamma, lam)
    slow, slow_returns = ppo.gae_naive(values, rewards, mask, gamma, lam)
    torch.testing.assert_close(fast, slow, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(fast_returns, slow_returns, atol=1e-5, rtol=1e-5)
    assert (fast[-2] == 0).all() and (fast[~mask.bool()] == 0).all()
    torch.testing.assert_close(fast_returns[mask.bool()], (fast + values)[mask.bool()])


@pytest.mark.parametrize("gae_fn", [ppo.gae_naive, ppo.gae])
def test_gae_with_lambda_one_is_monte_carlo_return_minus_value(gae_fn):   # [18]
    g = torch.Generator().manual_seed(9)
    values, rewards = torch.randn(3, 6, generator=g), torch.randn(3, 6, generator=g)
    mask = prefix_mask([6, 4, 1], 6)
    advantages, returns = gae_fn(values, rewards, mask, gamma=1.0, lam=1.0)
    reward_to_go = (rewards * mask).flip(1).cumsum(1).flip(1)             # sum_{k>=t} r_k
    torch.testing.assert_close(advantages, (reward_to_go - values) * mask)
    torch.testing.assert_close(returns, reward_to_go * mask)


@pytest.mark.parametrize("gae_fn", [ppo.gae_naive, ppo.gae])
def test_advantage_at_the_last_token_is_the_score_without_kl_or_values(gae_fn):  # [11]
    logprobs = -torch.rand(3, 5)
    mask = prefix_mask([3, 5, 1], 5)
    scores = torch.tensor([0.7, -1.2, 2.5])
    rewards, _ = ppo.compute_rewards(scores, logprobs, logprobs, mask, kl_coef=0.1)
    advantages, _ = gae_fn(torch.zeros(3, 5), rewards, mask, gamma=1.0, lam=0.95)
    torch.testing.assert_close(advantages[torch.arange(3), torch.tensor([2, 4, 0])], scores)
    torch.testing.assert_close(advantages[0, :3], 0.7 * 0.95 ** torch.tensor([2.0, 1.0, 0.0]))


# ----------------------------------------------------------------------------- policy and value losses

def test_policy_loss_before_any_update():                                 # [6]
    g = torch.Generator().manual_seed(10)
    logprobs, advantages = -torch.rand(3, 5, generator=g), torch.randn(3, 5, generator=g)
    mask = prefix_mask([5, 3, 1], 5)
    loss, stats = ppo.policy_loss(logprobs, logprobs.clone(), advantages, mask, clip_ratio=0.2)
    assert stats["ratio_mean"].item() == 1.0
    assert stats["clipfrac"].item() == 0.0 and stats["approx_kl"].item() == 0.0
    torch.testing.assert_close(loss, -ppo.masked_mean(advantages, mask))


def test_policy_loss_clipping_gradients_and_values():                     # [19]
    eps = 0.2
    ratios = torch.tensor([[1.5, 1.5, 0.5, 0.5, 1.1]])
    advantages = torch.tensor([[1.0, -1.0, 1.0, -1.0, 2.0]])
    old_logprobs = torch.full((1, 5), -2.0)
    logprobs = (old_logprobs + ratios.log()).requires_grad_()
    mask = torch.ones(1, 5)
    loss, stats = ppo.policy_loss(logprobs, old_logprobs, advantages, mask, eps)
    # per token: max(-A r, -A clip(r)) = [-1.2, 1.5, -0.5, 0.8, -2.2]
    assert loss.item() == pytest.approx((-1.2 + 1.5 - 0.5 + 0.8 - 2.2) / 5, abs=1e-6)
    assert stats["clipfrac"].item() == pytest.approx(2 / 5)
    assert stats["approx_kl"].item() == pytest.approx((0.5 * ratios.log() ** 2).mean().item(), abs=1e-6)
    loss.backward()
    grad = logprobs.grad[0]
    assert grad[0] == 0 and grad[3] == 0                                  # clipped: r>1+eps, A>0 and r<1-eps, A<0
    torch.testing.assert_close(grad[[1, 2, 4]], torch.tensor([1.5, -0.5, -2.2]) / 5)  # d(-A r)/dlogpi = -A r


def test_policy_loss_ignores_pads():                                      # [8, 19]
    g = torch.Generator().manual_seed(11)
    logprobs = -torch.rand(2, 6, generator=g)
    old_logprobs, advantages = -torch.rand(2, 6, generator=g), torch.randn(2, 6, generator=g)
    mask = prefix_mask([4, 2], 6)
    pads = ~mask.bool()
    junk_old = old_logprobs.masked_fill(pads, -200.0)                     # exp(200) overflows float32
    junk_adv = advantages.masked_fill(pads, 1e4)
    results = []
    for old, adv in [(old_logprobs, advantages), (junk_old, junk_adv)]:
        leaf = logprobs.clone().requires_grad_()
        loss, stats = ppo.policy_loss(leaf, old, adv, mask, 0.2)
        loss.backward()
        results.append((loss.item(), {k: v.item() for k, v in stats.items()}, leaf.grad))
    (loss, stats, grad), (junk_loss, junk_stats, junk_grad) = results
    assert (grad[pads] == 0).all()
    assert junk_loss == pytest.approx(loss, abs=1e-6) and junk_stats == pytest.approx(stats, abs=1e-6)
    torch.testing.assert_close(junk_grad, grad)                           # finite, and 0 at the pads


def test_value_loss_clipped_branch():                                     # [20]
    old_values = torch.tensor([[0.0, 0.0, 0.0, 0.0, 0.0]])
    returns = torch.tensor([[1.0, 1.0, 1.0, 1.0, 7.0]])
    values = torch.tensor([[1.0, -0.5, 0.1, 0.5, 3.0]], requires_grad=True)  # the last one is a pad
    mask = prefix_mask([4], 5)
    loss, stats = ppo.value_loss(values, old_values, returns, mask, clip_value=0.2)
    # token 0 moved past V_old+0.2 towards R: the clipped error (0.2-1)^2 = 0.64 > 0 wins.
    # token 3 too: 0.64 > 0.25. token 1 moved away from R: the unclipped 2.25 > 1.44 wins.
    assert stats["vf_clipfrac"].item() == pytest.approx(2 / 4)
    assert loss.item() == pytest.approx(0.5 * (0.64 + 2.25 + 0.81 + 0.64) / 4, abs=1e-6)
    loss.backward()
    grad = values.grad[0]
    assert grad[0] == 0 and grad[3] == 0 and grad[4] == 0                 # clipped tokens and the pad
    torch.testing.assert_close(grad[[1, 2]], torch.tensor([-1.5, -0.9]) / 4)  # 0.5 * 2 (V - R) / n


def test_value_loss_without_movement_is_half_mse():
    values, returns = torch.tensor([[0.5, 2.0, 1.0]]), torch.tensor([[1.5, 0.0, 3.0]])
    mask = prefix_mask([2], 3)
    loss, stats = ppo.value_loss(values, values.clone(), returns, mask, clip_value=0.2)
    assert loss.item() == pytest.approx(0.5 * (1.0 + 4.0) / 2) and stats["vf_clipfrac"].item() == 0


# ----------------------------------------------------------------------------- reward model, KL controller

def test_explained_variance_by_hand():
    """Valid returns 1, 2 | 3 (variance 2/3), values 1, 1 | 3: errors 0, 1 | 0 (variance 2/9), so
    1 - (2/9) / (2/3) = 2/3. The pads hold junk that must not count."""
    mask = prefix_mask([2, 1], 3)                                         # (2, 3)
    returns = torch.tensor([[1.0, 2.0, 100.0], [3.0, -50.0, 7.0]])
    values = torch.tensor([[1.0, 1.0, -9.0], [3.0, 40.0, 0.0]])
    assert ppo.explained_variance(values, returns, mask).item() == pytest.approx(2 / 3)
    assert ppo.explained_variance(returns, returns, mask).item() == pytest.approx(1.0)   # a perfect critic
    constant = torch.full_like(returns, 2.0)                              # the mean of the valid returns
    assert ppo.explained_variance(constant, returns, mask).item() == pytest.approx(0.0, abs=1e-6)
    assert math.isnan(ppo.explained_variance(values, torch.ones_like(returns), mask).item())  # nothing to explain


def test_pairwise_loss():                                                 # [27]
    pairwise_loss = reward.pairwise_loss
    same = torch.tensor([0.3, -1.0, 2.0])
    loss, accuracy, margin = pairwise_loss(same, same.clone())
    assert accuracy.item() == 0.0 and margin.item() == 0.0
    assert loss.item() == pytest.approx(math.log(2))
    loss, accuracy, margin = pairwise_loss(torch.tensor([2.0, 0.0]), torch.tensor([0.0, 1.0]))
    by_hand = (math.log1p(math.exp(-2.0)) + math.log1p(math.exp(1.0))) / 2
    assert loss.item() == pytest.approx(by_hand) and accuracy.item() == 0.5 and margin.item() == 0.5
    loss, _, _ = pairwise_loss(torch.tensor([-1000.0]), torch.tensor([0.0]))
    assert loss.item() == pytest.approx(1000.0)                           # stable, not inf


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_pairwise_loss_is_fp32_under_autocast(dtype):                     # [25]
    chosen = torch.randn(8, generator=torch.Generator().manual_seed(0)) * 4
    expected = reward.pairwise_loss(chosen, chosen.flip(0))
    with torch.autocast("cpu", dtype=dtype):
        got = reward.pairwise_loss(chosen, chosen.flip(0))
    for e, g in zip(expected, got):
        assert g.dtype == torch.float32
        torch.testing.assert_close(g, e, atol=1e-6, rtol=0)


def test_adaptive_kl_controller():                                        # [14]
    beta, target, n, horizon = 0.15, 6.0, 64, 10000
    assert ppo.update_kl_coef(beta, 2 * target, target, n, horizon) == pytest.approx(beta * (1 + 0.2 * n / horizon), rel=1e-12)
    assert ppo.update_kl_coef(beta, target, target, n, horizon) == beta
    assert ppo.update_kl_coef(beta, 0.0, target, n, horizon) == pytest.approx(beta * (1 - 0.2 * n / horizon), rel=1e-12)
    assert ppo.update_kl_coef(beta, 1.1 * target, target, n, horizon) == pytest.approx(beta * (1 + 0.1 * n / horizon), rel=1e-9)
    assert ppo.update_kl_coef(beta, torch.tensor(2 * target), target, n, horizon) > beta
