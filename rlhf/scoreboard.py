"""Beyond PPO, part 3: the scoreboard's figures from evaluation records, and the over-optimisation
curve from training histories. Pure functions on what tools/scoreboard.py (and notebook 5)
collect: a *result* is one run, {"algorithm", "seed", "records" (rlhf.evaluate.evaluate_policies),
"history", "kl_coef", "train_seconds", "peak_mb", "generated_tokens", ...}."""
from __future__ import annotations

import math

from .evaluate import win_rate
from .tasks import FLAW_NAMES, gold_flaws

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


def verdict(rows) -> list[str]:
    """Which wins on gold and by how much; where the reward model's score rose and gold did not."""
    trained = {k: v for k, v in rows.items() if k != "sft"}
    ranked = sorted(trained, key=lambda k: -trained[k]["gold"][0])
    best, lines = ranked[0], []
    gap = lambda a, b: rows[a]["gold"][0] - rows[b]["gold"][0]
    lines.append(f"best on gold: {best} ({plus_minus(rows[best]['gold'])}), "
                 f"{gap(best, 'sft'):+.3f} over SFT" + (f", {gap(best, ranked[1]):+.3f} over the next, "
                 f"{ranked[1]}" if len(ranked) > 1 else ""))
    if len(ranked) > 1:
        (m1, h1), (m2, h2) = rows[best]["gold"], rows[ranked[1]]["gold"]
        apart = math.isfinite(h1) and math.isfinite(h2) and m1 - h1 > m2 + h2
        lines.append("its interval and the next one's " + ("do not overlap" if apart else
                     "overlap (or there is one seed): the lead is within the noise"))
    for name in ranked:
        d_rm, d_gold = rows[name]["rm_score"][0] - rows["sft"]["rm_score"][0], gap(name, "sft")
        if d_rm > 0 and d_gold < 0:
            lines.append(f"{name} hacks the reward model: score {d_rm:+.2f} over SFT, gold {d_gold:+.3f}; "
                         + grown_flaw(rows, name))
    return lines


def plus_minus(mean_half) -> str:
    mean, half = mean_half
    return f"{mean:.3f} ± {half:.3f}" if math.isfinite(half) else f"{mean:.3f}, one seed"


def grown_flaw(rows, name) -> str:
    """The flaw whose share grew most from SFT to `name`, in words."""
    growth = {k: rows[name]["flaws"][k] - rows["sft"]["flaws"][k] for k in rows[name]["flaws"] if k != "clean"}
    flaw = max(growth, key=growth.get)
    if growth[flaw] <= 0:
        return "no flaw the gold judge names grew"
    return f"its most grown flaw: {flaw} ({rows['sft']['flaws'][flaw]:.0%} -> {rows[name]['flaws'][flaw]:.0%})"


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
    return "\n".join(out + [""] + [f"- {line}" for line in lines]) + "\n"


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
