"""Verdicts on a run, in words, computed from the run's own numbers.

A training curve is noisy from one iteration to the next (each point is the mean over one batch
of sampled answers), so a verdict never reads the first and the last iteration: it compares the
mean of the first k iterations with the mean of the last k, and calls a change real only when it
is larger than twice its standard error (from the spread of the iterations inside each window).
Then it applies the rule of notebooks 3 and 4: if the reward model's score rises and the gold
score does not, the policy is fooling the reward model. Pure functions of the logged history
(a list of per-iteration dicts) and samples; the notebooks print what they return.
"""
from __future__ import annotations

import math

from .tasks import FLAW_NAMES, gold_flaws

NOISE_SE = 2.0  # a change counts when |change| > NOISE_SE standard errors


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
    last iterations."""
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


def describe_sample(sample) -> str:
    flaws = ", ".join(FLAW_NAMES[f] for f in gold_flaws(sample["prompt"], sample["response"],
                                                         sample.get("ended", True))) or "none"
    return (f"iteration {sample['iteration']}: score {sample['score']:.2f}, gold {sample['gold']:.2f} "
            f"({flaws}) | {sample['prompt']} -> {sample['response']!r}")


def hacking_verdict(score: dict, gold: dict | None) -> str:
    """The rule, applied to the window changes of the score and of gold."""
    if score["trend"] == "unknown":
        return ("With one iteration per window a change cannot be told from noise: too few "
                "iterations to judge (8 or more give windows of two).")
    if score["trend"] != "rose":
        return (f"The reward model's score did not rise beyond its noise ({score['change']:+.3f}, twice its "
                f"standard error {NOISE_SE * score['se']:.3f}, trend {score['trend']}): no clear gain in what PPO "
                "optimises, so there is nothing to judge yet.")
    if gold is None:
        return ("The score rose, but this data has no gold judge: the score alone cannot tell "
                "learning from reward hacking; read the samples.")
    if gold["trend"] == "rose":
        return (f"Gold rose by {gold['change']:+.3f} while the reward model's score rose by "
                f"{score['change']:+.3f}: by the rule, no sign of reward hacking in the means. "
                "The reward model was a useful proxy on this run (which does not mean it is never "
                "fooled: see the samples below).")
    return (f"The proxy outran gold: the reward model's score rose by {score['change']:+.3f} while "
            f"gold changed by {gold['change']:+.3f} (trend {gold['trend']}). By the rule, the policy "
            "is fooling the reward model (reward hacking).")


def training_verdict(history, samples=(), k: int | None = None) -> str:
    """The verdict on a PPO run: windows, the changes of score, gold, KL and the critic's
    explained variance, the reward-hacking rule, and the samples the reward model over-rates."""
    k = k or window_size(len(history))
    n = len(history)
    lines = [f"Windows: iterations 1-{k} against {n - k + 1}-{n} (means over {k} iteration(s) each; "
             f"a change counts when it exceeds {NOISE_SE:g} standard errors)."]
    changes = {key: window_change(history, key, k) for key in ("score", "gold", "kl", "explained_variance")
               if all(key in h for h in history)}
    for key, label in (("score", "reward-model score"), ("gold", "gold score"), ("kl", "KL from the reference"),
                       ("explained_variance", "critic's explained variance")):
        if key in changes:
            c = changes[key]
            lines.append(f"  {label}: {c['first']:.3f} -> {c['last']:.3f} ({c['change']:+.3f}, {c['trend']})")
    lines.append(hacking_verdict(changes["score"], changes.get("gold")))
    flagged = suspicious_samples(samples)
    if any(s.get("gold") is not None for s in samples):
        if flagged:
            lines.append(f"{len(flagged)} of {len(samples)} logged samples score above an average SFT "
                         "answer although the gold judge finds a flaw: the reward model is fooled there.")
            lines += ["  " + describe_sample(s) for s in flagged]
        else:
            lines.append(f"None of the {len(samples)} logged samples scores above an average SFT answer "
                         "with a flaw the gold judge finds.")
    return "\n".join(lines)


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


def difference_line(label: str, mean_difference: float, low: float, high: float, n: int,
                    confidence: float = 0.95) -> str:
    """A paired difference with its bootstrap interval, in words."""
    reading = {"higher": "the whole interval is above 0: higher beyond the noise of which prompts and samples were drawn",
               "lower": "the whole interval is below 0: lower beyond the noise of which prompts and samples were drawn",
               "no clear difference": "0 is inside the interval: no difference these prompts can show"}
    return (f"{label}: {mean_difference:+.3f} on average over {n} prompts, {confidence:.0%} interval "
            f"[{low:+.3f}, {high:+.3f}]; {reading[interval_reading(low, high)]}.")


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


def sft_verdict(epochs, greedy_gold, sampled_gold, sampled_flaws, temperature: float) -> str:
    """The verdict on SFT: its eval loss over the epochs, and the gold of its greedy and sampled
    answers to the same prompts (sampled_flaws: the judge's flaw list of each sampled answer)."""
    first, last = epochs[0]["eval_loss"], epochs[-1]["eval_loss"]
    lines = [f"eval loss {first:.3f} after epoch 1 -> {last:.3f} after epoch {len(epochs)}"
             if len(epochs) > 1 else f"eval loss {last:.3f} after its one epoch"]
    counts = {}
    for flaws in sampled_flaws:
        for flaw in flaws:
            counts[flaw] = counts.get(flaw, 0) + 1
    common = ", ".join(f"{FLAW_NAMES[f]} {n / len(sampled_flaws):.0%}" for f, n in
                       sorted(counts.items(), key=lambda item: -item[1])[:3]) or "none"
    flawed = sum(bool(f) for f in sampled_flaws) / len(sampled_flaws)
    lines.append(f"greedy answers to {len(greedy_gold)} eval prompts: mean gold {mean(greedy_gold):.3f}; sampled "
                 f"at temperature {temperature:g}: mean gold {mean(sampled_gold):.3f}, {flawed:.0%} with a flaw "
                 f"(most common: {common})")
    gap = mean_difference(greedy_gold, sampled_gold)
    if gap["trend"] == "fell":
        lines.append(f"Sampling shows what greedy decoding hides ({gap['change']:+.3f} gold, beyond {NOISE_SE:g} "
                     "standard errors): the flaws counted above, which its most likely answers avoid, come with "
                     "sampling. That gap is the headroom RLHF works on; notebook 4 measures how much of it closes.")
    else:
        lines.append(f"Sampled answers are about as good as greedy ones here ({gap['change']:+.3f} gold, within "
                     f"{NOISE_SE:g} standard errors): little for RLHF to remove.")
    return "\n".join(lines)


def reward_verdict(before: dict, after: dict, pairs: int) -> str:
    """The verdict on the reward model: held-out pairwise accuracy and margin before and after
    training, against chance (0.5, with its binomial standard error on `pairs` pairs)."""
    se = math.sqrt(0.25 / max(pairs, 1))
    lines = [f"held-out accuracy {before['eval_accuracy']:.3f} before training -> {after['eval_accuracy']:.3f} "
             f"after, on {pairs} pairs (chance 0.5, standard error {se:.3f}); mean margin "
             f"{before['eval_margin']:+.2f} -> {after['eval_margin']:+.2f}"]
    if after["eval_accuracy"] > 0.5 + NOISE_SE * se:
        lines.append("The reward model ranks the chosen answer first far more often than chance: it learned the "
                     "preferences of these pairs. Whether it also ranks the policy's new answers correctly is what "
                     "notebooks 3 and 4 test: answers unlike its training pairs can fool it.")
    else:
        lines.append("No better than chance: PPO against this reward model would learn noise. Train longer or "
                     "check the preference pairs.")
    return "\n".join(lines)
