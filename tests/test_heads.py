"""The scalar heads in full precision: under bf16 autocast the reward model's and the critic's
head still runs in float32 on float32 hidden states, so scores and values are not rounded to
bf16's grid (1/32 between 4 and 8, where a raw reward model's scores lie)."""
import pytest
import torch
from peft import get_peft_model

from rlhf.generation import generate, position_ids_from_mask
from rlhf.models import lora_config
from rlhf.reward import token_scores
from test_ppo_details import make_models


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
                                   min_p=0.3, do_sample=True)
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


def test_generate_refuses_a_processor_only_none_switches_off(tiny_tokenizer):
    actor = make_models(tiny_tokenizer)[0]
    actor.generation_config.bad_words_ids = [[5]]
    ids = torch.tensor([[1, 5, 6, 7]])
    with pytest.raises(ValueError, match="bad_words_ids"):
        generate(actor, ids, torch.ones_like(ids), tiny_tokenizer, 4, True, 1.0)
