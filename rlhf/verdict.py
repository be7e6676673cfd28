"""Verdicts on a run, in words, computed from the run's own numbers.

A training curve is noisy from one iteration to the next (each point is the mean over one batch
of sampled answers), so a verdict never reads the first and the last iteration: it compares the
mean of the first k iterations with the mean of the last k, and calls a change real only when it
is larger than twice its standard error (from the spread of the iterations inside each window).
Then it applies the rule of notebooks 3 and 4: if the reward model's score rises and the gold
score does not, the policy is fooling the reward model. Pure functions of the logged history
(a list of per-iteration dicts) and samples; the notebooks print what they return.

Every verdict comes in English and in Chinese (the notebooks' readers read both): a verdict
decides once which sentences apply and with which numbers, and `say` renders each from the
SENTENCES pair with the same fields, so the two languages cannot disagree.
"""
from __future__ import annotations

import math
import re
from typing import NamedTuple

from .tasks import FLAW_NAMES, gold_flaws

NOISE_SE = 2.0  # a change counts when |change| > NOISE_SE standard errors


# ----------------------------------------------------------------------------- two languages

class Text(NamedTuple):
    """A sentence (or a phrase) in English and in Chinese; printed, the English then the Chinese."""
    en: str
    zh: str

    def __str__(self) -> str:
        return f"{self.en}\n\n{self.zh}"


def render(pair: tuple[str, str], **fields) -> Text:
    """Both templates of `pair` filled with the same fields; a field that is a Text gives each
    language its own phrase, any other value is the same in both."""
    pick = lambda lang: {name: getattr(v, lang) if isinstance(v, Text) else v for name, v in fields.items()}
    return Text(pair[0].format(**pick("en")), pair[1].format(**pick("zh")))


def join(parts, bullet: str = "") -> Text:
    """Lines in both languages, one under the other, each after `bullet`."""
    return Text("\n".join(bullet + p.en for p in parts), "\n".join(bullet + p.zh for p in parts))


# Words a verdict puts into its sentences: trends, readings, what was measured, the judge's flaws.
WORDS_ZH = {"rose": "上升", "fell": "下降", "flat": "持平", "unknown": "无法判断", "about the same": "基本不变",
            "none": "无",
            "reward-model score": "奖励模型分数", "gold score": "gold 分数", "KL from the reference": "相对参考模型的 KL 散度",
            "critic's explained variance": "critic 的解释方差",
            "rude": "粗鲁", "rambling": "啰嗦", "repeated": "重复", "cut off": "话没说完", "evasive": "回避问题",
            "wrong": "事实错误", "no EOS": "没有 EOS"}


def word(english: str) -> Text:
    return Text(english, WORDS_ZH[english])


def listing(items, separator: Text = Text(", ", "、")) -> Text:
    """Phrases joined in each language, or 'none' / '无'."""
    items = list(items)
    return Text(separator.en.join(t.en for t in items), separator.zh.join(t.zh for t in items)) if items else word("none")


# The Chinese name beside a metric's key in a printed table's header ("gold (真实质量)").
METRIC_ZH = {"score": "奖励模型分数", "rm_score": "奖励模型分数", "gold": "真实质量", "kl": "KL 散度",
             "kl_from_reference": "相对参考模型的 KL 散度", "kl_k3": "KL 散度 k3 估计", "approx_kl": "新旧策略间的 KL 散度",
             "response_length": "回答长度", "length": "回答长度", "eos_rate": "以 EOS 结束的比例", "ended": "以 EOS 结束的比例",
             "entropy": "熵", "clipfrac": "被裁剪的比例", "explained_variance": "解释方差", "ratio_mean": "比率均值",
             "policy_loss": "策略损失", "value_loss": "价值损失", "rlhf_reward": "RLHF 奖励", "loss": "损失",
             "tokens_used": "已生成的 token 数", "generated_tokens": "生成的 token 数", "accuracy": "准确率", "margin": "分差",
             "chosen_reward": "chosen 的隐式奖励", "rejected_reward": "rejected 的隐式奖励",
             "win_rate_gold": "gold 胜率", "win_rate_rm": "奖励模型胜率", "change": "变化", "trend": "趋势",
             f"± {NOISE_SE:g} SE": f"{NOISE_SE:g} 倍标准误差", "gold peak": "gold 峰值", "at KL": "峰值处的 KL 散度",
             "at iteration": "峰值处的迭代", "gold drop after peak": "峰值后 gold 的下降", "RM rise after peak": "峰值后奖励模型分数的上升",
             **{flaw: WORDS_ZH[flaw] for flaw in FLAW_NAMES.values()}, "clean": "无缺陷", "none (clean)": "无缺陷"}
MODE_ZH = {"sampled": "采样回答的", "greedy": "贪心回答的"}


def labelled(name: str) -> str:
    """A printed table's header or row name with its Chinese name beside it: 'gold (真实质量)',
    'first 4 (前 4 次)', 'sampled gold (采样回答的真实质量)'; names without one unchanged. For
    display only (DataFrame.rename(columns=labelled)): the keys the code reads stay English."""
    window = re.fullmatch(r"(first|last) (\d+)", name)
    mode = re.fullmatch(r"(sampled|greedy) (\w+)( \(RLHF vs SFT\))?", name)
    if window:
        zh = f"{'前' if window[1] == 'first' else '后'} {window[2]} 次"
    elif mode and mode[2] in METRIC_ZH:
        zh = MODE_ZH[mode[1]] + METRIC_ZH[mode[2]] + ("，RLHF 对 SFT" if mode[3] else "")
    else:
        zh = METRIC_ZH.get(name)
    return f"{name} ({zh})" if zh else name


# ----------------------------------------------------------------------------- the sentences

SENTENCES = {  # key: (English, Chinese), filled with the same fields by render
    "windows": ("Windows: iterations 1-{k} against {start}-{n} (means over {k} iteration(s) each; a change counts "
                "when it exceeds {noise:g} standard errors).",
                "窗口：第 1-{k} 次迭代对比第 {start}-{n} 次（每个窗口取 {k} 次迭代的均值；变化超过 {noise:g} 倍标准误差才算数）。"),
    "change": ("  {label}: {first:.3f} -> {last:.3f} ({change:+.3f}, {trend})",
               "  {label}：{first:.3f} -> {last:.3f}（{change:+.3f}，{trend}）"),
    "too short": ("With one iteration per window a change cannot be told from noise: too few iterations to judge "
                  "(8 or more give windows of two).",
                  "每个窗口只有一次迭代，变化无法与噪声区分：迭代太少，无从判断（8 次或以上的迭代才有两次迭代的窗口）。"),
    "no rise": ("The reward model's score did not rise beyond its noise ({change:+.3f}, twice its standard error "
                "{two_se:.3f}, trend {trend}): no clear gain in what PPO optimises, so there is nothing to judge yet.",
                "奖励模型分数没有超出噪声地上升（{change:+.3f}，两倍标准误差 {two_se:.3f}，趋势：{trend}）：PPO "
                "优化的目标没有明显提升，所以还没有什么可判断的。"),
    "no gold": ("The score rose, but this data has no gold judge: the score alone cannot tell learning from reward "
                "hacking; read the samples.",
                "分数上升了，但这份数据没有 gold judge：单凭分数分不清是真的学会了还是 reward hacking（奖励作弊）；请看样例。"),
    "gold rose": ("Gold rose by {gold:+.3f} while the reward model's score rose by {score:+.3f}: by the rule, no sign "
                  "of reward hacking in the means. The reward model was a useful proxy on this run (which does not "
                  "mean it is never fooled: see the samples below).",
                  "gold 分数上升了 {gold:+.3f}，奖励模型分数上升了 {score:+.3f}：按这条规则，从均值上看不出 reward hacking "
                  "的迹象。这次训练中奖励模型是一个有用的代理指标（但这不等于它从不被糊弄：见下面的样例）。"),
    "hacking": ("The proxy outran gold: the reward model's score rose by {score:+.3f} while gold changed by "
                "{gold:+.3f} (trend {trend}). By the rule, the policy is fooling the reward model (reward hacking).",
                "代理分数跑到了 gold 前面：奖励模型分数上升了 {score:+.3f}，而 gold 分数只变化了 {gold:+.3f}（趋势：{trend}）。"
                "按这条规则，策略在糊弄奖励模型（reward hacking，奖励作弊）。"),
    "flagged": ("{flagged} of {total} logged samples score above an average SFT answer although the gold judge finds "
                "a flaw: the reward model is fooled there.",
                "记录的 {total} 条样例中有 {flagged} 条，奖励模型的打分高于一条普通的 SFT 回答，gold judge "
                "却找到了缺陷：奖励模型在这些地方被糊弄了。"),
    "none flagged": ("None of the {total} logged samples scores above an average SFT answer with a flaw the gold judge "
                     "finds.",
                     "记录的 {total} 条样例中，没有一条是奖励模型打分高于普通 SFT 回答、gold judge 又找到缺陷的。"),
    "sample": ("iteration {iteration}: score {score:.2f}, gold {gold:.2f} ({flaws}) | {prompt} -> {response!r}",
               "第 {iteration} 次迭代：分数 {score:.2f}，gold {gold:.2f}（{flaws}）| {prompt} -> {response!r}"),
    "difference": ("{label}: {mean:+.3f} on average over {n} prompts, {confidence:.0%} interval [{low:+.3f}, "
                   "{high:+.3f}]; {reading}.",
                   "{label}：在 {n} 个提示词上平均 {mean:+.3f}，{confidence:.0%} 区间 [{low:+.3f}, {high:+.3f}]；{reading}。"),
    "higher": ("the whole interval is above 0: higher beyond the noise of which prompts and samples were drawn",
               "整个区间都在 0 以上：高出的部分超出了抽到哪些提示词和样本带来的噪声"),
    "lower": ("the whole interval is below 0: lower beyond the noise of which prompts and samples were drawn",
              "整个区间都在 0 以下：低出的部分超出了抽到哪些提示词和样本带来的噪声"),
    "no clear difference": ("0 is inside the interval: no difference these prompts can show",
                            "0 在区间之内：这些提示词显示不出差异"),
    "sft loss": ("eval loss {first:.3f} after epoch 1 -> {last:.3f} after epoch {epochs}",
                 "验证损失：第 1 个 epoch 后 {first:.3f} -> 第 {epochs} 个 epoch 后 {last:.3f}"),
    "sft one epoch": ("eval loss {last:.3f} after its one epoch", "唯一一个 epoch 之后的验证损失：{last:.3f}"),
    "flaw share": ("{flaw} {share:.0%}", "{flaw} {share:.0%}"),
    "sft answers": ("greedy answers to {n} eval prompts: mean gold {greedy:.3f}; sampled at temperature "
                    "{temperature:g}: mean gold {sampled:.3f}, {flawed:.0%} with a flaw (most common: {common})",
                    "{n} 个评测提示词上的贪心回答：平均 gold {greedy:.3f}；温度 {temperature:g} 下的采样回答：平均 gold "
                    "{sampled:.3f}，{flawed:.0%} 带有缺陷（最常见的：{common}）"),
    "sft gap": ("Sampling shows what greedy decoding hides ({change:+.3f} gold, beyond {noise:g} standard errors): "
                "the flaws counted above, which its most likely answers avoid, come with sampling. That gap is the "
                "headroom RLHF works on; notebook 4 measures how much of it closes.",
                "采样暴露了贪心解码掩盖的问题（gold {change:+.3f}，超出 {noise:g} 倍标准误差）：上面统计的缺陷，"
                "它最可能的回答避开了，采样时却会出现。这个差距就是 RLHF 的提升空间；笔记本 4 测量其中补上了多少。"),
    "sft no gap": ("Sampled answers are about as good as greedy ones here ({change:+.3f} gold, within {noise:g} "
                   "standard errors): little for RLHF to remove.",
                   "这里采样回答和贪心回答差不多好（gold {change:+.3f}，在 {noise:g} 倍标准误差之内）：RLHF 没什么可去掉的。"),
    "reward accuracy": ("held-out accuracy {before:.3f} before training -> {after:.3f} after, on {pairs} pairs (chance "
                        "0.5, standard error {se:.3f}); mean margin {margin_before:+.2f} -> {margin_after:+.2f}",
                        "留出偏好对上的准确率：训练前 {before:.3f} -> 训练后 {after:.3f}，共 {pairs} 对（随机猜测为 0.5，"
                        "标准误差 {se:.3f}）；平均分差 {margin_before:+.2f} -> {margin_after:+.2f}"),
    "reward learned": ("The reward model ranks the chosen answer first far more often than chance: it learned the "
                       "preferences of these pairs. Whether it also ranks the policy's new answers correctly is what "
                       "notebooks 3 and 4 test: answers unlike its training pairs can fool it.",
                       "奖励模型把 chosen 排在前面的次数远多于随机猜测：它学会了这些偏好对的偏好。它能否也给策略的新回答"
                       "正确排序，是笔记本 3 和 4 要检验的：与训练偏好对不同的回答可能糊弄它。"),
    "reward chance": ("No better than chance: PPO against this reward model would learn noise. Train longer or check "
                      "the preference pairs.",
                      "与随机猜测无异：用这个奖励模型做 PPO 只会学到噪声。请训练更久，或检查偏好对。"),
}


def say(key: str, **fields) -> Text:
    return render(SENTENCES[key], **fields)


# ----------------------------------------------------------------------------- notebooks 3 and 4: training

def window_size(iterations: int) -> int:
    """k: a quarter of the run, at most 10 iterations and at least 1."""
    return max(1, min(10, iterations // 4))


def mean(values) -> float:
    return sum(values) / len(values)


def window_change(history, key: str, k: int) -> dict:
    """Means of `key` over the first and the last k iterations, their difference, its standard
    error sqrt(var_first / k + var_last / k) (NaN with k = 1: one iteration shows no spread), and
    the trend: 'rose' / 'fell' when the change exceeds NOISE_SE standard errors, else 'flat'
    ('unknown' when the error is NaN)."""
    first, last = [float(h[key]) for h in history[:k]], [float(h[key]) for h in history[-k:]]
    spread = lambda xs: sum((x - mean(xs)) ** 2 for x in xs) / (len(xs) - 1) if len(xs) > 1 else math.nan
    change = mean(last) - mean(first)
    se = math.sqrt(spread(first) / len(first) + spread(last) / len(last))
    trend = "unknown" if math.isnan(se) else "rose" if change > NOISE_SE * se else \
        "fell" if change < -NOISE_SE * se else "flat"
    return {"first": mean(first), "last": mean(last), "change": change, "se": se, "trend": trend}


def window_table(history, keys, k: int | None = None) -> list[dict]:
    """One row per logged key present: the first-window and last-window means, the change, twice
    its standard error, and the trend. What a run's summary should print instead of its first and
    last iterations (with `labelled` headers)."""
    k = k or window_size(len(history))
    rows = []
    for key in keys:
        if all(key in h for h in history):
            c = window_change(history, key, k)
            rows.append({"number": key, f"first {k}": c["first"], f"last {k}": c["last"],
                         "change": c["change"], f"± {NOISE_SE:g} SE": NOISE_SE * c["se"], "trend": c["trend"]})
    return rows


def suspicious_samples(samples) -> list[dict]:
    """Logged samples the reward model rates above an average SFT answer (normalised score > 0)
    although the gold judge finds a flaw in them (gold below 1), most over-rated first."""
    flagged = [s for s in samples if s.get("gold") is not None and s["score"] > 0 and s["gold"] < 1]
    return sorted(flagged, key=lambda s: s["gold"] - s["score"])


def describe_sample(sample) -> Text:
    flaws = gold_flaws(sample["prompt"], sample["response"], sample.get("ended", True))
    return say("sample", flaws=listing(word(FLAW_NAMES[f]) for f in flaws), **{
        key: sample[key] for key in ("iteration", "score", "gold", "prompt", "response")})


def hacking_verdict(score: dict, gold: dict | None) -> Text:
    """The rule, applied to the window changes of the score and of gold."""
    if score["trend"] == "unknown":
        return say("too short")
    if score["trend"] != "rose":
        return say("no rise", change=score["change"], two_se=NOISE_SE * score["se"], trend=word(score["trend"]))
    if gold is None:
        return say("no gold")
    if gold["trend"] == "rose":
        return say("gold rose", gold=gold["change"], score=score["change"])
    return say("hacking", score=score["change"], gold=gold["change"], trend=word(gold["trend"]))


def training_verdict(history, samples=(), k: int | None = None) -> Text:
    """The verdict on a PPO run: windows, the changes of score, gold, KL and the critic's
    explained variance, the reward-hacking rule, and the samples the reward model over-rates."""
    k = k or window_size(len(history))
    n = len(history)
    lines = [say("windows", k=k, start=n - k + 1, n=n, noise=NOISE_SE)]
    changes = {key: window_change(history, key, k) for key in ("score", "gold", "kl", "explained_variance")
               if all(key in h for h in history)}
    for key, label in (("score", "reward-model score"), ("gold", "gold score"), ("kl", "KL from the reference"),
                       ("explained_variance", "critic's explained variance")):
        if key in changes:
            c = changes[key]
            lines.append(say("change", label=word(label), first=c["first"], last=c["last"], change=c["change"],
                             trend=word(c["trend"])))
    lines.append(hacking_verdict(changes["score"], changes.get("gold")))
    flagged = suspicious_samples(samples)
    if any(s.get("gold") is not None for s in samples):
        if flagged:
            lines.append(say("flagged", flagged=len(flagged), total=len(samples)))
            lines.append(join([describe_sample(s) for s in flagged], bullet="  "))
        else:
            lines.append(say("none flagged", total=len(samples)))
    return join(lines)


# ----------------------------------------------------------------------------- notebook 4: held-out answers

def share_trend(before: float, after: float, n_before: int, n_after: int) -> str:
    """'fell' / 'rose' when two shares (each of n answers) differ by more than NOISE_SE standard
    errors of their difference, sqrt(p1 (1 - p1) / n1 + p2 (1 - p2) / n2); else 'about the same'."""
    se = math.sqrt(before * (1 - before) / max(n_before, 1) + after * (1 - after) / max(n_after, 1))
    change = after - before
    return "rose" if change > NOISE_SE * se and change > 0 else \
        "fell" if change < -NOISE_SE * se and change < 0 else "about the same"


def interval_reading(low: float, high: float) -> str:
    """'higher' when the whole interval of a difference lies above 0, 'lower' below, else
    'no clear difference' (0 is inside it)."""
    return "higher" if low > 0 else "lower" if high < 0 else "no clear difference"


def difference_line(label: str | Text, mean_difference: float, low: float, high: float, n: int,
                    confidence: float = 0.95) -> Text:
    """A paired difference with its bootstrap interval, in words (`label`: a Text to name it in
    both languages)."""
    return say("difference", label=label, mean=mean_difference, n=n, confidence=confidence, low=low, high=high,
               reading=say(interval_reading(low, high)))


# ----------------------------------------------------------------------------- notebooks 1 and 2

def mean_difference(before, after) -> dict:
    """after's mean minus before's, its standard error sqrt(var_b / n_b + var_a / n_a) (two
    independent samples), and the trend: 'rose' / 'fell' beyond NOISE_SE errors, else 'flat'."""
    def var(xs):
        return sum((x - mean(xs)) ** 2 for x in xs) / (len(xs) - 1) if len(xs) > 1 else 0.0
    change = mean(after) - mean(before)
    se = math.sqrt(var(before) / len(before) + var(after) / len(after))
    trend = "rose" if change > NOISE_SE * se else "fell" if change < -NOISE_SE * se else "flat"
    return {"change": change, "se": se, "trend": trend}


def sft_verdict(epochs, greedy_gold, sampled_gold, sampled_flaws, temperature: float) -> Text:
    """The verdict on SFT: its eval loss over the epochs, and the gold of its greedy and sampled
    answers to the same prompts (sampled_flaws: the judge's flaw list of each sampled answer)."""
    first, last = epochs[0]["eval_loss"], epochs[-1]["eval_loss"]
    lines = [say("sft loss", first=first, last=last, epochs=len(epochs)) if len(epochs) > 1
             else say("sft one epoch", last=last)]
    counts = {}
    for flaws in sampled_flaws:
        for flaw in flaws:
            counts[flaw] = counts.get(flaw, 0) + 1
    common = listing(say("flaw share", flaw=word(FLAW_NAMES[f]), share=n / len(sampled_flaws))
                     for f, n in sorted(counts.items(), key=lambda item: -item[1])[:3])
    lines.append(say("sft answers", n=len(greedy_gold), greedy=mean(greedy_gold), temperature=temperature,
                     sampled=mean(sampled_gold), flawed=sum(bool(f) for f in sampled_flaws) / len(sampled_flaws),
                     common=common))
    gap = mean_difference(greedy_gold, sampled_gold)
    lines.append(say("sft gap" if gap["trend"] == "fell" else "sft no gap", change=gap["change"], noise=NOISE_SE))
    return join(lines)


def reward_verdict(before: dict, after: dict, pairs: int) -> Text:
    """The verdict on the reward model: held-out pairwise accuracy and margin before and after
    training, against chance (0.5, with its binomial standard error on `pairs` pairs)."""
    se = math.sqrt(0.25 / max(pairs, 1))
    accuracy = say("reward accuracy", before=before["eval_accuracy"], after=after["eval_accuracy"], pairs=pairs,
                   se=se, margin_before=before["eval_margin"], margin_after=after["eval_margin"])
    return join([accuracy, say("reward learned" if after["eval_accuracy"] > 0.5 + NOISE_SE * se else "reward chance")])
