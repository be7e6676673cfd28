"""The verdicts of rlhf/verdict.py on made-up histories whose answer is known."""
import math
import re

import pytest

from rlhf import scoreboard, verdict

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
    text = verdict.training_verdict(run, k=4).en
    assert "The proxy outran gold" in text and "reward hacking" in text and "no sign" not in text


def test_score_and_gold_rising_together_is_no_sign_of_hacking():
    run = history(score=[0, 0.1, 0, 0.1, 1, 1.1, 1, 1.1], gold=[0.5, 0.51, 0.5, 0.51, 0.7, 0.71, 0.7, 0.71])
    text = verdict.training_verdict(run, k=4).en
    assert "Gold rose by +0.200 while the reward model's score rose by +1.000" in text
    assert "no sign of reward hacking" in text


def test_no_rise_no_gold_and_too_short_runs():
    assert "did not rise" in verdict.training_verdict(history([1, 1.1, 1, 1.1]), k=2).en
    assert "no gold judge" in verdict.training_verdict(history([0, 0.1, 1, 1.1]), k=2).en
    assert "cannot be told from noise" in verdict.training_verdict(history([0, 1, 2], [0.5] * 3), k=1).en


def test_samples_rated_high_with_a_flaw_are_pointed_out():
    samples = [{"iteration": 1, "prompt": PLURAL, "response": "The plural of baby is babies.", "score": 1.5, "gold": 1.0},
               {"iteration": 2, "prompt": PLURAL, "response": "The plural of baby is feet.", "score": 2.2, "gold": 0.6},
               {"iteration": 3, "prompt": PLURAL, "response": "The plural of baby is men.", "score": -1.0, "gold": 0.6}]
    assert [s["iteration"] for s in verdict.suspicious_samples(samples)] == [2]
    text = verdict.training_verdict(history([0, 0.1, 1, 1.1], [0.5, 0.5, 0.5, 0.5]), samples, k=2).en
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
    line = verdict.difference_line("RLHF minus SFT", 0.144, 0.12, 0.17, 202).en
    assert line.startswith("RLHF minus SFT: +0.144 on average over 202 prompts, 95% interval [+0.120, +0.170]")
    assert "above 0" in line


def test_sft_verdict_sees_the_gap_between_greedy_and_sampled_answers():
    epochs = [{"eval_loss": 1.2}, {"eval_loss": 0.4}]
    text = verdict.sft_verdict(epochs, [1.0, 1.0, 0.9, 1.0], [0.3, 0.6, 0.3, 0.4], [["rude"], ["wrong"], ["rude", "ramble"], ["rude"]], 1.0).en
    assert "eval loss 1.200 after epoch 1 -> 0.400 after epoch 2" in text
    assert "mean gold 0.975" in text and "mean gold 0.400, 100% with a flaw (most common: rude 75%" in text
    assert "Sampling shows what greedy decoding hides" in text
    same = verdict.sft_verdict(epochs[:1], [1.0, 0.6, 1.0], [1.0, 0.6, 1.0], [[], ["wrong"], []], 0.7).en
    assert "after its one epoch" in same and "about as good as greedy" in same


def test_reward_verdict_against_chance():
    before = {"eval_accuracy": 0.41, "eval_margin": -0.18}
    assert "far more often than chance" in verdict.reward_verdict(before, {"eval_accuracy": 0.94, "eval_margin": 7.0}, 400).en
    # 0.54 on 100 pairs: 0.5 + 2 * 0.05 = 0.6 not reached
    assert "No better than chance" in verdict.reward_verdict(before, {"eval_accuracy": 0.54, "eval_margin": 0.1}, 100).en


# ----------------------------------------------------------------------------- the Chinese verdicts

NUMBER = re.compile(r"[+-]?\d+(?:\.\d+)?%?")
HACKING = history(score=[0, 0.1, 0, 0.1, 1, 1.1, 1, 1.1], gold=[0.6, 0.61, 0.6, 0.61, 0.6, 0.61, 0.61, 0.6])
HONEST = history(score=[0, 0.1, 0, 0.1, 1, 1.1, 1, 1.1], gold=[0.5, 0.51, 0.5, 0.51, 0.7, 0.71, 0.7, 0.71])
FLAT = history([1, 1.1, 1, 1.1])
SAMPLES = [{"iteration": 2, "prompt": PLURAL, "response": "The plural of baby is feet.", "score": 2.2, "gold": 0.6}]
DECISIONS = [  # (a made-up run, the English and the Chinese of the decision it must get)
    (HACKING, "The proxy outran gold", "策略在糊弄奖励模型"),
    (HONEST, "no sign of reward hacking", "看不出 reward hacking 的迹象"),
    (FLAT, "did not rise", "没有超出噪声地上升"),
    (history([0, 0.1, 1, 1.1]), "no gold judge", "没有 gold judge"),
    (history([0, 1, 2], [0.5] * 3), "cannot be told from noise", "无法与噪声区分")]


def numbers(text: str) -> list[str]:
    """The numbers of a sentence in order, the quoted sample answer left out."""
    return NUMBER.findall(re.sub(r"'[^']*'", "", text))


def assert_same_numbers(text):
    assert len(text.en.splitlines()) == len(text.zh.splitlines())
    for en, zh in zip(text.en.splitlines(), text.zh.splitlines()):
        assert sorted(numbers(en)) == sorted(numbers(zh)), (en, zh)  # word order may differ


@pytest.mark.parametrize("run, english, chinese", DECISIONS)
def test_the_chinese_verdict_makes_the_same_decision(run, english, chinese):
    text = verdict.training_verdict(run, k=1 if len(run) == 3 else 2)
    found = [(en, zh) for _, en, zh in DECISIONS if en in text.en or zh in text.zh]
    assert found == [(english, chinese)] and english in text.en and chinese in text.zh  # that one, in both


@pytest.mark.parametrize("run", [HACKING, HONEST, FLAT])
def test_the_chinese_verdict_carries_the_same_numbers(run):
    text = verdict.training_verdict(run, SAMPLES, k=4 if len(run) == 8 else 2)
    assert_same_numbers(text)
    assert "2.20" in text.zh and "'The plural of baby is feet.'" in text.zh and "事实错误" in text.zh
    assert str(text) == f"{text.en}\n\n{text.zh}"  # what a notebook prints: the English, then the Chinese


def test_the_chinese_sft_reward_and_interval_verdicts_follow_the_english():
    epochs = [{"eval_loss": 1.2}, {"eval_loss": 0.4}]
    sft = verdict.sft_verdict(epochs, [1.0, 1.0, 0.9, 1.0], [0.3, 0.6, 0.3, 0.4], [["rude"], ["wrong"], ["rude"], ["rude"]], 1.0)
    assert "采样暴露了贪心解码掩盖的问题" in sft.zh and "粗鲁 75%、事实错误 25%" in sft.zh
    chance = verdict.reward_verdict({"eval_accuracy": 0.41, "eval_margin": -0.18}, {"eval_accuracy": 0.54, "eval_margin": 0.1}, 100)
    assert "与随机猜测无异" in chance.zh and "远多于随机猜测" not in chance.zh
    line = verdict.difference_line(verdict.Text("RLHF minus SFT", "RLHF 减 SFT"), -0.05, -0.08, -0.01, 40)
    assert line.zh.startswith("RLHF 减 SFT：") and "整个区间都在 0 以下" in line.zh and "below 0" in line.en
    for text in (sft, chance, line):
        assert_same_numbers(text)


def test_every_sentence_has_both_languages_with_the_same_fields():
    fields = lambda template: sorted(re.findall(r"{(\w*)", template))
    for table in (verdict.SENTENCES, scoreboard.SENTENCES):
        for key, (en, zh) in table.items():
            assert fields(en) == fields(zh), key


def board_rows(gold, rm):
    """Scoreboard rows (as rlhf.scoreboard.board makes them) of one seed with these mean gold and RM scores."""
    flaws = {"rude": 0.1, "wrong": 0.1, "clean": 0.8}
    return {name: {"gold": (gold[name], math.nan), "rm_score": (rm[name], math.nan),
                   "flaws": {**flaws, "wrong": 0.4} if name == "grpo" else flaws} for name in gold}


def test_the_scoreboard_verdict_in_both_languages():
    rows = board_rows(gold={"sft": 0.6, "ppo": 0.7, "grpo": 0.5}, rm={"sft": 0.0, "ppo": 0.5, "grpo": 1.5})
    lines = scoreboard.verdict(rows)
    assert lines[0].en == "best on gold: ppo (0.700, one seed), +0.100 over SFT, +0.200 over the next, grpo"
    assert lines[0].zh == "gold 最高：ppo（0.700，只有一个随机种子），相对 SFT +0.100，相对第二名 grpo +0.200"
    assert "the lead is within the noise" in lines[1].en and "领先在噪声之内" in lines[1].zh
    assert lines[2].en.startswith("grpo hacks the reward model: score +1.50 over SFT, gold -0.100")
    assert lines[2].zh.startswith("grpo 在钻奖励模型的空子") and "事实错误（10% -> 40%）" in lines[2].zh
    assert len(lines) == 3  # ppo raised gold: no hacking line for it in either language
    for line in lines:
        assert_same_numbers(line)


def test_the_curve_verdict_calls_a_turn_down_in_both_languages():
    curve = lambda drop, rise: {"gold_peak": {"gold": 0.7, "kl": 1.5, "iteration": 12},
                                "gold_drop_after_peak": drop, "rm_rise_after_peak": rise}
    turned = scoreboard.curve_verdict("ppo", curve(0.1, 0.3))
    assert "over-optimisation" in turned.en and "过度优化" in turned.zh and "第 12 次迭代" in turned.zh
    kept = scoreboard.curve_verdict("ppo", curve(0.01, 0.3))
    assert "no clear turn-down" in kept.en and "没有明显的掉头" in kept.zh and "过度优化" not in kept.zh
    assert_same_numbers(turned)
    assert_same_numbers(kept)


def test_printed_headers_carry_the_chinese_name_and_keep_the_key():
    assert verdict.labelled("gold") == "gold (真实质量)"
    assert verdict.labelled("sampled kl_from_reference") == "sampled kl_from_reference (采样回答的相对参考模型的 KL 散度)"
    assert verdict.labelled("iteration") == "iteration"  # nothing to add
    row = verdict.window_table(HONEST, ["gold"], k=4)[0]
    assert [verdict.labelled(c) for c in row] == ["number", "first 4 (前 4 次)", "last 4 (后 4 次)", "change (变化)",
                                                  "± 2 SE (2 倍标准误差)", "trend (趋势)"]
