"""The scalar heads in full precision: under bf16 autocast the reward model's and the critic's
head still runs in float32 on float32 hidden states, so scores and values are not rounded to
bf16's grid (1/32 between 4 and 8, where a raw reward model's scores lie)."""
import pytest
import torch
from peft import get_peft_model

from rlhf.generation import position_ids_from_mask
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
