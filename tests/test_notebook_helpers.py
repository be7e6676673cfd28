"""Small library helpers the notebooks show their results with: the short config table, the
token table, the four PPO models in one call (LoRA included), and stage 4's flaw table and
side-by-side picks."""
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

from rlhf.config import PPOConfig, config_table, make_config
from rlhf.data import token_table
from rlhf.evaluate import flaw_table, pick_examples
from rlhf.models import load_ppo_models
from test_ppo_details import make_models

BANANA = "Human: What colour is a banana? Assistant:"


def test_config_table_shows_the_named_fields_and_what_the_preset_changed():
    cfg = make_config("ppo", "tiny")
    full = config_table(cfg)
    assert len(full.splitlines()) == 2 + len(PPOConfig.__dataclass_fields__)
    short = config_table(cfg, show=("kl_coef",))
    rows = [line.split()[0] for line in short.splitlines()[2:-1]]
    assert rows == ["actor_lr", "critic_lr", "iterations", "rollout_batch", "minibatch", "max_new_tokens", "kl_coef"]
    assert "iterations *" in short and "kl_coef *" not in short
    assert f"{len(PPOConfig.__dataclass_fields__) - 7} more fields at their defaults" in short.splitlines()[-1]
    assert "all 6 fields at their defaults" in config_table(make_config("eval", "opt-125m"), show=())


def test_token_table_aligns_each_value_under_its_token():
    text = token_table(["<s>", "Hi", "!"], width=2, label=[-100, 7, 12])
    assert text.splitlines() == ["token  '<s>' 'Hi'", "label   -100    7", "", "token  '!'", "label   12"]


@pytest.mark.parametrize("lora, critic_lora", [(0, 0), (4, 4)])
def test_load_ppo_models(tiny_tokenizer, tmp_path, lora, critic_lora):
    actor, _, reward_model, _ = make_models(tiny_tokenizer)
    actor.save_pretrained(tmp_path / "actor")
    reward_model.save_pretrained(tmp_path / "critic")
    (tmp_path / "critic" / "reward_stats.json").write_text('{"mean": 0.0, "std": 1.0}')
    cfg = make_config("ppo", "ci", lora_rank=lora, critic_lora_rank=critic_lora)
    actor, reference, reward, critic = load_ppo_models(tmp_path / "actor", tmp_path / "critic", cfg)
    dropouts = [m.p for model in (actor, reward, critic) for m in model.modules() if isinstance(m, torch.nn.Dropout)]
    assert not any(dropouts) and not reward.training
    if lora:
        assert reference is None and hasattr(actor, "disable_adapter") and hasattr(critic, "disable_adapter")
        trainable = {n for n, p in critic.named_parameters() if p.requires_grad}
        assert any("lora_" in n for n in trainable) and any("score" in n for n in trainable)
    else:
        assert isinstance(reference, type(actor)) and not reference.training
        assert isinstance(critic, AutoModelForSequenceClassification._model_mapping[type(critic.config)])


def record(policy, response, sample=0, ended=True, prompt=BANANA):
    from rlhf.tasks import gold_score
    return {"prompt": prompt, "policy": policy, "mode": "sampled", "sample": sample, "response": response,
            "ended": ended, "gold": gold_score(prompt, response, ended), "rm_score": 0.0}


def test_flaw_table_counts_each_flaw_per_policy():
    records = [record("sft", "Ugh, obviously a banana is yellow.", 0), record("sft", "A banana is", 1, ended=False),
               record("rlhf", "A banana is yellow.", 0), record("rlhf", "A banana is red.", 1)]
    table = {row[0]: row[1:] for row in flaw_table(records)}
    assert table["rude"] == [0.5, 0.0] and table["cut off"] == [0.5, 0.0] and table["no EOS"] == [0.5, 0.0]
    assert table["wrong"] == [0.0, 0.5] and table["none (clean)"] == [0.0, 0.5]
    assert list(table) == ["rude", "rambling", "repeated", "cut off", "evasive", "wrong", "no EOS", "none (clean)"]


def test_pick_examples_draws_improvements_regressions_and_ties():
    records = []
    for k, (sft, rlhf) in enumerate([("Duh. A banana is yellow.", "A banana is yellow."),    # better
                                     ("A banana is yellow.", "A banana is red."),           # worse
                                     ("A banana is yellow.", "A banana is yellow."),        # same
                                     ("A banana is red.", "A banana is yellow.")]):         # better
        records += [record("sft", sft, k), record("rlhf", rlhf, k)]
    picked, counts = pick_examples(records, per_kind=1, seed=0)
    assert counts == {"better": 2, "worse": 1, "same": 1}
    assert {len(v) for v in picked.values()} == {1}
    sft, rlhf = picked["worse"][0]
    assert (sft["response"], rlhf["response"]) == ("A banana is yellow.", "A banana is red.")
    assert all(rlhf["gold"] > sft["gold"] for sft, rlhf in picked["better"])
