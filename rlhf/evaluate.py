"""Stage 4: answer the eval prompts with the SFT and the RLHF policy and compare them."""
from __future__ import annotations

import torch

from . import ppo
from .data import collate_prompts, encode_prompts
from .generation import decode_responses, generate
from .reward import sequence_scores
from .rollout import response_logits
from .tasks import FLAW_NAMES, gold_flaws, gold_score, parse_prompt


@torch.no_grad()
def answer(policy, tokenizer, batch, max_new_tokens, do_sample, temperature):
    """Responses to a left-padded prompt batch, cut at the first EOS: (qr, am, responses, mask, has_eos)."""
    raw = generate(policy, batch["input_ids"], batch["attention_mask"], tokenizer, max_new_tokens,
                   do_sample, temperature)                                    # (B, R)
    mask, responses, has_eos = ppo.response_mask(raw, tokenizer.eos_token_id, tokenizer.pad_token_id)
    qr = torch.cat([batch["input_ids"], responses], 1)                          # (B, T)
    am = torch.cat([batch["attention_mask"], mask.long()], 1)                   # (B, T)
    return qr, am, responses, mask, has_eos


@torch.no_grad()
def sequence_logprob(model, qr, am, responses, mask, temperature):
    """sum_t log pi(y_t | x, y_<t) over valid response tokens.  (B,)"""
    P = qr.shape[1] - responses.shape[1]
    logits = response_logits(model, qr, am, P)                                 # (B, R, V)
    return ppo.masked_sum(ppo.logprobs_from_logits(logits, responses, temperature), mask, dim=1)


def evaluate_batch(policies, reference, reward_model, tokenizer, prompts, batch, cfg, judge):
    """One record per (prompt, policy, mode, sample). `reference` is the policy KL is measured from."""
    records = []
    for name, policy in policies.items():
        modes = [("greedy", 0)] + [("sampled", k) for k in range(cfg.samples_per_prompt)]
        for mode, k in modes:
            qr, am, responses, mask, has_eos = answer(policy, tokenizer, batch, cfg.max_new_tokens,
                                                      mode == "sampled", cfg.temperature)
            scores = sequence_scores(reward_model, qr, am).tolist()
            kl = [0.0] * len(prompts) if policy is reference else (
                sequence_logprob(policy, qr, am, responses, mask, cfg.temperature)
                - sequence_logprob(reference, qr, am, responses, mask, cfg.temperature)).tolist()
            texts, ended = decode_responses(responses.cpu(), tokenizer)
            for i, prompt in enumerate(prompts):
                records.append({"prompt": prompt, "policy": name, "mode": mode, "sample": k,
                                "response": texts[i], "ended": ended[i], "rm_score": scores[i],
                                "gold": judge(prompt, texts[i], ended[i]) if judge else None,
                                "kl_from_reference": kl[i], "length": int(mask[i].sum())})
    return records


def evaluate_policies(policies, reference, reward_model, tokenizer, prompts, cfg, max_prompt_length,
                      judge=None, progress=True):
    """Records for every eval prompt, policy, mode and sample."""
    from tqdm.auto import tqdm

    torch.manual_seed(cfg.seed)
    device = next(reward_model.parameters()).device
    records = []
    for start in tqdm(range(0, len(prompts), cfg.batch_size), desc="eval", disable=not progress):
        chunk = prompts[start:start + cfg.batch_size]
        ids = encode_prompts([{"prompt": p} for p in chunk], tokenizer, max_prompt_length)
        batch = collate_prompts(ids, tokenizer.pad_token_id, device)
        records += evaluate_batch(policies, reference, reward_model, tokenizer, chunk, batch, cfg, judge)
    return records


def win_rate(records, key, a="rlhf", b="sft", mode="sampled"):
    """Share of (prompt, sample) pairs where policy `a` beats `b` on `key`; ties count half."""
    by = {(r["prompt"], r["sample"], r["policy"]): r[key] for r in records if r["mode"] == mode}
    pairs = [(v, by[(p, s, b)]) for (p, s, pol), v in by.items() if pol == a and (p, s, b) in by]
    wins = sum(1.0 if x > y else 0.5 if x == y else 0.0 for x, y in pairs)
    return wins / max(len(pairs), 1)


def summarize(records, has_gold: bool):
    """Mean figures per policy and mode, win rates, and a printable table (list of rows)."""
    def mean(policy, mode, key):
        values = [float(r[key]) for r in records if r["policy"] == policy and r["mode"] == mode]
        return sum(values) / max(len(values), 1)

    figures = {}
    keys = ["gold", "rm_score", "kl_from_reference", "length", "ended"] if has_gold else \
        ["rm_score", "kl_from_reference", "length", "ended"]
    for mode in ("sampled", "greedy"):
        for key in keys:
            for policy in ("sft", "rlhf"):
                figures[f"{mode}/{key}/{policy}"] = mean(policy, mode, key)
    for mode in ("sampled", "greedy"):
        figures[f"{mode}/win_rate_rm"] = win_rate(records, "rm_score", mode=mode)
        if has_gold:
            figures[f"{mode}/win_rate_gold"] = win_rate(records, "gold", mode=mode)
    table = [["", "SFT", "RLHF"]]
    for mode in ("sampled", "greedy"):
        for key in keys:
            table.append([f"{mode} {key}", f"{figures[f'{mode}/{key}/sft']:.3f}",
                          f"{figures[f'{mode}/{key}/rlhf']:.3f}"])
        for key in (["win_rate_gold"] if has_gold else []) + ["win_rate_rm"]:
            table.append([f"{mode} {key} (RLHF vs SFT)", "", f"{figures[f'{mode}/{key}']:.3f}"])
    return figures, table


def gold_judge_for(prompts):
    """The gold judge when every prompt is one of the built-in tasks (it can grade those only),
    else None: on your own data there is no gold score, only the reward model's."""
    return gold_score if prompts and all(parse_prompt(p) is not None for p in prompts) else None


# ----------------------------------------------------------------------------- what changed, answer by answer

def pairs(records, mode="sampled", a="sft", b="rlhf"):
    """[(record of `a`, record of `b`)] for every prompt and sample both policies answered."""
    by = {(r["prompt"], r["sample"], r["policy"]): r for r in records if r["mode"] == mode}
    return [(r, by[(p, s, b)]) for (p, s, policy), r in by.items() if policy == a and (p, s, b) in by]


def flaw_table(records, mode="sampled"):
    """Share of answers with each flaw the gold judge names (tasks.gold_flaws), per policy:
    rows [flaw, SFT share, RLHF share], then the share with none. Built-in tasks only."""
    found = {policy: [gold_flaws(r["prompt"], r["response"], r["ended"]) for r in records
                      if r["policy"] == policy and r["mode"] == mode] for policy in ("sft", "rlhf")}
    share = lambda policy, test: sum(map(test, found[policy])) / max(len(found[policy]), 1)
    rows = [[label] + [share(p, lambda flaws: name in flaws) for p in ("sft", "rlhf")]
            for name, label in FLAW_NAMES.items()]
    return rows + [["none (clean)"] + [share(p, lambda flaws: not flaws) for p in ("sft", "rlhf")]]


def pick_examples(records, per_kind: int = 3, seed: int = 0, mode="sampled"):
    """Answers of SFT and RLHF to the same prompt, drawn at random (seeded) from three kinds: RLHF's
    gold score higher ('better'), lower ('worse'), the same ('same'). Returns ({kind: [(sft, rlhf)]},
    {kind: how many pairs of that kind there are}), so a reader sees regressions too, and how common
    each kind is."""
    import random

    kinds = {"better": [], "worse": [], "same": []}
    for sft, rlhf in pairs(records, mode):
        kind = "better" if rlhf["gold"] > sft["gold"] else "worse" if rlhf["gold"] < sft["gold"] else "same"
        kinds[kind].append((sft, rlhf))
    rng = random.Random(seed)
    return ({kind: rng.sample(found, min(per_kind, len(found))) for kind, found in kinds.items()},
            {kind: len(found) for kind, found in kinds.items()})
