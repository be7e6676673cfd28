"""Beyond PPO, part 3: the scoreboard's figures from evaluation records, and the over-optimisation
curve from training histories. Pure functions on what tools/scoreboard.py (and notebook 5)
collect: a *result* is one run, {"algorithm", "seed", "records" (rlhf.evaluate.evaluate_policies),
"history", "kl_coef", "train_seconds", "peak_mb", "generated_tokens", ...}."""
from __future__ import annotations

import math

from .evaluate import win_rate
from .tasks import FLAW_NAMES, gold_flaws
from .verdict import Text, render, word

ALGORITHMS = ("ppo", "dpo", "rloo", "grpo")
FIGURES = ("gold", "rm_score", "kl", "length", "ended", "win_rate_gold", "win_rate_rm")
T_975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262,
         10: 2.228, 15: 2.131, 20: 2.086, 30: 2.042}  # Student's t 97.5% quantile by degrees of freedom


def t_975(df: int) -> float:
    """The 97.5% quantile of Student's t with df degrees of freedom: the table's value at the
    largest tabulated df not above it (a slightly wider interval between entries), 1.96 past 30."""
    return T_975[max(d for d in T_975 if d <= df)] if df <= 30 else 1.96


# ----------------------------------------------------------------------------- figures and intervals

def figures_of(result, sft_records) -> dict:
    """Mean sampled-answer figures of one run, and its win rates against SFT at the same seed."""
    sampled = [r for r in result["records"] if r["mode"] == "sampled"]
    mean = lambda key: sum(float(r[key]) for r in sampled) / max(len(sampled), 1)
    both = result["records"] + sft_records
    name = result["algorithm"]
    return {"gold": mean("gold"), "rm_score": mean("rm_score"), "kl": mean("kl_from_reference"),
            "length": mean("length"), "ended": mean("ended"),
            "win_rate_gold": win_rate(both, "gold", a=name, b="sft") if name != "sft" else 0.5,
            "win_rate_rm": win_rate(both, "rm_score", a=name, b="sft") if name != "sft" else 0.5}


def interval(values) -> tuple[float, float]:
    """(mean, half-width of the 95% t interval); half-width NaN for a single value."""
    n = len(values)
    mean = sum(values) / n
    if n < 2:
        return mean, math.nan
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    return mean, t_975(n - 1) * sd / math.sqrt(n)


def flaw_shares(records, algorithm) -> dict:
    """Share of an algorithm's sampled answers (all seeds) with each flaw the gold judge names."""
    found = [gold_flaws(r["prompt"], r["response"], r["ended"]) for r in records
             if r["policy"] == algorithm and r["mode"] == "sampled"]
    shares = {label: sum(name in f for f in found) / max(len(found), 1) for name, label in FLAW_NAMES.items()}
    return {**shares, "clean": sum(not f for f in found) / max(len(found), 1)}


def board(results) -> dict:
    """Per algorithm: each figure's mean and interval over the seeds, time, memory, budget, flaws."""
    sft = {r["seed"]: r["records"] for r in results if r["algorithm"] == "sft"}
    rows = {}
    for name in ["sft", *ALGORITHMS]:
        runs = [r for r in results if r["algorithm"] == name]
        if not runs:
            continue
        per_seed = [figures_of(r, sft[r["seed"]]) for r in runs]
        rows[name] = {key: interval([f[key] for f in per_seed]) for key in FIGURES}
        for key in ("train_seconds", "peak_mb", "generated_tokens"):
            values = [r.get(key) for r in runs if r.get(key) is not None]
            rows[name][key] = interval(values) if values else (math.nan, math.nan)
        rows[name]["flaws"] = flaw_shares([x for r in runs for x in r["records"]], name)
        rows[name]["seeds"] = len(runs)
    return rows


SENTENCES = {  # key: (English, Chinese), as in rlhf/verdict.py
    "best": ("best on gold: {best} ({gold}), {over_sft:+.3f} over SFT{next}",
             "gold 最高：{best}（{gold}），相对 SFT {over_sft:+.3f}{next}"),
    "over next": (", {over_next:+.3f} over the next, {name}", "，相对第二名 {name} {over_next:+.3f}"),
    "apart": ("its interval and the next one's do not overlap", "它的区间与第二名的区间不重叠"),
    "overlap": ("its interval and the next one's overlap (or there is one seed): the lead is within the noise",
                "它的区间与第二名的区间重叠（或只有一个随机种子）：领先在噪声之内"),
    "hacks": ("{name} hacks the reward model: score {rm:+.2f} over SFT, gold {gold:+.3f}; {flaw}",
              "{name} 在钻奖励模型的空子：奖励模型分数相对 SFT {rm:+.2f}，gold {gold:+.3f}；{flaw}"),
    "no flaw grew": ("no flaw the gold judge names grew", "gold judge 列出的缺陷没有一项增加"),
    "grown flaw": ("its most grown flaw: {flaw} ({before:.0%} -> {after:.0%})",
                   "增加最多的缺陷：{flaw}（{before:.0%} -> {after:.0%}）"),
    "interval": ("{mean:.3f} ± {half:.3f}", "{mean:.3f} ± {half:.3f}"),
    "one seed": ("{mean:.3f}, one seed", "{mean:.3f}，只有一个随机种子"),
    "curve": ("{name}: gold peaked at {gold:.3f} (KL {kl:.2f}, iteration {iteration}), then fell {drop:.3f} {then}",
              "{name}：gold 在 {gold:.3f} 达到峰值（KL {kl:.2f}，第 {iteration} 次迭代），之后下降 {drop:.3f}{then}"),
    "turned down": ("while the reward model's score rose {rise:+.3f}: over-optimisation",
                    "，而奖励模型分数变化 {rise:+.3f}：过度优化"),
    "no turn": ("(RM {rise:+.3f}): no clear turn-down within this budget",
                "（奖励模型分数 {rise:+.3f}）：在这个预算内没有明显的掉头"),
}
TURN_DOWN = 0.02  # gold falling more than this after its peak, with the proxy rising, is over-optimisation


def verdict(rows) -> list[Text]:
    """Which wins on gold and by how much; where the reward model's score rose and gold did not."""
    trained = {k: v for k, v in rows.items() if k != "sft"}
    ranked = sorted(trained, key=lambda k: -trained[k]["gold"][0])
    best = ranked[0]
    gap = lambda a, b: rows[a]["gold"][0] - rows[b]["gold"][0]
    after = render(SENTENCES["over next"], over_next=gap(best, ranked[1]), name=ranked[1]) if len(ranked) > 1 \
        else Text("", "")
    lines = [render(SENTENCES["best"], best=best, gold=plus_minus(rows[best]["gold"]), over_sft=gap(best, "sft"),
                    next=after)]
    if len(ranked) > 1:
        (m1, h1), (m2, h2) = rows[best]["gold"], rows[ranked[1]]["gold"]
        apart = math.isfinite(h1) and math.isfinite(h2) and m1 - h1 > m2 + h2
        lines.append(render(SENTENCES["apart" if apart else "overlap"]))
    for name in ranked:
        d_rm, d_gold = rows[name]["rm_score"][0] - rows["sft"]["rm_score"][0], gap(name, "sft")
        if d_rm > 0 and d_gold < 0:
            lines.append(render(SENTENCES["hacks"], name=name, rm=d_rm, gold=d_gold, flaw=grown_flaw(rows, name)))
    return lines


def plus_minus(mean_half) -> Text:
    mean, half = mean_half
    return render(SENTENCES["interval" if math.isfinite(half) else "one seed"], mean=mean, half=half)


def grown_flaw(rows, name) -> Text:
    """The flaw whose share grew most from SFT to `name`, in words."""
    growth = {k: rows[name]["flaws"][k] - rows["sft"]["flaws"][k] for k in rows[name]["flaws"] if k != "clean"}
    flaw = max(growth, key=growth.get)
    if growth[flaw] <= 0:
        return render(SENTENCES["no flaw grew"])
    return render(SENTENCES["grown flaw"], flaw=word(flaw), before=rows["sft"]["flaws"][flaw], after=rows[name]["flaws"][flaw])


def curve_verdict(name, curve) -> Text:
    """Whether gold turned down along training while the proxy kept rising (curve: curve_summary)."""
    peak, drop, rise = curve["gold_peak"], curve["gold_drop_after_peak"], curve["rm_rise_after_peak"]
    then = render(SENTENCES["turned down" if drop > TURN_DOWN and rise > 0 else "no turn"], rise=rise)
    return render(SENTENCES["curve"], name=name, gold=peak["gold"], kl=peak["kl"], iteration=peak["iteration"],
                  drop=drop, then=then)


def markdown(rows, lines, header) -> str:
    """The scoreboard as a markdown table, then the verdict."""
    cell = lambda mh, digits=3: (f"{mh[0]:.{digits}f}" + (f" ± {mh[1]:.{digits}f}" if math.isfinite(mh[1]) else "")
                                 if math.isfinite(mh[0]) else "n/a")
    out = [header, "", "| | gold | RM score | KL from SFT | length | EOS rate | gold win vs SFT | RM win vs SFT "
           "| generated tokens | train s | peak MB |", "|---" * 11 + "|"]
    for name, row in rows.items():
        out.append(f"| {name.upper()} | " + " | ".join(cell(row[k]) for k in FIGURES)
                   + f" | {cell(row['generated_tokens'], 0)} | {cell(row['train_seconds'], 0)} | {cell(row['peak_mb'], 0)} |")
    flaws = list(next(iter(rows.values()))["flaws"])
    out += ["", "Share of sampled answers with each flaw the gold judge names (all seeds):", "",
            "| | " + " | ".join(flaws) + " |", "|---" * (len(flaws) + 1) + "|"]
    out += [f"| {name.upper()} | " + " | ".join(f"{row['flaws'][f]:.0%}" for f in flaws) + " |" for name, row in rows.items()]
    return "\n".join(out + [""] + [f"- {line.en}" for line in lines] + [""] + [f"> - {line.zh}" for line in lines]) + "\n"


# ----------------------------------------------------------------------------- the over-optimisation curve

def smooth(values, window: int = 5):
    """Trailing mean over `window` entries (fewer at the start)."""
    return [sum(values[max(0, i - window + 1):i + 1]) / len(values[max(0, i - window + 1):i + 1])
            for i in range(len(values))]


def curve_summary(result, window: int = 5) -> dict:
    """One KL coefficient's run: gold, RM score and KL of each iteration's answers (trailing mean
    over `window` iterations), where gold peaked, how far it fell after its peak, and how much
    the RM score rose after it; the held-out figures at the end when the result has records."""
    history = result["history"]
    gold, rm, kl = (smooth([h[key] for h in history], window) for key in ("gold", "score", "kl"))
    peak = max(range(len(gold)), key=gold.__getitem__)
    final = figures_of(result, []) if result["records"] else {}
    return {"kl_coef": result["kl_coef"], "iterations": len(history),
            "points": [{"iteration": h["iteration"], "kl": k, "gold": g, "rm_score": r}
                       for h, k, g, r in zip(history, kl, gold, rm)],
            "gold_peak": {"iteration": history[peak]["iteration"], "kl": kl[peak], "gold": gold[peak]},
            "gold_drop_after_peak": gold[peak] - gold[-1], "rm_rise_after_peak": rm[-1] - rm[peak],
            "final_eval": {k: final[k] for k in ("gold", "rm_score", "kl", "length") if k in final}}


def curve_markdown(curves, header) -> str:
    out = [header, "", "| β | iterations | gold peak (iteration, KL, gold) | gold drop after peak | RM rise after peak "
           "| held-out gold | held-out RM | held-out KL |", "|---" * 8 + "|"]
    for c in curves:
        p, f = c["gold_peak"], c["final_eval"]
        out.append(f"| {c['kl_coef']:g} | {c['iterations']} | {p['iteration']}, {p['kl']:.2f}, {p['gold']:.3f} | "
                   f"{c['gold_drop_after_peak']:.3f} | {c['rm_rise_after_peak']:+.3f} | {f['gold']:.3f} | "
                   f"{f['rm_score']:.3f} | {f['kl']:.2f} |")
    return "\n".join(out) + "\n"
