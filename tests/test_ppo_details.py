"""The rows of shared/guides/ppo-details.md (numbers in brackets) on the real PPO loop, with four
tiny random OPT models. test_ppo_math.py checks the pure math; here the library is called the way
the notebook calls it: make_rollout, ppo_update, train_ppo.

A few tests script the "sampled" responses (fake `generate`) so EOS lands where the test needs it;
everything downstream of generation is the real code.
"""
import copy

import pytest
import torch
from accelerate import Accelerator
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, OPTConfig

from rlhf import ppo
from rlhf import ppo_loop
from rlhf.config import make_config
from rlhf.data import build_sequence, collate_pairs, collate_prompts, prompt_to_ids
from rlhf.models import disable_dropout
from rlhf.ppo_loop import Timer, make_optimizer, ppo_update, train_ppo
from rlhf.reward import fold_score_stats, last_token_index, sequence_scores, token_scores
from rlhf.rollout import make_rollout, reference_logprobs, response_logits, score

PROMPTS = ["Human: What is the capital of France? Assistant:", "Human: Thanks a lot! Assistant:",
           "Human: How do I boil an egg? Assistant:", "Human: Can you help me write a poem? Assistant:"]


def make_models(tokenizer, seed=0):
    """(actor, reference, reward, critic): tiny random OPTs, dropout off, critic = copy of the RM."""
    def config(**kw):
        return OPTConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2,
                         num_attention_heads=2, ffn_dim=64, word_embed_proj_dim=32,
                         max_position_embeddings=64, dropout=0.1, pad_token_id=tokenizer.pad_token_id,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, **kw)
    torch.manual_seed(seed)
    actor = disable_dropout(AutoModelForCausalLM.from_config(config()))
    reward_model = disable_dropout(AutoModelForSequenceClassification.from_config(config(num_labels=1)))
    return actor, copy.deepcopy(actor).eval(), reward_model.eval(), copy.deepcopy(reward_model)


def prompt_ids(tokenizer, n=4):
    """bos + prompt ids, built by the data code; lengths differ, so the batch is left-padded."""
    return [prompt_to_ids(tokenizer, PROMPTS[i % len(PROMPTS)] + " " * (i // len(PROMPTS)), 32)[0]
            for i in range(n)]


def rollout_of(models, tokenizer, cfg, n=4, kl_coef=None):
    batch = collate_prompts(prompt_ids(tokenizer, n), tokenizer.pad_token_id)
    return make_rollout(models, tokenizer, batch["input_ids"], batch["attention_mask"], cfg,
                        cfg.kl_coef if kl_coef is None else kl_coef, Timer())[0]


def script_responses(monkeypatch, actor, responses):
    """Make actor.generate return `responses` (B, R) after the prompts instead of sampling."""
    def fake_generate(input_ids, attention_mask, generation_config):
        return torch.cat([input_ids, responses[:, :generation_config.max_new_tokens]], 1)
    monkeypatch.setattr(actor, "generate", fake_generate)


def forbid_eos(actor, eos_token_id):
    """A forward hook that makes EOS (practically) impossible to sample."""
    penalty = torch.zeros(actor.lm_head.out_features)
    penalty[eos_token_id] = -1e4
    return actor.lm_head.register_forward_hook(lambda module, inputs, out: out + penalty)


def grad_norm(model):
    return torch.sqrt(sum((p.grad.float() ** 2).sum() for p in model.parameters() if p.grad is not None))


@pytest.fixture()
def models(tiny_tokenizer):
    return make_models(tiny_tokenizer)


# ----------------------------------------------------------------------------- generation and EOS

def test_bos_equal_to_eos_is_never_taken_for_the_end(tiny_tokenizer, monkeypatch):    # [2]
    tokenizer = copy.deepcopy(tiny_tokenizer)
    tokenizer.bos_token = tokenizer.eos_token  # OPT-style: every prompt starts with </s>
    eos = tokenizer.eos_token_id
    assert tokenizer.bos_token_id == eos and all(ids[0] == eos for ids in prompt_ids(tokenizer))
    cfg = make_config("ppo", "ci", max_new_tokens=6)
    four = make_models(tokenizer)
    forbid_eos(four[0], eos)
    rollout = rollout_of(four, tokenizer, cfg)                  # real sampling, EOS never drawn
    assert not rollout.has_eos.any() and rollout.mask.eq(1).all()
    assert rollout.attention_mask[:, rollout.P:].eq(1).all()
    prompt_mask = collate_prompts(prompt_ids(tokenizer), tokenizer.pad_token_id)["attention_mask"]
    assert torch.equal(rollout.attention_mask[:, :rollout.P], prompt_mask)  # the BOS stays attended
    # a scripted EOS inside the response is still found
    responses = torch.tensor([[5, eos, 7, 8, 9, 10], [5, 6, 7, 8, 9, 10]] * 2)
    script_responses(monkeypatch, four[0], responses)
    rollout = rollout_of(four, tokenizer, cfg)
    assert rollout.has_eos.tolist() == [True, False] * 2
    assert rollout.mask[0].tolist() == [1, 1, 0, 0, 0, 0] and rollout.mask[1].eq(1).all()


def test_rollouts_sample_with_pure_temperature_sampling(models, tiny_tokenizer, monkeypatch):  # [4]
    actor = models[0]
    calls, real_generate = [], actor.generate

    def spy(*args, **kwargs):
        calls.append(kwargs)
        return real_generate(*args, **kwargs)
    monkeypatch.setattr(actor, "generate", spy)
    cfg = make_config("ppo", "ci", max_new_tokens=5, temperature=0.7)
    rollout_of(models, tiny_tokenizer, cfg)
    (kwargs,) = calls
    config = kwargs["generation_config"]  # the only generation setting passed (test_heads.py: exactly pi / T)
    assert config.do_sample is True and config.top_k == 0 and config.top_p == 1.0
    assert config.temperature == 0.7 and config.max_new_tokens == 5
    assert config.num_beams == 1 and config.eos_token_id == tiny_tokenizer.eos_token_id
    assert set(kwargs) == {"input_ids", "attention_mask", "generation_config"}


# ----------------------------------------------------------------------------- scores

def test_missing_eos_costs_the_penalty_after_normalisation(models, tiny_tokenizer, monkeypatch):  # [9]
    eos = tiny_tokenizer.eos_token_id
    cfg = make_config("ppo", "ci", max_new_tokens=5, missing_eos_penalty=1.5)
    script_responses(monkeypatch, models[0], torch.tensor([[5, 6, eos, 8, 9], [5, 6, 7, 8, 9]] * 2))
    folded = fold_score_stats(copy.deepcopy(models[2]), 0.3, 0.5)  # what load_ppo_models does
    rollout = rollout_of((*models[:2], folded, models[3]), tiny_tokenizer, cfg)
    raw = sequence_scores(models[2], rollout.query_responses, rollout.attention_mask)
    torch.testing.assert_close(rollout.raw_scores, (raw - 0.3) / 0.5)  # normalised once, in the head
    no_eos = torch.tensor([0.0, 1.0, 0.0, 1.0])
    torch.testing.assert_close(rollout.scores, (raw - 0.3) / 0.5 - 1.5 * no_eos)
    assert ppo_loop.rollout_stats(rollout, cfg.kl_coef)["eos_rate"] == 0.5
    # score() on its own: the reward model's units, clipping at score_clip
    cfg = make_config("ppo", "ci", missing_eos_penalty=1.0, score_clip=0.5)
    _, scores = score(models[2], rollout.query_responses, rollout.attention_mask, no_eos == 0, cfg)
    torch.testing.assert_close(scores, (raw - no_eos).clamp(-0.5, 0.5))


def test_ppo_score_equals_the_reward_training_score(models, tiny_tokenizer, monkeypatch):  # [10, 15]
    tok, eos = tiny_tokenizer, tiny_tokenizer.eos_token_id
    answers = ["The capital of France is Paris.", "You are welcome.", "Eight minutes.", "Of course."]
    prompts = prompt_ids(tok)
    sequences = [build_sequence(tok, p, a, 64)[0] for p, a in zip(prompts, answers)]  # bos+prompt+" "+a+eos
    # the RM-training path: chosen / rejected rows, right-padded, one forward pass
    pairs = collate_pairs([dict(chosen_ids=sequences[0], rejected_ids=sequences[1]),
                           dict(chosen_ids=sequences[2], rejected_ids=sequences[3])], tok.pad_token_id)
    trained = sequence_scores(models[2], pairs["input_ids"], pairs["attention_mask"])[[0, 2, 1, 3]]
    # the PPO path: left-padded prompts, the same answers as "samples", junk after each EOS
    answer_ids = [s[len(p):] for s, p in zip(sequences, prompts)]
    R = max(map(len, answer_ids)) + 2
    responses = torch.tensor([a + [7] * (R - len(a)) for a in answer_ids])
    assert all(a[-1] == eos for a in answer_ids)
    script_responses(monkeypatch, models[0], responses)
    cfg = make_config("ppo", "ci", max_new_tokens=R, normalize_score=False)
    rollout = rollout_of(models, tok, cfg)
    assert rollout.has_eos.all() and (rollout.attention_mask[:, :rollout.P] == 0).any()  # really left-padded
    torch.testing.assert_close(rollout.raw_scores, trained, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(rollout.scores, trained, atol=1e-5, rtol=1e-4)  # EOS present: no penalty


def test_score_lands_on_the_last_token_and_returns_it_there(models, tiny_tokenizer, monkeypatch):  # [11, 12]
    eos = tiny_tokenizer.eos_token_id
    script_responses(monkeypatch, models[0], torch.tensor([[5, 6, eos, 8, 9], [5, 6, 7, 8, 9],
                                                          [eos, 6, 7, 8, 9], [5, 6, 7, 8, eos]]))
    cfg = make_config("ppo", "ci", max_new_tokens=5, gamma=1.0, lam=0.95)
    rollout = rollout_of(models, tiny_tokenizer, cfg, kl_coef=0.0)
    last = torch.tensor([2, 4, 0, 4])
    at_last = torch.nn.functional.one_hot(last, 5).float()
    torch.testing.assert_close(rollout.rewards, rollout.scores[:, None] * at_last)
    # V = 0, KL = 0: the unwhitened advantage at the last valid token is the score itself
    advantages, _ = ppo.gae(torch.zeros_like(rollout.values), rollout.rewards, rollout.mask, 1.0, 0.95)
    torch.testing.assert_close(advantages.gather(1, last[:, None]).squeeze(1), rollout.scores)
    # with the critic's real values the return at the last token is still exactly the score
    torch.testing.assert_close(rollout.returns.gather(1, last[:, None]).squeeze(1), rollout.scores)
    assert rollout.returns.mul(1 - rollout.mask).abs().max() == 0


def test_critic_copied_from_the_rm_reads_values_one_step_early(models, tiny_tokenizer, monkeypatch):  # [21]
    eos = tiny_tokenizer.eos_token_id
    script_responses(monkeypatch, models[0], torch.tensor([[5, 6, eos, 8, 9], [5, 6, 7, eos, 9]] * 2))
    rollout = rollout_of(models, tiny_tokenizer, make_config("ppo", "ci", max_new_tokens=5))
    qr, am, P = rollout.query_responses, rollout.attention_mask, rollout.P
    critic_scores = token_scores(models[3], qr, am)                                   # (B, T)
    # V(s_t) is the head's output at the token before response token t
    torch.testing.assert_close(rollout.values, critic_scores[:, P - 1:-1])
    # at the last real token (the EOS) the untrained critic gives the reward model's score ...
    end = last_token_index(am)
    torch.testing.assert_close(critic_scores.gather(1, end[:, None]).squeeze(1), rollout.raw_scores)
    # ... which is V of the state after EOS: one step past the last valid position, never trained on
    after_eos = torch.tensor([3, 4, 3, 4])
    torch.testing.assert_close(rollout.values.gather(1, after_eos[:, None]).squeeze(1), rollout.raw_scores)
    assert rollout.mask.gather(1, after_eos[:, None]).eq(0).all()


# ----------------------------------------------------------------------------- the update

def count_update(models, cfg, rollout):
    """Run ppo_update; return (optimiser steps, rows the actor saw, stats)."""
    actor, _, _, critic = models
    optimizer, _ = make_optimizer(actor, critic, cfg)
    steps, rows = [], []
    optimizer.register_step_pre_hook(lambda opt, args, kwargs: steps.append(1))
    actor.register_forward_pre_hook(
        lambda module, args, kwargs: rows.extend(map(tuple, kwargs["input_ids"].tolist())), with_kwargs=True)
    generator = torch.Generator().manual_seed(0)
    stats, skipped, _ = ppo_update(actor, critic, rollout, cfg, optimizer, Accelerator(), generator)
    assert skipped == 0
    return len(steps), rows, stats


@pytest.mark.parametrize("batch, mini, epochs, expected_steps", [(4, 4, 1, 1), (8, 4, 2, 4)])
def test_every_row_is_seen_once_per_epoch(models, tiny_tokenizer, batch, mini, epochs, expected_steps):  # [22]
    cfg = make_config("ppo", "ci", rollout_batch=batch, minibatch=mini, ppo_epochs=epochs,
                      max_new_tokens=4)
    rollout = rollout_of(models, tiny_tokenizer, cfg, n=batch)
    steps, rows, _ = count_update(models, cfg, rollout)
    assert steps == expected_steps
    every_row = sorted(map(tuple, rollout.query_responses.tolist()))
    assert len(set(every_row)) == batch
    assert sorted(rows) == sorted(every_row * epochs)


def test_gradients_are_clipped_and_the_pre_clip_norm_is_reported(models, tiny_tokenizer):  # [23]
    cfg = make_config("ppo", "ci", rollout_batch=4, minibatch=4, ppo_epochs=1, max_new_tokens=4,
                      max_grad_norm=1e-3)
    rollout = rollout_of(models, tiny_tokenizer, cfg)
    actor, _, _, critic = models
    optimizer, _ = make_optimizer(actor, critic, cfg)
    at_step = {}
    optimizer.register_step_pre_hook(lambda opt, args, kwargs: at_step.update(
        actor=float(grad_norm(actor)), critic=float(grad_norm(critic))))
    stats, _, _ = ppo_update(actor, critic, rollout, cfg, optimizer, Accelerator(), torch.Generator().manual_seed(1))
    for name in ("actor", "critic"):
        assert stats[f"{name}_grad_norm"] > 10 * cfg.max_grad_norm   # reported: the norm before clipping
        assert at_step[name] <= cfg.max_grad_norm * (1 + 1e-4)        # applied: the clipped gradient
        assert at_step[name] == pytest.approx(cfg.max_grad_norm, rel=1e-3)


def run_ppo(tokenizer, draws=0, **overrides):
    """(cfg, history) of a short train_ppo run on fresh models, after `draws` unrelated random
    numbers (train_ppo must seed itself, not rely on the caller's RNG state)."""
    cfg = make_config("ppo", "ci", **{"iterations": 3, "max_new_tokens": 6, "rollout_batch": 8,
                                      "minibatch": 4, **overrides})
    models = make_models(tokenizer)
    torch.rand(draws)
    _, _, history, _ = train_ppo(models, tokenizer, prompt_ids(tokenizer, 8), cfg,
                                 log=lambda message: None, progress=False)
    return cfg, history


def test_learning_rate_anneals_linearly_to_zero(tiny_tokenizer, monkeypatch):          # [23]
    lrs = []

    def spy(*args):
        optimizer, schedule = make_optimizer(*args)
        optimizer.register_step_pre_hook(lambda opt, args, kwargs: lrs.append(opt.param_groups[0]["lr"]))
        spy.optimizer = optimizer
        return optimizer, schedule
    monkeypatch.setattr(ppo_loop, "make_optimizer", spy)
    cfg, _ = run_ppo(tiny_tokenizer, ppo_epochs=2, max_new_tokens=4)
    steps = cfg.iterations * cfg.ppo_epochs * cfg.rollout_batch // cfg.minibatch
    assert len(lrs) == steps and lrs[0] == cfg.actor_lr
    assert all(a >= b for a, b in zip(lrs, lrs[1:]))
    assert lrs[-1] <= cfg.actor_lr / cfg.iterations + 1e-12         # the last update is nearly at 0
    assert [g["lr"] for g in spy.optimizer.param_groups] == pytest.approx([0.0, 0.0], abs=1e-12)  # the run ends at 0


def test_smoke_run_is_deterministic_and_takes_small_steps(tiny_tokenizer):             # [24, 28]
    _, first = run_ppo(tiny_tokenizer)
    _, second = run_ppo(tiny_tokenizer, draws=3)
    _, other_seed = run_ppo(tiny_tokenizer, seed=7, iterations=1)
    strip = lambda h: [{k: v for k, v in row.items() if not k.startswith("time_")} for row in h]
    assert strip(first) == strip(second)                             # same seed: same metrics, bit for bit
    assert strip(first)[0] != strip(other_seed)[0]                   # and the seed is what decides them
    for row in first:
        assert row["approx_kl"] < 0.1 and row["clipfrac"] < 0.5, row


def test_adaptive_kl_coef_follows_the_controller(tiny_tokenizer):                       # [14]
    cfg, history = run_ppo(tiny_tokenizer, adaptive_kl=True, target_kl=0.5, kl_horizon=20,
                           ppo_epochs=1, minibatch=8)
    assert history[0]["kl_coef"] == cfg.kl_coef
    for before, after in zip(history, history[1:]):
        expected = ppo.update_kl_coef(before["kl_coef"], before["kl"], cfg.target_kl, cfg.rollout_batch,
                                      cfg.kl_horizon)
        assert after["kl_coef"] == pytest.approx(expected, rel=1e-12)
    # iteration 1 has KL 0 (policy = reference), far below target: beta falls by the full 20%
    assert history[1]["kl_coef"] == pytest.approx(cfg.kl_coef * (1 - 0.2 * 8 / 20))


# ----------------------------------------------------------------------------- LoRA

def test_lora_trains_only_adapters_and_the_reference_is_the_base(tiny_tokenizer):
    from peft import LoraConfig, get_peft_model
    from peft.tuners.lora import LoraLayer

    actor, _, reward_model, critic = make_models(tiny_tokenizer)
    original = copy.deepcopy(actor)
    lora = LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", task_type="CAUSAL_LM")
    untouched = get_peft_model(copy.deepcopy(actor), lora)
    actor = get_peft_model(actor, lora)
    assert not isinstance(actor.base_model.model.lm_head, LoraLayer)  # all-linear leaves the output layer out
    before = {k: v.clone() for k, v in actor.state_dict().items()}
    cfg = make_config("ppo", "ci", iterations=2, max_new_tokens=6, rollout_batch=8, minibatch=4, lora_rank=4)
    actor, _, history, _ = train_ppo((actor, None, reward_model, critic), tiny_tokenizer,
                                     prompt_ids(tiny_tokenizer, 8), cfg, log=lambda m: None,
                                     progress=False)
    assert len(history) == 2
    assert abs(history[0]["kl"]) < 1e-6 and abs(history[1]["kl"]) > 1e-6  # KL against the adapter-free base
    changed = {k for k, v in actor.state_dict().items() if not torch.equal(before[k], v)}
    assert changed and all("lora_" in k for k in changed)
    # the reference (adapters off) is exactly the original actor; the trained policy is not
    seq = torch.tensor([prompt_ids(tiny_tokenizer)[0] + [5, 6, 7, 8]])
    mask, P = torch.ones_like(seq), seq.shape[1] - 4
    base = ppo.logprobs_from_logits(response_logits(original, seq, mask, P), seq[:, P:])
    with torch.no_grad():
        reference = reference_logprobs(actor, None, seq, mask, P, 1.0)
        torch.testing.assert_close(reference, base, atol=1e-6, rtol=0)
        policy = ppo.logprobs_from_logits(response_logits(actor, seq, mask, P), seq[:, P:])
    assert not torch.allclose(policy, base, atol=1e-6)
    # merging: a plain model with the trained policy; an untrained adapter merges to the original
    merged = actor.merge_and_unload()
    assert isinstance(merged, type(original))
    merged_logprobs = ppo.logprobs_from_logits(response_logits(merged, seq, mask, P), seq[:, P:])
    torch.testing.assert_close(merged_logprobs, policy, atol=1e-5, rtol=0)
    differs = {k for k, v in merged.state_dict().items() if not torch.equal(original.state_dict()[k], v)}
    assert differs and all(k.endswith("proj.weight") or ".fc" in k for k in differs)
    plain = untouched.merge_and_unload().state_dict()
    assert all(torch.equal(plain[k], v) for k, v in original.state_dict().items())


def test_critic_lora_trains_adapters_and_value_head_and_resumes_exactly(tiny_tokenizer, tmp_path):
    """critic_lora_rank: only the critic's adapters and its value head train (the reward model it
    was copied from is untouched), and a run resumed from its checkpoint ends where an
    uninterrupted one does."""
    from peft import LoraConfig, get_peft_model

    messages = []

    def run(resume_dir=None, checkpoint_every=0):
        actor, reference, reward_model, critic = make_models(tiny_tokenizer)
        critic = get_peft_model(critic, LoraConfig(r=4, lora_alpha=8, target_modules="all-linear",
                                                   task_type="SEQ_CLS"))
        before = {k: v.clone() for k, v in critic.state_dict().items()}
        cfg = make_config("ppo", "ci", iterations=3, max_new_tokens=6, rollout_batch=8, minibatch=4,
                          critic_lora_rank=4, checkpoint_every=checkpoint_every)
        _, critic, history, _ = train_ppo((actor, reference, reward_model, critic), tiny_tokenizer,
                                          prompt_ids(tiny_tokenizer, 8), cfg, log=messages.append,
                                          progress=False, resume_dir=resume_dir)
        return before, critic, history

    before, critic, history = run()
    changed = {k for k, v in critic.state_dict().items() if not torch.equal(before[k], v)}
    assert changed and all("lora_" in k or ".score." in k for k in changed)
    assert any(".score." in k for k in changed)  # the value head learns in full
    run(tmp_path / "resume", checkpoint_every=2)  # leaves a checkpoint at iteration 2
    messages.clear()
    _, resumed, resumed_history = run(tmp_path / "resume", checkpoint_every=2)  # runs iteration 3 only
    assert any(m.startswith("resumed from") and "iteration 2" in m for m in messages), messages
    assert [h["iteration"] for h in resumed_history] == [1, 2, 3]
    for k, v in critic.state_dict().items():
        torch.testing.assert_close(resumed.state_dict()[k], v, atol=1e-6, rtol=0)
