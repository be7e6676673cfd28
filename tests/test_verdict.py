"""The verdicts of rlhf/verdict.py on made-up histories whose answer is known."""
import math

import pytest

from rlhf import verdict

PLURAL = "Human: What is the plural of baby? Assistant:"


def history(score, gold=None, kl=None):
    """Per-iteration dicts from per-iteration lists."""
    rows = [{"iteration": i + 1, "score": s} for i, s in enumerate(score)]
    for key, values in (("gold", gold), ("kl", kl)):
        for row, value in zip(rows, values or []):
            row[key] = value
    return rows


def test_window_change_by_hand():
    # first window 1, 3 (mean 2, var 2), last window 6, 8 (mean 7, var 2): change 5, se sqrt(2/2 + 2/2)
    c = verdict.window_change(history([1, 3, 0, 0, 6, 8]), "score", k=2)
    assert (c["first"], c["last"], c["change"]) == (2, 7, 5)
    assert c["se"] == pytest.approx(math.sqrt(2)) and c["trend"] == "rose"
    assert verdict.window_change(history([1, 3, 5, 1, 2, 4]), "score", k=2)["trend"] == "flat"   # 3 ± 2.8
    assert verdict.window_change(history([8, 6, 1, 3]), "score", k=2)["trend"] == "fell"
    assert verdict.window_change(history([0, 9]), "score", k=1)["trend"] == "unknown"      # no spread


def test_window_size():
    assert [verdict.window_size(n) for n in (1, 3, 8, 12, 60, 500)] == [1, 1, 2, 3, 10, 10]


def test_score_rising_alone_is_called_reward_hacking():
    run = history(score=[0, 0.1, 0, 0.1, 1, 1.1, 1, 1.1], gold=[0.6, 0.61, 0.6, 0.61, 0.6, 0.61, 0.61, 0.6])
    text = verdict.training_verdict(run, k=4)
    assert "The proxy outran gold" in text and "reward hacking" in text and "no sign" not in text


def test_score_and_gold_rising_together_is_no_sign_of_hacking():
    run = history(score=[0, 0.1, 0, 0.1, 1, 1.1, 1, 1.1], gold=[0.5, 0.51, 0.5, 0.51, 0.7, 0.71, 0.7, 0.71])
    text = verdict.training_verdict(run, k=4)
    assert "Gold rose by +0.200 while the reward model's score rose by +1.000" in text
    assert "no sign of reward hacking" in text


def test_no_rise_no_gold_and_too_short_runs():
    assert "did not rise" in verdict.training_verdict(history([1, 1.1, 1, 1.1]), k=2)
    assert "no gold judge" in verdict.training_verdict(history([0, 0.1, 1, 1.1]), k=2)
    assert "cannot be told from noise" in verdict.training_verdict(history([0, 1, 2], [0.5] * 3), k=1)


def test_samples_rated_high_with_a_flaw_are_pointed_out():
    samples = [{"iteration": 1, "prompt": PLURAL, "response": "The plural of baby is babies.", "score": 1.5, "gold": 1.0},
               {"iteration": 2, "prompt": PLURAL, "response": "The plural of baby is feet.", "score": 2.2, "gold": 0.6},
               {"iteration": 3, "prompt": PLURAL, "response": "The plural of baby is men.", "score": -1.0, "gold": 0.6}]
    assert [s["iteration"] for s in verdict.suspicious_samples(samples)] == [2]
    text = verdict.training_verdict(history([0, 0.1, 1, 1.1], [0.5, 0.5, 0.5, 0.5]), samples, k=2)
    assert "1 of 3 logged samples" in text and "gold 0.60 (wrong)" in text and "'The plural of baby is feet.'" in text


def test_window_table_lists_present_keys_only():
    rows = verdict.window_table(history([0, 0.1, 1, 1.1], kl=[0, 0, 0.5, 0.6]), ["score", "gold", "kl"], k=2)
    assert [r["number"] for r in rows] == ["score", "kl"]
    assert rows[1]["first 2"] == 0 and rows[1]["last 2"] == pytest.approx(0.55)


def test_share_trend_against_the_binomial_noise():
    # 0.20 -> 0.10 of 400 answers each: se = sqrt(.16/400 + .09/400) = 0.025, change -0.10 = -4 se
    assert verdict.share_trend(0.20, 0.10, 400, 400) == "fell"
    assert verdict.share_trend(0.121, 0.106, 404, 404) == "about the same"   # -0.015, se 0.022
    assert verdict.share_trend(0.06, 0.44, 400, 400) == "rose"


def test_interval_readings():
    assert [verdict.interval_reading(*i) for i in ((0.1, 0.2), (-0.2, -0.01), (-0.1, 0.1))] == \
        ["higher", "lower", "no clear difference"]
    line = verdict.difference_line("RLHF minus SFT", 0.144, 0.12, 0.17, 202)
    assert line.startswith("RLHF minus SFT: +0.144 on average over 202 prompts, 95% interval [+0.120, +0.170]")
    assert "above 0" in line


def test_sft_verdict_sees_the_gap_between_greedy_and_sampled_answers():
    epochs = [{"eval_loss": 1.2}, {"eval_loss": 0.4}]
    text = verdict.sft_verdict(epochs, [1.0, 1.0, 0.9, 1.0], [0.3, 0.6, 0.3, 0.4], [["rude"], ["wrong"], ["rude", "ramble"], ["rude"]], 1.0)
    assert "eval loss 1.200 after epoch 1 -> 0.400 after epoch 2" in text
    assert "mean gold 0.975" in text and "mean gold 0.400, 100% with a flaw (most common: rude 75%" in text
    assert "Sampling shows what greedy decoding hides" in text
    same = verdict.sft_verdict(epochs[:1], [1.0, 0.6, 1.0], [1.0, 0.6, 1.0], [[], ["wrong"], []], 0.7)
    assert "after its one epoch" in same and "about as good as greedy" in same


def test_reward_verdict_against_chance():
    before = {"eval_accuracy": 0.41, "eval_margin": -0.18}
    assert "far more often than chance" in verdict.reward_verdict(before, {"eval_accuracy": 0.94, "eval_margin": 7.0}, 400)
    # 0.54 on 100 pairs: 0.5 + 2 * 0.05 = 0.6 not reached
    assert "No better than chance" in verdict.reward_verdict(before, {"eval_accuracy": 0.54, "eval_margin": 0.1}, 100)
