"""The DPO, RLOO and GRPO math of rlhf/beyond.py against hand-computed numbers and naive loops
written with Python floats, one element at a time, and against the gradients each loss must have."""
import math
import statistics

import pytest
import torch

from rlhf import beyond


def prefix_mask(lengths, R):
    """Rows of 1.0 on the first `length` positions and 0.0 after."""
    return (torch.arange(R).unsqueeze(0) < torch.tensor(lengths).unsqueeze(1)).float()  # (B, R)


def softplus(x):
    """log(1 + e^x) = -log sigmoid(-x), for Python floats."""
    return math.log1p(math.exp(x))


# ----------------------------------------------------------------------------- DPO

def test_sequence_logprobs_sum_the_valid_tokens_only():
    g = torch.Generator().manual_seed(0)
    logprobs = -torch.rand(3, 5, generator=g)
    mask = prefix_mask([5, 2, 0], 5)
    garbage = torch.where(mask.bool(), logprobs, torch.full_like(logprobs, -1e6))
    naive = [sum(logprobs[b, t].item() for t in range(5) if mask[b, t]) for b in range(3)]
    torch.testing.assert_close(beyond.sequence_logprobs(garbage, mask), torch.tensor(naive))
    assert beyond.sequence_logprobs(garbage, mask)[2].item() == 0.0


def dpo_naive(pc, pr, rc, rr, beta, label_smoothing=0.0):
    """The DPO loss pair by pair, from the formula, with Python floats."""
    losses, correct = [], 0
    for i in range(len(pc)):
        z = beta * ((pc[i] - rc[i]) - (pr[i] - rr[i]))
        losses.append((1 - label_smoothing) * softplus(-z) + label_smoothing * softplus(z))
        correct += beta * (pc[i] - rc[i]) > beta * (pr[i] - rr[i])
    return sum(losses) / len(losses), correct / len(pc)


def test_dpo_loss_by_hand():
    policy_chosen, ref_chosen = torch.tensor([-1.0, -4.0]), torch.tensor([-2.0, -3.0])
    policy_rejected, ref_rejected = torch.tensor([-3.0, -1.0]), torch.tensor([-2.5, -2.0])
    loss, stats = beyond.dpo_loss(policy_chosen, policy_rejected, ref_chosen, ref_rejected, beta=0.1)
    # r_w = 0.1 * [1, -1] = [0.1, -0.1]; r_l = 0.1 * [-0.5, 1] = [-0.05, 0.1]; margins [0.15, -0.2]
    torch.testing.assert_close(stats["chosen_rewards"], torch.tensor([0.1, -0.1]))
    torch.testing.assert_close(stats["rejected_rewards"], torch.tensor([-0.05, 0.1]))
    assert loss.item() == pytest.approx((softplus(-0.15) + softplus(0.2)) / 2, abs=1e-6)
    assert stats["accuracy"].item() == 0.5
    assert stats["margin"].item() == pytest.approx(-0.025, abs=1e-6)


def test_dpo_loss_matches_the_naive_loop():
    g = torch.Generator().manual_seed(1)
    pc, pr, rc, rr = (-torch.rand(16, generator=g) * 20 for _ in range(4))
    for beta, smoothing in [(0.1, 0.0), (0.5, 0.0), (0.1, 0.2)]:
        loss, stats = beyond.dpo_loss(pc, pr, rc, rr, beta, label_smoothing=smoothing)
        naive_loss, naive_accuracy = dpo_naive(pc.tolist(), pr.tolist(), rc.tolist(), rr.tolist(), beta, smoothing)
        assert loss.item() == pytest.approx(naive_loss, abs=1e-5)
        assert stats["accuracy"].item() == pytest.approx(naive_accuracy)


def test_dpo_at_the_reference_is_log_2_and_ties_count_as_wrong():
    logps = torch.tensor([-3.0, -7.5, -1.2])
    loss, stats = beyond.dpo_loss(logps, logps.flip(0), logps, logps.flip(0), beta=0.1)
    assert loss.item() == pytest.approx(math.log(2))
    assert stats["accuracy"].item() == 0.0 and (stats["chosen_rewards"] == 0).all()


def test_dpo_label_smoothing_by_hand():
    loss, _ = beyond.dpo_loss(torch.tensor([-1.0]), torch.tensor([-3.0]), torch.tensor([-2.0]),
                              torch.tensor([-2.0]), beta=0.5, label_smoothing=0.1)
    # z = 0.5 * (1 - (-1)) = 1: 0.9 * softplus(-1) + 0.1 * softplus(1)
    assert loss.item() == pytest.approx(0.9 * softplus(-1.0) + 0.1 * softplus(1.0), abs=1e-6)


def test_dpo_gradient_raises_chosen_and_lowers_rejected():
    policy_chosen = torch.tensor([-1.0, -4.0], requires_grad=True)
    policy_rejected = torch.tensor([-3.0, -1.0], requires_grad=True)
    ref_chosen, ref_rejected = torch.tensor([-2.0, -3.0]), torch.tensor([-2.5, -2.0])
    loss, _ = beyond.dpo_loss(policy_chosen, policy_rejected, ref_chosen, ref_rejected, beta=0.1)
    loss.backward()
    assert (policy_chosen.grad < 0).all() and (policy_rejected.grad > 0).all()  # descent: chosen up, rejected down
    # dL/dlog pi(y_w) = -beta * sigmoid(-z) / B, with z the margin; the opposite for y_l
    expected = -0.1 * torch.sigmoid(-torch.tensor([0.15, -0.2])) / 2
    torch.testing.assert_close(policy_chosen.grad, expected)
    torch.testing.assert_close(policy_rejected.grad, -expected)


# ----------------------------------------------------------------------------- RLOO

def rloo_naive(scores):
    """Leave-one-out advantages with two loops: A_i = r_i - (1/(k-1)) sum_{j != i} r_j."""
    out = []
    for group in scores.tolist():
        k = len(group)
        out.append([group[i] - sum(group[j] for j in range(k) if j != i) / (k - 1) for i in range(k)])
    return torch.tensor(out)


def test_rloo_advantages_by_hand():
    advantages = beyond.rloo_advantages(torch.tensor([[1.0, 2.0, 6.0], [3.0, 3.0, 3.0]]))
    # 1 - (2+6)/2 = -3, 2 - (1+6)/2 = -1.5, 6 - (1+2)/2 = 4.5; equal scores: 0
    torch.testing.assert_close(advantages, torch.tensor([[-3.0, -1.5, 4.5], [0.0, 0.0, 0.0]]))
    torch.testing.assert_close(beyond.rloo_advantages(torch.tensor([[0.5, 2.0]])), torch.tensor([[-1.5, 1.5]]))


@pytest.mark.parametrize("k", [2, 3, 5])
def test_rloo_advantages_match_the_naive_loop(k):
    scores = torch.randn(6, k, generator=torch.Generator().manual_seed(k))
    advantages = beyond.rloo_advantages(scores)
    torch.testing.assert_close(advantages, rloo_naive(scores), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(advantages, k / (k - 1) * (scores - scores.mean(1, keepdim=True)))
    torch.testing.assert_close(advantages.sum(1), torch.zeros(6), atol=1e-5, rtol=0)


def test_rloo_baseline_leaves_the_sample_itself_out():
    scores = torch.randn(2, 4, generator=torch.Generator().manual_seed(2))
    jacobian = torch.autograd.functional.jacobian(lambda s: beyond.rloo_advantages(s), scores)  # (2, 4, 2, 4)
    own = jacobian[torch.arange(2)[:, None], torch.arange(4), torch.arange(2)[:, None], torch.arange(4)]
    torch.testing.assert_close(own, torch.ones(2, 4))                     # dA_i/dr_i = 1: no r_i in its baseline
    torch.testing.assert_close(jacobian[0, 0, 0, 1], torch.tensor(-1 / 3))
    assert (jacobian[0, :, 1] == 0).all()                                 # groups do not mix


@pytest.mark.parametrize("shape", [(4, 1), (4,), (2, 3, 2)])
def test_rloo_and_grpo_need_groups_of_two_or_more(shape):
    for fn in (beyond.rloo_advantages, beyond.grpo_advantages):
        with pytest.raises(ValueError):
            fn(torch.zeros(shape))


def test_rloo_loss_by_hand_and_its_gradient():
    seq_logprobs = torch.tensor([[-2.0, -1.0, -4.0]], requires_grad=True)
    scores = torch.tensor([[1.0, 2.0, 6.0]], requires_grad=True)
    advantages = beyond.rloo_advantages(scores)                           # [-3, -1.5, 4.5]
    loss = beyond.rloo_loss(seq_logprobs, advantages)
    assert loss.item() == pytest.approx(-(6.0 + 1.5 - 18.0) / 3)
    loss.backward()
    torch.testing.assert_close(seq_logprobs.grad, torch.tensor([[3.0, 1.5, -4.5]]) / 3)  # -A / N
    assert scores.grad is None                                            # the advantage is a constant


def test_rloo_loss_matches_the_naive_loop():
    g = torch.Generator().manual_seed(3)
    seq_logprobs, scores = -torch.rand(4, 3, generator=g) * 10, torch.randn(4, 3, generator=g)
    advantages = beyond.rloo_advantages(scores)
    naive = -sum(a * lp for a, lp in zip(advantages.flatten().tolist(), seq_logprobs.flatten().tolist())) / 12
    assert beyond.rloo_loss(seq_logprobs, advantages).item() == pytest.approx(naive, abs=1e-5)
    assert beyond.rloo_loss(seq_logprobs.flatten(), advantages.flatten()).item() == pytest.approx(naive, abs=1e-5)


def test_kl_penalised_scores():
    logprobs = torch.tensor([[-1.0, -2.0, -3.0, 7.0], [-1.0, -1.0, -1.0, -1.0], [5.0, 5.0, 5.0, 5.0]])
    ref_logprobs = torch.tensor([[-1.5, -2.0, -2.0, 0.0], [-2.0, -2.0, -2.0, -2.0], [0.0, 0.0, 0.0, 0.0]])
    mask = prefix_mask([3, 4, 0], 4)
    scores = torch.tensor([10.0, 20.0, 30.0])
    # k1 sums over valid tokens: 0.5 + 0 - 1 = -0.5, 4 * 1 = 4, nothing
    penalised = beyond.kl_penalised_scores(scores, logprobs, ref_logprobs, mask, kl_coef=0.1)
    torch.testing.assert_close(penalised, torch.tensor([10.05, 19.6, 30.0]))
    assert (beyond.kl_penalised_scores(scores, logprobs, logprobs, mask, 0.1) == scores).all()
    k3 = [math.exp(-0.5) - 1 + 0.5 + math.exp(1.0) - 1 - 1.0, 4 * (math.exp(-1.0) - 1 + 1.0), 0.0]
    k3_penalised = beyond.kl_penalised_scores(scores, logprobs, ref_logprobs, mask, 0.1, estimator="k3")
    torch.testing.assert_close(k3_penalised, scores - 0.1 * torch.tensor(k3))


# ----------------------------------------------------------------------------- GRPO advantages

def grpo_advantages_naive(scores, eps):
    """Per group: (r - mean) / (sample standard deviation + eps), via the statistics module."""
    out = []
    for group in scores.tolist():
        mean, std = statistics.fmean(group), statistics.stdev(group)
        out.append([0.0 if std == 0 else (r - mean) / (std + eps) for r in group])
    return torch.tensor(out)


def test_grpo_advantages_by_hand():
    advantages = beyond.grpo_advantages(torch.tensor([[1.0, 2.0, 6.0], [0.0, 1.0, 1.0]]), eps=1e-4)
    # group 0: mean 3, unbiased std sqrt((4 + 1 + 9) / 2) = sqrt(7)
    # group 1: mean 2/3, unbiased std sqrt((4/9 + 1/9 + 1/9) / 2) = sqrt(1/3)
    expected = torch.tensor([[-2.0, -1.0, 3.0], [-2 / 3, 1 / 3, 1 / 3]])
    expected = expected / (torch.tensor([[math.sqrt(7)], [math.sqrt(1 / 3)]]) + 1e-4)
    torch.testing.assert_close(advantages, expected)
    pair = beyond.grpo_advantages(torch.tensor([[0.0, 1.0]]), eps=0.0)
    torch.testing.assert_close(pair, torch.tensor([[-1.0, 1.0]]) / math.sqrt(2))  # +-0.5 / sqrt(0.5)


def test_grpo_advantages_of_a_group_with_equal_scores_are_zero():
    scores = torch.tensor([[0.1, 0.1, 0.1], [0.7, 0.7, 0.7], [1.0, 2.0, 4.0]])
    advantages = beyond.grpo_advantages(scores)
    assert (advantages[:2] == 0).all() and (advantages[2] != 0).all()
    ties = torch.full((1, 7), 0.1)                                        # float32 mean of seven 0.1s is off by 7e-9
    assert (ties - ties.mean(1, keepdim=True)).abs().max() > 0
    assert (beyond.grpo_advantages(ties) == 0).all()                      # not 7e-9 / eps = 7e-5


@pytest.mark.parametrize("k", [2, 4, 7])
def test_grpo_advantages_match_the_naive_loop(k):
    g = torch.Generator().manual_seed(10 + k)
    scores = torch.randint(0, 3, (8, k), generator=g).float()             # 0/1/2 rewards: some groups tie
    scores[0] = 1.0
    advantages = beyond.grpo_advantages(scores, eps=1e-4)
    torch.testing.assert_close(advantages, grpo_advantages_naive(scores, 1e-4), atol=1e-5, rtol=1e-5)


# ----------------------------------------------------------------------------- GRPO loss

def grpo_loss_naive(logprobs, old_logprobs, ref_logprobs, advantages, mask, clip_ratio, kl_coef):
    """GRPO's objective token by token with Python floats: per-sequence token means, then their mean."""
    per_sequence = []
    for i in range(logprobs.shape[0]):
        terms = []
        for t in range(logprobs.shape[1]):
            if not mask[i, t]:
                continue
            ratio = math.exp(logprobs[i, t].item() - old_logprobs[i, t].item())
            clipped = min(max(ratio, 1 - clip_ratio), 1 + clip_ratio)
            a = advantages[i].item()
            surrogate = max(-a * ratio, -a * clipped)
            d = ref_logprobs[i, t].item() - logprobs[i, t].item()
            terms.append(surrogate + kl_coef * (math.exp(d) - d - 1))
        per_sequence.append(sum(terms) / len(terms) if terms else 0.0)
    return sum(per_sequence) / len(per_sequence)


def hand_batch():
    """Two sequences: one token with A = 1 and ratio 1.5; three tokens with A = -1, ratios 1, 0.5, 1.1."""
    old_logprobs = torch.full((2, 4), -2.0)
    ratios = torch.tensor([[1.5, 1.0, 1.0, 1.0], [1.0, 0.5, 1.1, 3.0]])   # the 3.0 and row 0's tail are pads
    logprobs = old_logprobs + ratios.log()
    ref_logprobs = logprobs + torch.tensor([[0.0, 0.0, 0.0, 0.0], [1.0, 0.0, 0.0, 5.0]])  # ref - logp
    return logprobs, old_logprobs, ref_logprobs, torch.tensor([1.0, -1.0]), prefix_mask([1, 3], 4)


def test_grpo_loss_by_hand():
    logprobs, old_logprobs, ref_logprobs, advantages, mask = hand_batch()
    loss, stats = beyond.grpo_loss(logprobs, old_logprobs, ref_logprobs, advantages, mask, 0.2, kl_coef=0.1)
    # sequence 0: max(-1.5, -1.2) = -1.2. sequence 1: max(r, clip(r)) = [1.0, 0.8, 1.1], mean 2.9 / 3
    # k3 = e^d - d - 1: sequence 0 has 0; sequence 1 has e - 2 on one token of three
    policy = (-1.2 + 2.9 / 3) / 2
    kl = (0.0 + (math.e - 2) / 3) / 2
    assert stats["policy_loss"].item() == pytest.approx(policy, abs=1e-6)
    assert stats["kl"].item() == pytest.approx(kl, abs=1e-6)
    assert loss.item() == pytest.approx(policy + 0.1 * kl, abs=1e-6)
    assert stats["clipfrac"].item() == pytest.approx(2 / 4)               # the 1.5 with A > 0, the 0.5 with A < 0
    # a token-level mean would give (-1.2 + 2.9) / 4 = 0.425 for the clipped term instead
    assert abs(stats["policy_loss"].item() - 0.425) > 0.1


def test_grpo_loss_matches_the_naive_loop():
    g = torch.Generator().manual_seed(20)
    N, R = 6, 7
    old_logprobs = -torch.rand(N, R, generator=g) * 3
    logprobs = old_logprobs + 0.4 * torch.randn(N, R, generator=g)       # ratios well past 1 +- 0.2
    ref_logprobs = old_logprobs + 0.5 * torch.randn(N, R, generator=g)
    advantages = beyond.grpo_advantages(torch.randn(2, 3, generator=g)).reshape(-1)
    mask = prefix_mask([7, 1, 4, 0, 2, 5], R)                             # unequal lengths and an empty row
    for clip_ratio, kl_coef in [(0.2, 0.04), (0.1, 0.0), (10.0, 1.0)]:
        loss, stats = beyond.grpo_loss(logprobs, old_logprobs, ref_logprobs, advantages, mask, clip_ratio, kl_coef)
        naive = grpo_loss_naive(logprobs, old_logprobs, ref_logprobs, advantages, mask, clip_ratio, kl_coef)
        assert loss.item() == pytest.approx(naive, abs=1e-5)
    assert 0 < stats["kl"].item() and 0 < beyond.grpo_loss(logprobs, old_logprobs, ref_logprobs, advantages,
                                                           mask, 0.2, 0.0)[1]["clipfrac"].item() < 1


def test_grpo_loss_ignores_pads():
    logprobs, old_logprobs, ref_logprobs, advantages, mask = hand_batch()
    pads = ~mask.bool()
    results = []
    for old, ref in [(old_logprobs, ref_logprobs), (old_logprobs.masked_fill(pads, -200.0), ref_logprobs.masked_fill(pads, 80.0))]:
        leaf = logprobs.clone().requires_grad_()
        loss, stats = beyond.grpo_loss(leaf, old, ref, advantages, mask, 0.2, 0.1)
        loss.backward()
        results.append((loss.item(), leaf.grad))
    (loss, grad), (junk_loss, junk_grad) = results
    assert junk_loss == pytest.approx(loss, abs=1e-6)
    torch.testing.assert_close(junk_grad, grad)
    assert (grad[pads] == 0).all()


def test_grpo_clipped_tokens_have_zero_gradient():
    logprobs, old_logprobs, _, advantages, mask = hand_batch()
    logprobs.requires_grad_()
    loss, _ = beyond.grpo_loss(logprobs, old_logprobs, logprobs.detach(), advantages, mask, 0.2, kl_coef=0.0)
    loss.backward()
    grad = logprobs.grad
    assert grad[0, 0] == 0                                                # ratio 1.5 > 1 + eps with A > 0
    assert grad[1, 1] == 0                                                # ratio 0.5 < 1 - eps with A < 0
    # unclipped tokens: d(-A rho)/dlogp = -A rho, times 1/|o_i| and 1/N
    torch.testing.assert_close(grad[1, [0, 2]], torch.tensor([1.0, 1.1]) / 3 / 2)


def test_grpo_gradient_sign_follows_the_advantage_and_kl_pulls_to_the_reference():
    old_logprobs = torch.full((2, 2), -1.0)
    logprobs = old_logprobs.clone().requires_grad_()
    loss, _ = beyond.grpo_loss(logprobs, old_logprobs, logprobs.detach(), torch.tensor([2.0, -1.0]),
                               torch.ones(2, 2), 0.2, kl_coef=0.5)
    loss.backward()
    torch.testing.assert_close(logprobs.grad, torch.tensor([[-0.5, -0.5], [0.25, 0.25]]))  # -A / (|o| N), k3' = 0 at pi = ref
    logprobs = torch.tensor([[-1.0, -3.0]], requires_grad=True)
    ref_logprobs = torch.tensor([[-2.0, -2.0]])                           # logp above ref, then below it
    loss, stats = beyond.grpo_loss(logprobs, logprobs.detach(), ref_logprobs, torch.zeros(1), torch.ones(1, 2), 0.2, 1.0)
    loss.backward()
    # d k3 / d logp = 1 - exp(ref - logp): descent lowers a logprob above the reference and raises one below it
    torch.testing.assert_close(logprobs.grad, torch.tensor([[1 - math.exp(-1.0), 1 - math.exp(1.0)]]) / 2)
    assert stats["kl"].item() == pytest.approx((math.exp(-1) + 1 - 1 + math.exp(1) - 1 - 1) / 2, abs=1e-6)


def test_grpo_weights_make_a_token_mean_a_per_sequence_mean():
    mask = prefix_mask([1, 3, 0, 4], 4)
    weights = beyond.per_sequence_weights(mask)
    torch.testing.assert_close(weights, torch.tensor([8 / 4, 8 / 12, 0.0, 8 / 16]))
    x = torch.randn(4, 4, generator=torch.Generator().manual_seed(30))
    token_mean = (weights[:, None] * x * mask).sum() / mask.sum()
    per_sequence = sum((x[i, :n].mean().item() if n else 0.0) for i, n in enumerate([1, 3, 0, 4])) / 4
    assert token_mean.item() == pytest.approx(per_sequence, abs=1e-6)
