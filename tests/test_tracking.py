"""Experiment tracking (rlhf/tracking.py), model cards and push_to_hub (rlhf/cards.py), offline."""
import json

import pytest

from rlhf import cards, tracking
from rlhf.checkpoint import save_checkpoint
from rlhf.config import ConfigError, make_config


def read_scalars(folder) -> dict:
    """{tag: [(step, value), ...]} from the TensorBoard event files under `folder`."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(folder))
    events.Reload()
    return {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


def test_records_reach_tensorboard_with_the_configs_as_hyperparameters(tmp_path):
    track = make_config("track", report_to="tensorboard", logging_dir=str(tmp_path / "tb"))
    ppo_cfg = make_config("ppo", "ci")
    log = tracking.open_log("rlhf", [ppo_cfg, make_config("data", "ci")], track, folder=tmp_path / "logs")
    for it in (1, 2, 3):
        log.record({"iteration": it, "kl": 0.1 * it, "score": -1.0 + it, "skipped_updates": 0})
    log.finish()
    scalars = read_scalars(tmp_path / "tb" / "rlhf")
    assert [step for step, _ in scalars["kl"]] == [1, 2, 3]
    assert scalars["score"][-1][1] == pytest.approx(2.0)
    hparams = list((tmp_path / "tb" / "rlhf").glob("*/hparams.yml"))
    assert hparams and "PPOConfig/kl_coef" in hparams[0].read_text()
    assert len((tmp_path / "logs" / "rlhf.jsonl").read_text().splitlines()) == 3  # the JSON lines stay


def test_report_to_none_and_a_tracker_that_is_not_installed(tmp_path, monkeypatch):
    assert tracking.resolve_report_to("none") == []
    monkeypatch.setattr(tracking, "available", lambda: {"tensorboard": True, "wandb": False, "trackio": False})
    assert tracking.resolve_report_to("auto") == ["tensorboard"]
    with pytest.raises(ConfigError, match="wandb, which is not installed"):
        tracking.resolve_report_to("wandb")
    with pytest.raises(ConfigError, match="unknown tracker 'tensorbord'"):
        tracking.resolve_report_to("tensorbord")


def test_every_model_checkpoint_gets_a_card_that_loads_with_pipeline(tmp_path, tiny_tokenizer):
    from transformers import pipeline

    from rlhf.models import build_fallback_model, with_chat_template

    base_cfg, data_cfg, actor_cfg = make_config("base", "ci"), make_config("data", "ci"), make_config("actor", "ci")
    model = build_fallback_model(tiny_tokenizer, base_cfg)
    tokenizer = with_chat_template(tiny_tokenizer)
    save_checkpoint(tmp_path / "base", model, tokenizer, configs=[base_cfg, data_cfg],
                    metrics={"source": "fallback:tiny-opt", "preset": "ci"})
    save_checkpoint(tmp_path / "actor", model, tokenizer, configs=[actor_cfg, data_cfg],
                    metrics={"eval_loss": 0.43, "history": {"steps": []}})
    card = (tmp_path / "actor" / "README.md").read_text()
    assert card.startswith("---\nlibrary_name: transformers\npipeline_tag: text-generation")
    for text in ("base model: `fallback:tiny-opt`", "data: `dataset`", "**ActorConfig**", "| lr | `0.002` |",
                 "| eval_loss | 0.43 |", 'pipeline("text-generation"'):
        assert text in card, text
    save_checkpoint(tmp_path / "tokenizer", tokenizer=tokenizer)
    assert not (tmp_path / "tokenizer" / "README.md").exists()  # no model, no card
    snippet = card.split("```python\n")[1].split("```")[0].replace("max_new_tokens=48", "max_new_tokens=3")
    exec(snippet, {})  # the card's own recipe runs


def test_push_to_hub_says_why_it_skips(tmp_path, monkeypatch):
    said = []
    assert cards.push_to_hub(tmp_path, "", log=said.append) is None and "no repo id" in said[-1]
    monkeypatch.setattr(cards, "hub_reachable", lambda timeout_s: (False, "HF_HUB_OFFLINE is set"))
    assert cards.push_to_hub(tmp_path, "me/model", log=said.append) is None
    assert "Hub is unreachable (HF_HUB_OFFLINE is set)" in said[-1]
