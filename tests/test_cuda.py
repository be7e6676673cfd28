"""The GPU path on a real CUDA device: what tests/test_gpu_path.py reproduces on a CPU.

Skipped without a GPU. `make gpu-check` runs these (pytest -m cuda) and then
bench/gpu_check.py, a short pipeline at the opt-125m shape.
"""
import copy
from functools import partial

import pytest
import torch

from rlhf import checkpoint, config, data
from rlhf.runtime import choose_precision, explain_precision, halve_on_oom
from rlhf.steps import make_accelerator
from rlhf.train import fit
from test_gpu_path import four_models, overflow_on_first_call, prompt_ids, tiny_lm, toy_items

pytestmark = [pytest.mark.cuda,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (make gpu-check)")]


def native_bf16() -> bool:
    return choose_precision(torch.cuda.get_device_capability(), False)[0] == "bf16"


def test_auto_precision_matches_this_gpu():
    major, minor = torch.cuda.get_device_capability()
    precision, reason = explain_precision("auto")
    assert precision == ("bf16" if major >= 8 else "fp16") and f"{major}.{minor}" in reason


def test_fp16_uses_the_cuda_scaler_and_an_overflow_backs_off():
    accelerator = make_accelerator("fp16")
    assert accelerator.device.type == "cuda" and accelerator.scaler is not None
    cfg = config.make_config("actor", "ci", batch_size=8, max_steps=2, checkpoint_every=0,
                             mixed_precision="fp16", max_bad_steps=1)
    model, history = fit(tiny_lm(), toy_items(), partial(data.collate_sft, pad_id=0),
                         partial(overflow_on_first_call, calls=[]), cfg, log=lambda m: None, progress=False)
    first, second = history["steps"]
    assert first["skipped"] and first["loss_scale"] == 2.0 ** 15
    assert not second["skipped"] and all(torch.isfinite(p).all() for p in model.parameters())


@pytest.mark.parametrize("precision", ["fp16", "bf16"])
def test_ppo_on_the_gpu_trains_and_starts_at_ratio_one(tiny_tokenizer, precision):
    if precision == "bf16" and not native_bf16():
        pytest.skip("this GPU has no native bf16")
    from rlhf.ppo_loop import train_ppo
    cfg = config.make_config("ppo", "ci", iterations=3, ppo_epochs=1, rollout_batch=8, minibatch=8,
                             max_new_tokens=6, mixed_precision=precision)
    models = four_models(len(tiny_tokenizer))
    before = copy.deepcopy(models[0].state_dict())
    actor, _, history, _ = train_ppo(models, tiny_tokenizer, prompt_ids(), cfg,
                                     log=lambda m: None, progress=False)
    assert history[0]["ratio_mean"] == pytest.approx(1.0, abs=1e-6)
    assert all("policy_loss" in row for row in history)
    assert sum(row["skipped_updates"] for row in history) < len(history)
    assert any(not torch.equal(before[k].cpu(), v.cpu()) for k, v in actor.state_dict().items())


def test_cuda_rng_round_trips_through_a_resume(tmp_path):
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(2))], lr=0.1)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    torch.cuda.manual_seed_all(5)
    checkpoint.save_train_state(tmp_path, {"opt": optimizer}, {"opt": scheduler}, {})
    expected = torch.rand(4, device="cuda")
    torch.rand(100, device="cuda")                     # move the generator on
    checkpoint.load_train_state(tmp_path, {"opt": optimizer}, {"opt": scheduler})
    assert torch.equal(torch.rand(4, device="cuda"), expected)


def test_a_real_out_of_memory_error_is_halved():
    free, _ = torch.cuda.mem_get_info()
    row_bytes = free // 3                              # 4 rows never fit, 2 rows do
    logs = []

    def allocate(rows):
        block = torch.empty(rows * row_bytes, dtype=torch.uint8, device="cuda")
        return block.numel()
    _, rows = halve_on_oom(allocate, 4, logs.append, "test chunk")
    assert rows == 2 and logs == ["out of memory: test chunk halved to 2 rows"]
