"""The PPO loop on real (tiny, random) models: the properties ppo-details.md asks for."""
import copy

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, OPTConfig

from rlhf import ppo
from rlhf.config import make_config
from rlhf.data import collate_prompts
from rlhf.models import disable_dropout
from rlhf.reward import fold_score_stats
from rlhf.ppo_loop import Timer, minibatch, ppo_losses, ppo_update, make_optimizer, train_ppo
from rlhf.rollout import make_rollout, response_logits



def opt_config(vocab, **kw):
    return OPTConfig(vocab_size=vocab, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                     ffn_dim=64, word_embed_proj_dim=32, max_position_embeddings=64, dropout=0.1,
                     pad_token_id=0, bos_token_id=1, eos_token_id=2, **kw)


@pytest.fixture()
def four_models(tiny_tokenizer):
    torch.manual_seed(0)
    actor = disable_dropout(AutoModelForCausalLM.from_config(opt_config(len(tiny_tokenizer))))
    reference = copy.deepcopy(actor).eval()
    reward_model = disable_dropout(AutoModelForSequenceClassification.from_config(
        opt_config(len(tiny_tokenizer), num_labels=1))).eval()
    critic = copy.deepcopy(reward_model)
    return actor, reference, reward_model, critic


def prompt_batch(tokenizer, n=4):
    ids = [[1] + tokenizer("Human: What is up? Assistant:", add_special_tokens=False).input_ids[: 3 + i % 3]
           for i in range(n)]
    return collate_prompts(ids, tokenizer.pad_token_id), ids


def test_dropout_is_off_everywhere(four_models):
    actor = four_models[0].train()
    assert all(m.p == 0 for m in actor.modules() if isinstance(m, torch.nn.Dropout))
    ids = torch.tensor([[1, 5, 6, 7]])
    assert torch.equal(actor(ids).logits, actor(ids).logits)


def test_left_padding_does_not_change_logprobs(four_models):
    actor = four_models[0].eval()
    seq = torch.tensor([[1, 5, 6, 7, 8, 9]])
    P = 3
    plain = ppo.logprobs_from_logits(response_logits(actor, seq, torch.ones_like(seq), P), seq[:, P:])
    padded = torch.cat([torch.zeros(1, 5, dtype=torch.long), seq], 1)
    mask = torch.cat([torch.zeros(1, 5, dtype=torch.long), torch.ones_like(seq)], 1)
    with_pads = ppo.logprobs_from_logits(response_logits(actor, padded, mask, P + 5), padded[:, P + 5:])
    assert torch.allclose(plain, with_pads, atol=1e-4)


def test_ratio_is_one_and_nothing_clipped_before_the_first_step(four_models, tiny_tokenizer):
    cfg = make_config("ppo", "ci", temperature=0.7, max_new_tokens=8)
    batch, _ = prompt_batch(tiny_tokenizer)
    rollout, _ = make_rollout(four_models, tiny_tokenizer, batch["input_ids"], batch["attention_mask"],
                              cfg, cfg.kl_coef, Timer())
    actor, _, _, critic = four_models
    _, _, stats = ppo_losses(actor, critic, minibatch(rollout, torch.arange(4)), rollout.P, cfg)
    assert abs(float(stats["ratio_mean"]) - 1.0) < 1e-5
    assert float(stats["clipfrac"]) == 0.0
    assert float(stats["approx_kl"]) < 1e-8
    # the actor equals the reference: the KL part of the reward is exactly zero
    assert torch.allclose(rollout.non_score_rewards, torch.zeros_like(rollout.non_score_rewards), atol=1e-6)


@pytest.mark.parametrize("precision", ["no", "bf16"])
def test_first_ratio_is_one_in_the_real_loop_and_the_models_come_back_plain(four_models, tiny_tokenizer,
                                                                             precision):
    """Rollout and update run under the same autocast: the first ratio is 1 in bf16 too
    (ppo-details #6, #25), and train_ppo hands back models with no autocast left on forward."""
    cfg = make_config("ppo", "ci", iterations=1, ppo_epochs=1, rollout_batch=8, minibatch=8,
                      max_new_tokens=6, mixed_precision=precision)
    _, ids = prompt_batch(tiny_tokenizer, n=8)
    actor, critic, history, _ = train_ppo(four_models, tiny_tokenizer, ids, cfg,
                                          log=lambda m: None, progress=False)
    assert abs(history[0]["ratio_mean"] - 1.0) < 1e-5 and history[0]["clipfrac"] == 0.0
    fresh = AutoModelForCausalLM.from_config(opt_config(len(tiny_tokenizer))).eval()
    fresh.load_state_dict(actor.state_dict())
    seq = torch.tensor([[1, 5, 6, 7, 8, 9]])
    logits = actor.eval()(seq).logits
    assert logits.dtype == torch.float32
    torch.testing.assert_close(logits, fresh(seq).logits, atol=1e-6, rtol=0)


def test_sampled_rollouts_differ_between_seeds(four_models, tiny_tokenizer):
    cfg = make_config("ppo", "ci", max_new_tokens=8)
    batch, _ = prompt_batch(tiny_tokenizer)
    out = []
    for seed in (1, 2):
        torch.manual_seed(seed)
        out.append(make_rollout(four_models, tiny_tokenizer, batch["input_ids"], batch["attention_mask"],
                                cfg, cfg.kl_coef, Timer())[0].responses)
    assert not torch.equal(out[0], out[1])


def test_all_empty_responses_give_finite_update(four_models, tiny_tokenizer):
    actor, _, _, critic = four_models
    bonus = torch.zeros(actor.lm_head.out_features)
    bonus[tiny_tokenizer.eos_token_id] = 100.0  # EOS overwhelmingly likely: every answer is just EOS
    actor.lm_head.register_forward_hook(lambda module, inputs, out: out + bonus)
    cfg = make_config("ppo", "ci", max_new_tokens=8, minibatch=4, rollout_batch=4)
    batch, _ = prompt_batch(tiny_tokenizer)
    rollout, _ = make_rollout(four_models, tiny_tokenizer, batch["input_ids"], batch["attention_mask"],
                              cfg, cfg.kl_coef, Timer())
    assert rollout.mask.sum(1).tolist() == [1.0] * 4  # only the EOS is valid
    from accelerate import Accelerator
    optimizer, _ = make_optimizer(actor, critic, cfg)
    stats, skipped, _ = ppo_update(actor, critic, rollout, cfg, optimizer, Accelerator(), torch.Generator().manual_seed(0))
    assert skipped == 0 and all(torch.isfinite(torch.tensor(v)) for v in stats.values())


def test_train_ppo_logs_every_number_and_changes_the_actor(four_models, tiny_tokenizer):
    cfg = make_config("ppo", "ci", iterations=2, max_new_tokens=6)
    _, ids = prompt_batch(tiny_tokenizer, n=8)
    before = copy.deepcopy(four_models[0].state_dict())
    actor, critic, history, samples = train_ppo(four_models, tiny_tokenizer, ids, cfg,
                                                log=lambda m: None, progress=False)
    keys = {"score", "rlhf_reward", "kl", "kl_k3", "entropy", "response_length", "eos_rate",
            "ratio_mean", "clipfrac", "approx_kl", "policy_loss", "value_loss", "time_generate",
            "time_score", "time_train"}
    assert len(history) == 2 and keys <= set(history[-1])
    assert samples
    changed = any(not torch.equal(before[k], v) for k, v in actor.state_dict().items())
    assert changed


def test_non_finite_updates_are_skipped_then_stop_the_stage(four_models, tiny_tokenizer):
    cfg = make_config("ppo", "ci", iterations=3, max_new_tokens=4, max_bad_updates=2)
    _, ids = prompt_batch(tiny_tokenizer, n=8)
    logs = []
    with pytest.raises(FloatingPointError, match="non-finite"):
        fold_score_stats(four_models[2], float("nan"), 1.0)  # a reward model that scores NaN
        train_ppo(four_models, tiny_tokenizer, ids, cfg, log=logs.append, progress=False)
    assert any("skipped" in line for line in logs)
