"""Notebook 4's statistics (rlhf/evaluate.py): the paired gold difference, its bootstrap interval,
and the answers the reward model scores above a right one, on cases with a known answer."""
import math

import pytest

from rlhf.evaluate import bootstrap_interval, per_prompt_differences, wrong_above_clean
from rlhf.tasks import gold_score

BANANA = "Human: What colour is a banana? Assistant:"
KNIFE = "Human: What is the plural of knife? Assistant:"


def record(policy, response, rm_score=0.0, sample=0, prompt=BANANA, mode="sampled"):
    return {"prompt": prompt, "policy": policy, "mode": mode, "sample": sample, "response": response,
            "ended": True, "gold": gold_score(prompt, response), "rm_score": rm_score}


def test_bootstrap_of_a_coin_matches_the_normal_interval():
    """200 zeros and 200 ones: mean 0.5, standard error 0.5 / sqrt(400) = 0.025, so the 95%
    interval is 0.5 -+ 1.96 * 0.025 = [0.451, 0.549] (to the bootstrap's resampling noise)."""
    mean, low, high = bootstrap_interval([0.0] * 200 + [1.0] * 200, confidence=0.95, seed=0)
    assert mean == 0.5
    assert low == pytest.approx(0.5 - 1.96 * 0.025, abs=0.004)
    assert high == pytest.approx(0.5 + 1.96 * 0.025, abs=0.004)


def test_bootstrap_is_seeded_and_collapses_on_constant_values():
    values = [0.3, -0.1, 0.2, 0.0, 0.5]
    assert bootstrap_interval(values, seed=7) == bootstrap_interval(values, seed=7)
    assert bootstrap_interval([0.25] * 9) == (0.25, 0.25, 0.25)
    _, low, high = bootstrap_interval(values, confidence=0.5)
    _, wide_low, wide_high = bootstrap_interval(values, confidence=0.99)
    assert wide_low < low < high < wide_high
    with pytest.raises(ValueError, match="at least one value"):
        bootstrap_interval([])


def test_differences_are_paired_by_prompt_and_averaged_over_samples():
    records = [record("sft", "A banana is red.", sample=0), record("sft", "A banana is yellow.", sample=1),
               record("rlhf", "A banana is yellow.", sample=0), record("rlhf", "A banana is yellow.", sample=1),
               record("sft", "The plural of knife is knives.", prompt=KNIFE),
               record("rlhf", "The plural of knife is knives.", prompt=KNIFE),
               record("rlhf", "A banana is red.", mode="greedy")]            # another mode: left out
    wrong = gold_score(BANANA, "A banana is red.")
    assert per_prompt_differences(records) == pytest.approx([1.0 - (wrong + 1.0) / 2, 0.0])
    assert not math.isclose(wrong, 1.0)


def test_wrong_answers_the_reward_model_prefers_to_a_right_one():
    records = [record("sft", "The plural of knife is knives.", 3.54, prompt=KNIFE),
               record("rlhf", "The plural of knife is children.", 4.95, prompt=KNIFE),   # wrong, above
               record("sft", "A banana is yellow.", 2.0), record("rlhf", "A banana is red.", 1.0)]  # wrong, below
    found, both = wrong_above_clean(records)
    assert both == 2
    assert [(w["response"], c["response"]) for w, c in found] == [
        ("The plural of knife is children.", "The plural of knife is knives.")]
