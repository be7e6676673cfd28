"""The heads and the sampling PPO relies on (issue 16): the reward model's and the critic's head
run in float32 under bf16 autocast (not rounded to bf16's grid, 1/32 between 4 and 8, where a raw
reward model's scores lie); generate samples from exactly pi / T whatever the model's own
generation_config says; and the critic starts in the units of the normalised score."""
import json
import logging
from unittest import mock

import pytest
import torch
from peft import get_peft_model
from transformers import AutoModelForSequenceClassification

from rlhf import ppo
from rlhf.config import make_config
from rlhf.generation import generate, position_ids_from_mask
from rlhf.models import load_ppo_models, lora_config
from rlhf.reward import sequence_scores, token_scores
from test_ppo_details import make_models, rollout_of


def raw_rm_sized(reward_model, scale: float = 6.0):
    """The head rescaled so scores are a few units, like a trained reward model's (-4 to -9)."""
    with torch.no_grad():
        reward_model.score.weight.mul_(scale / reward_model.score.weight.norm())
    return reward_model


def batch(tokenizer):
    ids = torch.tensor([[1, 5, 6, 7, 8, 9, 10, 2], [0, 0, 1, 11, 12, 13, 14, 2]])  # (B, T) left-padded
    return ids, (ids != tokenizer.pad_token_id).long()


def hidden_states(model, ids, mask):
    return model.base_model(input_ids=ids, attention_mask=mask, position_ids=position_ids_from_mask(mask),
                            use_cache=False).last_hidden_state                              # (B, T, H)


@pytest.mark.parametrize("lora", [False, True])
def test_head_runs_in_float32_under_bf16_autocast(tiny_tokenizer, lora):
    reward_model = raw_rm_sized(make_models(tiny_tokenizer)[2])
    ids, mask = batch(tiny_tokenizer)
    with torch.no_grad():
        fp32 = token_scores(reward_model, ids, mask)                                         # (B, T)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            hidden = hidden_states(reward_model, ids, mask)                                  # (B, T, H) bf16
        if lora:
            reward_model = get_peft_model(reward_model, lora_config(4, "SEQ_CLS"))
        with torch.autocast("cpu", dtype=torch.bfloat16):
            mixed = token_scores(reward_model, ids, mask)                                    # (B, T)
    assert mixed.dtype == torch.float32 and 2 < fp32.abs().mean() < 12
    # the head itself is exact: its float32 weights on the bf16 backbone's hidden states cast up
    weight = reward_model.get_base_model().score.weight if lora else reward_model.score.weight  # (1, H)
    torch.testing.assert_close(mixed, hidden.float() @ weight[0].float(), atol=1e-5, rtol=1e-5)
    assert not mixed.eq(mixed.bfloat16().float()).all(), "scores rounded to bf16: the head ran in bf16"
    torch.testing.assert_close(mixed, fp32, atol=0.1, rtol=0.02)  # only the backbone's rounding is left


# ----------------------------------------------------------------------------- sampling from pi / T

def polluted(actor):
    """The actor with a Hub-style generation_config that would reshape every sampling step, and
    logits scaled up (a random model's are nearly uniform, where those settings change little)."""
    actor.lm_head.register_forward_hook(lambda module, inputs, out: out * 30)
    actor.generation_config.update(repetition_penalty=5.0, no_repeat_ngram_size=2, top_k=2, top_p=0.5,
                                   min_p=0.3, min_new_tokens=8, do_sample=True)
    return actor


def sample_by_hand(actor, input_ids, R: int, temperature: float, eos: int, pad: int):
    """The reference: R steps of softmax(logits / T) -> multinomial, pad after the first EOS.  (B, R)"""
    seq, done = input_ids, torch.zeros(input_ids.shape[0], dtype=torch.bool)
    for _ in range(R):
        logits = actor(input_ids=seq, use_cache=False).logits[:, -1].float()             # (B, V)
        token = torch.multinomial(torch.softmax(logits / temperature, -1), 1).squeeze(1)  # (B,)
        token = torch.where(done, torch.full_like(token, pad), token)
        done |= token == eos
        seq = torch.cat([seq, token[:, None]], 1)
    return seq[:, input_ids.shape[1]:]                                                   # (B, R)


def test_generate_samples_from_pi_over_t_whatever_the_model_config_says(tiny_tokenizer):   # [4]
    actor = polluted(make_models(tiny_tokenizer)[0])
    ids = torch.tensor([[1, 5, 6, 7], [1, 8, 9, 10]])                                    # (B, P)
    eos, pad, R, T = tiny_tokenizer.eos_token_id, tiny_tokenizer.pad_token_id, 12, 0.7
    torch.manual_seed(3)
    ours = generate(actor, ids, torch.ones_like(ids), tiny_tokenizer, R, True, T)         # (B, r)
    torch.manual_seed(3)
    reference = sample_by_hand(actor, ids, R, T, eos, pad)                               # (B, R)
    assert torch.equal(ours, reference[:, :ours.shape[1]])
    torch.manual_seed(3)
    theirs = actor.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=R,
                            temperature=T, pad_token_id=pad, eos_token_id=eos)[:, ids.shape[1]:]
    assert not torch.equal(theirs, reference[:, :theirs.shape[1]])  # the model's own config reshapes


def test_generate_with_a_plain_model_config_logs_no_length_clash(tiny_tokenizer):
    actor = make_models(tiny_tokenizer)[0]                   # generation_config: min_length 0, no min_new_tokens
    ids = torch.tensor([[1, 5, 6, 7]])
    with mock.patch.object(logging.getLogger("transformers.generation.utils"), "warning") as warning:
        generate(actor, ids, torch.ones_like(ids), tiny_tokenizer, 4, True, 1.0)
    assert not [c for c in warning.call_args_list if "min_new_tokens" in str(c)]


def test_generate_refuses_a_processor_only_none_switches_off(tiny_tokenizer):
    actor = make_models(tiny_tokenizer)[0]
    actor.generation_config.bad_words_ids = [[5]]
    ids = torch.tensor([[1, 5, 6, 7]])
    with pytest.raises(ValueError, match="bad_words_ids"):
        generate(actor, ids, torch.ones_like(ids), tiny_tokenizer, 4, True, 1.0)


# ----------------------------------------------------------------------------- the critic in the score's units

MEAN, STD = -6.0, 3.0  # a trained reward model's SFT statistics: raw scores far from 0


def saved_models(tokenizer, folder):
    """actor and a reward model scoring about MEAN everywhere, saved as stages 1 and 2 save them."""
    actor, _, reward_model, _ = make_models(tokenizer)
    w, norm = reward_model.score.weight[0], reward_model.base_model.decoder.final_layer_norm     # (H,)
    with torch.no_grad():  # the hidden state nearly constant, at MEAN along w (OPT's head has no bias)
        norm.weight.mul_(0.01)
        norm.bias.copy_(MEAN * w / w.dot(w))
    actor.save_pretrained(folder / "actor")
    reward_model.save_pretrained(folder / "critic")
    (folder / "critic" / "reward_stats.json").write_text(json.dumps({"mean": MEAN, "std": STD}))
    return folder / "actor", folder / "critic"


def test_load_ppo_models_folds_the_statistics_into_both_heads(tiny_tokenizer, tmp_path):  # [15, 21]
    actor_dir, critic_dir = saved_models(tiny_tokenizer, tmp_path)
    raw = AutoModelForSequenceClassification.from_pretrained(critic_dir).eval()
    ids, mask = batch(tiny_tokenizer)
    _, _, reward_model, critic = load_ppo_models(actor_dir, critic_dir, make_config("ppo", "ci"))
    with torch.no_grad():
        expected = (sequence_scores(raw, ids, mask) - MEAN) / STD                          # (B,)
        torch.testing.assert_close(sequence_scores(reward_model, ids, mask), expected)
        torch.testing.assert_close(sequence_scores(critic, ids, mask), expected)
    _, _, reward_model, critic = load_ppo_models(actor_dir, critic_dir, make_config("ppo", "ci", normalize_score=False))
    with torch.no_grad():
        torch.testing.assert_close(sequence_scores(reward_model, ids, mask), sequence_scores(raw, ids, mask))


def first_rollout(models, tokenizer):
    """A rollout of the policy = reference (KL 0) whose normalised score is about 0."""
    cfg = make_config("ppo", "ci", max_new_tokens=6, missing_eos_penalty=0.0)
    rollout = rollout_of(models, tokenizer, cfg, kl_coef=0.0)
    value_loss, _ = ppo.value_loss(rollout.values, rollout.values, rollout.returns, rollout.mask, cfg.clip_value)
    return rollout, rollout.returns - rollout.values, float(value_loss)  # GAE advantages before whitening


def test_critic_starts_in_the_units_of_the_score(tiny_tokenizer, tmp_path):  # [15, 18, 21]
    actor_dir, critic_dir = saved_models(tiny_tokenizer, tmp_path)
    actor, reference, reward_model, critic = load_ppo_models(actor_dir, critic_dir, make_config("ppo", "ci"))
    torch.manual_seed(0)
    rollout, advantages, value_loss = first_rollout((actor, reference, reward_model, critic), tiny_tokenizer)
    assert rollout.scores.abs().max() < 0.05 and rollout.rewards.abs().max() < 0.05  # zero reward, zero KL
    # no end-of-answer offset: nothing to learn, so no advantage and no value loss
    assert advantages.mul(rollout.mask).abs().max() < 0.05 and value_loss < 1e-3
    # the old critic, the reward model in raw units: V = MEAN + v shifts token t by -MEAN * lambda^(L-1-t)
    raw_critic = AutoModelForSequenceClassification.from_pretrained(critic_dir).eval()
    torch.manual_seed(0)
    rollout, advantages, raw_loss = first_rollout((actor, reference, reward_model, raw_critic), tiny_tokenizer)
    last = rollout.mask.sum(1).long() - 1                                                  # (B,)
    torch.testing.assert_close(advantages.gather(1, last[:, None]).squeeze(1), torch.full_like(last, -MEAN, dtype=torch.float),
                               atol=0.05, rtol=0)
    assert raw_loss > 10
