"""The DPO, RLOO and GRPO loops of rlhf/beyond_loop.py, and tools/scoreboard.py, at ci size on the
built-in data, from a tiny random actor and reward model saved as model/actor and model/critic
(tests/test_ppo_details.make_models). Each loop must move the weights, keep its numbers finite,
and hand back a policy whose checkpoint loads with AutoModelForCausalLM."""
import json
import math
import subprocess
import sys

import pytest
import torch
from transformers import AutoModelForCausalLM

from conftest import ROOT
from rlhf import beyond_loop, scoreboard
from rlhf.checkpoint import save_checkpoint, write_json
from rlhf.config import make_config
from rlhf.data import encode_prompts, split_rows
from rlhf.evaluate import gold_judge_for
from rlhf.models import load_policy_models
from rlhf.sources import load_data
from test_ppo_details import make_models


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, tiny_tokenizer):
    """model/actor and model/critic (with reward_stats.json) of tiny random OPTs."""
    root = tmp_path_factory.mktemp("model")
    actor, _, reward_model, _ = make_models(tiny_tokenizer)
    save_checkpoint(root / "actor", actor, tiny_tokenizer)
    save_checkpoint(root / "critic", reward_model, tiny_tokenizer)
    write_json(root / "critic" / "reward_stats.json", {"mean": 0.1, "std": 2.0})
    return root


@pytest.fixture(scope="module")
def data():
    data_cfg = make_config("data", "ci", max_length=60, max_prompt_length=32)  # make_models reads 64 positions
    train_rows, eval_rows = load_data(data_cfg)
    return data_cfg, split_rows(train_rows, data_cfg.split, data_cfg.seed), eval_rows


def configs(**beyond):
    ppo_cfg = make_config("ppo", "ci", max_new_tokens=8, iterations=2, mixed_precision="no")
    return ppo_cfg, make_config("beyond", "ci", **beyond)


def moved(model, folder) -> bool:
    start = AutoModelForCausalLM.from_pretrained(folder / "actor").state_dict()
    return any(not torch.equal(v, start[k]) for k, v in model.state_dict().items() if k in start)


def reloads(model, tokenizer, folder) -> bool:
    """Saved and loaded back with the Auto class, it gives the same logits."""
    save_checkpoint(folder, model, tokenizer)
    again = AutoModelForCausalLM.from_pretrained(folder).eval()
    ids = torch.tensor([[1, 5, 6, 7]])
    with torch.no_grad():
        return torch.allclose(model.eval()(ids).logits, again(ids).logits, atol=1e-6)


def test_dpo_trains_from_the_pairs_and_shows_its_implicit_reward(model_dir, data, tiny_tokenizer, tmp_path):
    data_cfg, parts, eval_rows = data
    ppo_cfg, cfg = configs(dpo_steps=3, dpo_lr=1e-2)
    pairs = beyond_loop.encode_dpo_pairs(parts["critic"][:64], tiny_tokenizer, data_cfg.max_length,
                                         data_cfg.max_prompt_length)
    assert all(p["chosen_ids"][:p["prompt_length"]] == p["rejected_ids"][:p["prompt_length"]] for p in pairs)
    models = load_policy_models(model_dir / "actor", model_dir / "critic", ppo_cfg)
    actor, history = beyond_loop.train_dpo(models, tiny_tokenizer, pairs, ppo_cfg, cfg, log=lambda m: None)
    assert len(history) == 3
    assert history[0]["loss"] == pytest.approx(math.log(2), abs=1e-5)  # pi = pi_ref: every margin is 0
    assert all(math.isfinite(h[k]) for h in history for k in ("loss", "margin", "grad_norm"))
    assert moved(actor, model_dir)
    held_out = beyond_loop.encode_dpo_pairs(eval_rows[:16], tiny_tokenizer, data_cfg.max_length, data_cfg.max_prompt_length)
    implicit = beyond_loop.implicit_rewards(actor, models[1], held_out, tiny_tokenizer.pad_token_id, cfg, 1.0)
    assert 0 <= implicit["implicit_accuracy"] <= 1
    assert implicit["implicit_margin"] == pytest.approx(implicit["implicit_chosen"] - implicit["implicit_rejected"], abs=1e-5)
    assert reloads(actor, tiny_tokenizer, tmp_path / "dpo")


@pytest.mark.parametrize("algorithm", ["rloo", "grpo"])
def test_online_loops_train_within_their_token_budget(algorithm, model_dir, data, tiny_tokenizer, tmp_path):
    data_cfg, parts, _ = data
    rows = parts["rlhf"][:32]
    ppo_cfg, cfg = configs(token_budget=200, iterations=5, rloo_lr=1e-2, grpo_lr=1e-2)
    texts = [r["prompt"] for r in rows]
    ids = encode_prompts(rows, tiny_tokenizer, data_cfg.max_prompt_length)
    models = load_policy_models(model_dir / "actor", model_dir / "critic", ppo_cfg)
    actor, history = beyond_loop.train_online(algorithm, models, tiny_tokenizer, ids, ppo_cfg, cfg,
                                              log=lambda m: None, judge=gold_judge_for(texts),
                                              prompt_texts=texts, progress=False)
    assert history[0]["kl"] == 0.0  # the first answers are sampled from the reference itself
    assert history[-1]["tokens_used"] >= 200 > history[-2]["tokens_used"]  # it stopped at the budget
    assert all(h["prompts"] == ppo_cfg.rollout_batch for h in history)  # as many answers as a PPO rollout
    assert all(math.isfinite(h[k]) for h in history for k in ("loss", "score", "gold", "grad_norm"))
    assert moved(actor, model_dir)
    assert reloads(actor, tiny_tokenizer, tmp_path / algorithm)


def test_online_loop_refuses_groups_that_do_not_divide_the_rollout(model_dir, tiny_tokenizer):
    ppo_cfg, cfg = configs(rloo_k=3)
    models = load_policy_models(model_dir / "actor", model_dir / "critic", ppo_cfg)
    with pytest.raises(ValueError, match="rollout_batch .16. must be a multiple of BeyondConfig.rloo_k .3."):
        beyond_loop.train_online("rloo", models, tiny_tokenizer, [[1, 5]], ppo_cfg, cfg, progress=False)


def test_the_scoreboard_writes_its_table(model_dir, tmp_path):
    out = tmp_path / "board"
    overrides = ("data.max_length=60 data.max_prompt_length=32 ppo.iterations=1 ppo.max_new_tokens=6 ppo.mixed_precision=no beyond.dpo_steps=2 "
                 "eval.max_prompts=4 eval.max_new_tokens=6 eval.samples_per_prompt=1")
    done = subprocess.run([sys.executable, str(ROOT / "tools" / "scoreboard.py"), "--preset", "ci", "--seeds", "1",
                           "--in-process", "--model-dir", str(model_dir), "--out", str(out), "--set", overrides],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    board = json.loads((out / "scoreboard.json").read_text())
    assert set(board["rows"]) == {"sft", "ppo", "dpo", "rloo", "grpo"}
    tokens = {r["algorithm"]: r["generated_tokens"] for r in board["runs"] if r["algorithm"] != "sft"}
    assert tokens["dpo"] == 0 and tokens["ppo"] > 0
    assert tokens["rloo"] >= tokens["ppo"] and tokens["grpo"] >= tokens["ppo"]  # the same budget, spent
    assert board["rows"]["sft"]["kl"][0] == 0.0
    table = (out / "scoreboard.md").read_text()
    assert "| GRPO |" in table and "best on gold:" in table
    for name in ("ppo", "dpo", "rloo", "grpo"):
        assert (model_dir / name / "config.json").exists()


def test_interval_is_the_95_percent_t_interval():
    mean, half = scoreboard.interval([1.0, 2.0, 3.0])  # sd 1, t(0.975, 2 df) = 4.303
    assert mean == 2.0 and half == pytest.approx(4.303 / math.sqrt(3))
    assert math.isnan(scoreboard.interval([5.0])[1])
    # eleven seeds (10 df): t = 2.228 from a t table; the old fallback used 2.0 past 9 df
    values = [float(v) for v in range(11)]                       # mean 5, sd sqrt(11)
    assert scoreboard.interval(values)[1] == pytest.approx(2.228 * math.sqrt(11) / math.sqrt(11), rel=1e-4)
    assert scoreboard.interval([0.0, 2.0] * 40)[1] == pytest.approx(1.96 * math.sqrt(80 / 79) / math.sqrt(80), rel=1e-4)


def test_the_curve_finds_where_gold_peaks_and_how_far_it_falls():
    gold = [0.1, 0.2, 0.3, 0.4, 0.5, 0.5, 0.4, 0.3, 0.2, 0.1]  # up, then down
    history = [{"iteration": i + 1, "gold": g, "score": 0.1 * i, "kl": 0.5 * i} for i, g in enumerate(gold)]
    curve = scoreboard.curve_summary({"kl_coef": 0.0, "history": history, "records": []}, window=1)
    assert curve["gold_peak"]["iteration"] == 5 and curve["gold_peak"]["kl"] == 2.0
    assert curve["gold_drop_after_peak"] == pytest.approx(0.4)
    assert curve["rm_rise_after_peak"] == pytest.approx(0.5)
