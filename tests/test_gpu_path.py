"""The GPU path, reproduced on a CPU: fp16 with a real loss scaler, `auto` precision per device,
the PPO math in fp32 under any autocast, PPO under memory pressure, and CUDA RNG in resumes.

fp16 runs here as on a GPU: `make_accelerator("fp16")` gives accelerate torch's CPU GradScaler
where it would put the CUDA one, so backward scales, unscale_ runs once, and an overflowed step is
skipped by the scaler, which halves its scale. tests/test_cuda.py runs the same on a real GPU.
"""
import copy
import math
from functools import partial

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, OPTConfig

from rlhf import checkpoint, config, data, ppo, ppo_loop
from rlhf.models import disable_dropout
from rlhf.ppo_loop import Timer, make_optimizer, minibatch, ppo_losses, ppo_update, train_ppo
from rlhf.rollout import make_rollout
from rlhf.runtime import choose_precision
from rlhf.sft import sft_loss_fn
from rlhf.steps import enable_gradient_checkpointing, make_accelerator
from rlhf.train import fit

OOM = torch.OutOfMemoryError("CUDA out of memory (simulated)")


def opt_config(vocab, **kw):
    return OPTConfig(vocab_size=vocab, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                     ffn_dim=64, word_embed_proj_dim=32, max_position_embeddings=64,
                     pad_token_id=0, bos_token_id=1, eos_token_id=2, **kw)


def four_models(vocab, seed=0):
    torch.manual_seed(seed)
    actor = disable_dropout(AutoModelForCausalLM.from_config(opt_config(vocab)))
    reward_model = disable_dropout(AutoModelForSequenceClassification.from_config(
        opt_config(vocab, num_labels=1))).eval()
    return actor, copy.deepcopy(actor).eval(), reward_model, copy.deepcopy(reward_model)


def prompt_ids(n=8):
    """bos + 3..6 token prompts: unequal lengths, so the batch is left-padded."""
    g = torch.Generator().manual_seed(0)
    return [[1] + torch.randint(3, 60, (3 + i % 4,), generator=g).tolist() for i in range(n)]


def eos_likely(actor, bonus=3.0):
    """Raise the EOS logit, so sampled answers end at different lengths."""
    extra = torch.zeros(actor.lm_head.out_features)
    extra[2] = bonus
    actor.lm_head.register_forward_hook(lambda module, inputs, out: out + extra)


def rollout_of(models, tokenizer, cfg, n=8, chunk=None, log=print):
    batch = data.collate_prompts(prompt_ids(n), tokenizer.pad_token_id)
    torch.manual_seed(3)
    return make_rollout(models, tokenizer, batch["input_ids"], batch["attention_mask"], cfg,
                        cfg.kl_coef, Timer(), chunk, log)


# ----------------------------------------------------------------------------- auto precision

@pytest.mark.parametrize("capability, cpu_bf16, expected", [
    ((7, 5), False, "fp16"),   # T4 (Colab's free GPU): bf16 only emulated
    ((7, 0), True, "fp16"),    # V100: the CPU's bf16 does not matter when training on the GPU
    ((8, 0), False, "bf16"),   # A100
    ((8, 9), False, "bf16"),   # L4
    ((9, 0), False, "bf16"),   # H100
    (None, True, "bf16"),      # a CPU with AVX512-BF16 or AMX
    (None, False, "no"),       # any other CPU: fp32
])
def test_auto_precision_is_native_only(capability, cpu_bf16, expected):
    precision, reason = choose_precision(capability, cpu_bf16)
    assert precision == expected
    assert reason and (capability is None or f"{capability[0]}.{capability[1]}" in reason)


def test_auto_precision_reads_the_device(monkeypatch):
    from rlhf import runtime
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda *a: (7, 5))
    assert runtime.explain_precision("auto")[0] == "fp16"
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda *a: (8, 6))
    assert runtime.resolve_mixed_precision("auto") == "bf16"
    assert runtime.explain_precision("fp16") == ("fp16", "asked for")


# ----------------------------------------------------------------------------- fp16 with a loss scaler

def tiny_lm():
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(OPTConfig(
        vocab_size=64, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, ffn_dim=32,
        word_embed_proj_dim=16, max_position_embeddings=32, pad_token_id=0, bos_token_id=1, eos_token_id=2))


def toy_items(n=32):
    g = torch.Generator().manual_seed(0)
    return [{"input_ids": torch.randint(3, 64, (8,), generator=g).tolist(),
             "labels": [-100, -100] + torch.randint(3, 64, (6,), generator=g).tolist()} for _ in range(n)]


def test_fp16_on_cpu_is_the_cuda_sequence():
    accelerator = make_accelerator("fp16")
    assert isinstance(accelerator.scaler, torch.amp.GradScaler) and accelerator.native_amp
    model, _ = accelerator.prepare(tiny_lm(), torch.optim.SGD(tiny_lm().parameters(), lr=0.1))
    seen = []
    model.model.decoder.layers[0].fc1.register_forward_hook(lambda m, i, out: seen.append(out.dtype))
    with accelerator.autocast():
        logits = model(input_ids=torch.tensor([[1, 5, 6]])).logits
    assert seen == [torch.float16] and logits.dtype == torch.float32  # fp16 inside, fp32 out


def overflow_on_first_call(model, batch, calls):
    """The SFT loss, times 1e35 on the first call: finite, but 2^16 times it overflows fp32, as a
    real fp16 overflow does at the initial scale."""
    loss, stats = sft_loss_fn(model, batch)
    calls.append(1)
    return (loss * 1e35 if len(calls) == 1 else loss), stats


@pytest.mark.parametrize("steps", [1, 2])
def test_fp16_overflow_halves_the_scale_and_the_next_step_trains(steps):
    cfg = config.make_config("actor", "ci", batch_size=8, max_steps=steps, checkpoint_every=0,
                             mixed_precision="fp16", max_bad_steps=1)
    logs, initial = [], tiny_lm().state_dict()
    model, history = fit(tiny_lm(), toy_items(), partial(data.collate_sft, pad_id=0),
                         partial(overflow_on_first_call, calls=[]), cfg, log=logs.append, progress=False)
    first = history["steps"][0]
    assert first["skipped"] and first["loss_scale"] == 2.0 ** 15      # backed off from 2^16
    assert any("overflowed" in line for line in logs)
    unchanged = all(torch.equal(initial[k], v) for k, v in model.state_dict().items())
    if steps == 1:
        assert unchanged                                              # the overflowed step never reached the weights
    else:
        second = history["steps"][1]
        assert not second["skipped"] and second["loss_scale"] == 2.0 ** 15
        assert not unchanged and all(torch.isfinite(p).all() for p in model.parameters())


def test_fp16_scaler_state_is_resumed(tmp_path):
    cfg = config.make_config("actor", "ci", batch_size=8, max_steps=3, checkpoint_every=2,
                             mixed_precision="fp16")
    run = lambda calls: fit(tiny_lm(), toy_items(), partial(data.collate_sft, pad_id=0),
                            partial(overflow_on_first_call, calls=calls), cfg, log=lambda m: None,
                            resume_dir=tmp_path / "resume", progress=False)
    whole, _ = run([])                    # overflows at step 1, writes the step-2 checkpoint on its way
    assert checkpoint.read_json(tmp_path / "resume" / "train_state.json")["progress"]["scaler"]["scale"] == 2.0 ** 15
    resumed, history = run([1])           # no overflow this time: continues at step 3 with the saved scale
    assert [s["step"] for s in history["steps"]] == [1, 2, 3]
    assert history["steps"][-1]["loss_scale"] == 2.0 ** 15   # not reset to 2^16
    assert all(torch.equal(a, b) for a, b in zip(whole.parameters(), resumed.parameters()))


def test_three_ppo_iterations_in_fp16_update_and_start_at_ratio_one(tiny_tokenizer):
    # one update per iteration, so an iteration's ratio_mean is the ratio of its first update
    cfg = config.make_config("ppo", "ci", iterations=3, ppo_epochs=1, rollout_batch=8, minibatch=8,
                             max_new_tokens=6, mixed_precision="fp16")
    models = four_models(len(tiny_tokenizer))
    before = copy.deepcopy(models[0].state_dict())
    actor, critic, history, _ = train_ppo(models, tiny_tokenizer, prompt_ids(), cfg,
                                          log=lambda m: None, progress=False)
    assert len(history) == 3
    skipped = 0
    for row in history:
        skipped += row["skipped_updates"]
        assert "policy_loss" in row and row["loss_scale"] == 2.0 ** 16 / 2 ** skipped  # halved per overflow only
        assert all(torch.isfinite(torch.tensor(float(v))) for v in row.values())
    assert history[0]["ratio_mean"] == 1.0 and history[0]["clipfrac"] == 0.0  # the first ratio, exactly
    assert [row["skipped_updates"] for row in history[1:]] == [0, 0]   # after at most one back-off, every step trains
    assert all(torch.isfinite(p).all() for p in actor.parameters())
    assert any(not torch.equal(before[k], v) for k, v in actor.state_dict().items())
    assert next(actor.parameters()).dtype == torch.float32          # master weights stay fp32


def overflow_in_first_backward(calls):
    """ppo_losses whose first policy loss sends back a gradient 1e35 times too large: the loss and
    its statistics are finite, the scaled gradients (x 2^16) overflow fp32, as a real fp16 overflow."""
    def losses(actor, critic, mb, P, cfg):
        pg_loss, vf_loss, stats = ppo_losses(actor, critic, mb, P, cfg)
        calls.append(1)
        if len(calls) == 1:
            pg_loss.register_hook(lambda grad: grad * 1e35)
        return pg_loss, vf_loss, stats
    return losses


@pytest.mark.parametrize("iterations", [1, 2])
def test_ppo_fp16_overflow_skips_the_step_halves_the_scale_and_keeps_its_statistics(tiny_tokenizer, monkeypatch,
                                                                                    iterations):
    """One update per iteration; the first overflows. It must change no weight of either model,
    halve the scale once, keep its (finite) statistics and not count as a bad update
    (max_bad_updates=1 would stop the run); the next iteration trains at the halved scale."""
    cfg = config.make_config("ppo", "ci", iterations=iterations, ppo_epochs=1, rollout_batch=8, minibatch=8,
                             max_new_tokens=6, mixed_precision="fp16", max_bad_updates=1)
    monkeypatch.setattr(ppo_loop, "ppo_losses", overflow_in_first_backward([]))
    models = four_models(len(tiny_tokenizer))
    before = [copy.deepcopy(m.state_dict()) for m in (models[0], models[3])]
    logs = []
    actor, critic, history, _ = train_ppo(models, tiny_tokenizer, prompt_ids(), cfg, log=logs.append, progress=False)
    first = history[0]
    assert first["skipped_updates"] == 1 and first["loss_scale"] == 2.0 ** 15
    assert any("1 update(s) skipped (fp16 overflow" in line for line in logs)
    assert "actor_grad_norm" not in first                               # no norm of an overflowed gradient
    assert all(math.isfinite(first[k]) for k in ("policy_loss", "value_loss", "ratio_mean", "clipfrac"))
    unchanged = [all(torch.equal(old[k], v) for k, v in m.state_dict().items()) for old, m in zip(before, (actor, critic))]
    if iterations == 1:
        assert unchanged == [True, True]
    else:
        assert history[1]["skipped_updates"] == 0 and history[1]["loss_scale"] == 2.0 ** 15
        assert unchanged == [False, False] and "actor_grad_norm" in history[1]


def test_one_optimizer_steps_both_models_with_their_own_rates_and_clipping(tiny_tokenizer):
    """One update_step: each model's gradient is clipped to max_grad_norm on its own (not the two
    together), and each group moves by Adam's first step at its own learning rate."""
    cfg = config.make_config("ppo", "ci", rollout_batch=4, minibatch=4, max_new_tokens=6, max_grad_norm=1e-3,
                             actor_lr=1e-3, critic_lr=3e-2)
    models = four_models(len(tiny_tokenizer))
    rollout, _ = rollout_of(models, tiny_tokenizer, cfg, n=4)
    actor, critic = models[0], models[3]
    optimizer, _ = make_optimizer(actor, critic, cfg)
    before = [[p.detach().clone() for p in g["params"]] for g in optimizer.param_groups]
    applied = []  # the gradients each group is stepped with, after clipping
    optimizer.register_step_pre_hook(lambda opt, args, kwargs: applied.append(
        [[p.grad.clone() for p in g["params"]] for g in opt.param_groups]))
    stepped, stats, _ = ppo_loop.update_step(actor, critic, minibatch(rollout, torch.arange(4)), rollout.P, cfg,
                                             optimizer, make_accelerator("no"), 4)
    assert stepped and len(applied) == 1
    norm = lambda grads: float(torch.cat([g.flatten() for g in grads]).norm())
    actor_grads, critic_grads = applied[0]
    assert len(actor_grads) == len(list(actor.parameters())) and len(critic_grads) == len(list(critic.parameters()))
    assert stats["actor_grad_norm"] > 10 * cfg.max_grad_norm and stats["critic_grad_norm"] > 10 * cfg.max_grad_norm
    assert norm(actor_grads) == pytest.approx(cfg.max_grad_norm, rel=1e-4)    # each clipped to its own norm
    assert norm(critic_grads) == pytest.approx(cfg.max_grad_norm, rel=1e-4)
    for lr, params, old, grads in zip((cfg.actor_lr, cfg.critic_lr), optimizer.param_groups, before, applied[0]):
        decay = params["weight_decay"]
        for p, p0, g in zip(params["params"], old, grads):
            # AdamW's first step: p <- p (1 - lr wd) - lr g / (|g| + eps)   (bias corrections cancel)
            expected = p0 * (1 - lr * decay) - lr * g / (g.abs() + params["eps"])
            torch.testing.assert_close(p.detach(), expected, atol=1e-7, rtol=1e-5)


# ----------------------------------------------------------------------------- the PPO math in fp32

def ppo_calls():
    """Every function of rlhf/ppo.py with inputs of realistic size (B=4, R=48, V=50)."""
    g = torch.Generator().manual_seed(0)
    B, R, V = 4, 48, 50
    randn = lambda *shape, s=1.0: torch.randn(*shape, generator=g) * s
    logits, tokens = randn(B, R, V, s=3.0), torch.randint(0, V, (B, R), generator=g)
    mask = (torch.arange(R) < torch.tensor([[48], [30], [12], [1]])).float()
    logprobs, ref = -randn(B, R).abs(), -randn(B, R).abs()
    values, rewards, scores = randn(B, R, s=2.0), randn(B, R), randn(B, s=4.3) + 4.3
    return {
        "logprobs_from_logits": (logits, tokens, 0.7),
        "entropy_from_logits": (logits, 0.7),
        "masked_sum": (values, mask),
        "masked_mean": (values, mask),
        "masked_var": (values, mask),
        "masked_whiten": (values, mask),
        "response_mask": (tokens, 2, 0),
        "kl_per_token": (logprobs, ref, mask, "k3"),
        "last_token_onehot": (mask,),
        "compute_rewards": (scores, logprobs, ref, mask, 0.1),
        "apply_missing_eos_penalty": (scores, scores > 4.3, 1.0),
        "gae_naive": (values, rewards, mask, 1.0, 0.95),
        "gae": (values, rewards, mask, 1.0, 0.95),
        "policy_loss": (logprobs, ref, values, mask, 0.2),
        "value_loss": (values, values + randn(B, R, s=0.3), rewards, mask, 0.2),
        "explained_variance": (values, rewards, mask),
        "update_kl_coef": (0.1, torch.tensor(3.0), 6.0, 16, 10000),
    }


def flat(out):
    if isinstance(out, dict):
        return [x for v in out.values() for x in flat(v)]
    if isinstance(out, (tuple, list)):
        return [x for v in out for x in flat(v)]
    return [out]


def test_every_ppo_function_is_listed():
    public = {name for name, fn in vars(ppo).items() if callable(fn) and getattr(fn, "__module__", "") == ppo.__name__
              and not name.startswith("_") and name not in ("full_precision", "scale")}
    assert public == set(ppo_calls())


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("name", sorted(ppo_calls()))
def test_ppo_math_is_fp32_under_autocast(name, dtype):
    fn, args = getattr(ppo, name), ppo_calls()[name]
    expected = flat(fn(*args))
    with torch.autocast("cpu", dtype=dtype):
        got = flat(fn(*args))
    for e, g in zip(expected, got):
        if torch.is_tensor(e):
            assert g.dtype == e.dtype
            torch.testing.assert_close(g, e, atol=1e-5, rtol=0)
        else:
            assert g == pytest.approx(e, abs=1e-5)


def test_autocast_really_lowers_gae_without_the_guard():
    """The guard is what the test above measures: unguarded, GAE is a low-precision matmul."""
    values, rewards, mask, gamma, lam = ppo_calls()["gae"]
    expected, _ = ppo.gae(values, rewards, mask, gamma, lam)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        unguarded, _ = ppo.gae.__wrapped__(values, rewards, mask, gamma, lam)
    assert (unguarded.float() - expected).abs().max() > 1e-3


# ----------------------------------------------------------------------------- PPO under memory pressure

def params_after_update(tokenizer, cfg, rollout, models, micro=None, losses=None, monkeypatch=None, logs=None):
    actor, _, _, critic = models
    if losses is not None:
        monkeypatch.setattr(ppo_loop, "ppo_losses", losses)
    optimizer, _ = make_optimizer(actor, critic, cfg)
    _, skipped, micro = ppo_update(actor, critic, rollout, cfg, optimizer, make_accelerator("no"),
                                   torch.Generator().manual_seed(0), micro,
                                   logs.append if logs is not None else print)
    assert skipped == 0
    return [p.detach().clone() for p in (*actor.parameters(), *critic.parameters())], micro


def test_update_oom_halves_the_micro_batch_and_gives_the_same_update(tiny_tokenizer, monkeypatch):
    cfg = config.make_config("ppo", "ci", rollout_batch=8, minibatch=8, ppo_epochs=2, max_new_tokens=8)
    models = four_models(len(tiny_tokenizer))
    eos_likely(models[0])
    rollout, _ = rollout_of(models, tiny_tokenizer, cfg)
    assert len(set(rollout.mask.sum(1).tolist())) > 2                  # unequal answer lengths
    whole, _ = params_after_update(tiny_tokenizer, cfg, rollout, copy.deepcopy(models))

    def tight(actor, critic, mb, P, cfg):
        if mb["mask"].shape[0] > 2:
            raise OOM
        return real_losses(actor, critic, mb, P, cfg)
    real_losses, logs = ppo_losses, []
    split, micro = params_after_update(tiny_tokenizer, cfg, rollout, copy.deepcopy(models), losses=tight,
                                       monkeypatch=monkeypatch, logs=logs)
    assert micro == 2 and any("PPO micro-batch halved to 2" in line for line in logs)
    for a, b in zip(whole, split):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=0)


def test_micro_batch_of_one_row_gives_the_same_update(tiny_tokenizer):
    cfg = config.make_config("ppo", "ci", rollout_batch=8, minibatch=8, ppo_epochs=1, max_new_tokens=8)
    models = four_models(len(tiny_tokenizer))
    eos_likely(models[0])
    rollout, _ = rollout_of(models, tiny_tokenizer, cfg)
    assert len(set(rollout.mask.sum(1).tolist())) > 2
    whole, _ = params_after_update(tiny_tokenizer, cfg, rollout, copy.deepcopy(models))
    cfg_split = config.make_config("ppo", "ci", rollout_batch=8, minibatch=8, ppo_epochs=1, max_new_tokens=8,
                                   micro_batch=1)
    split, micro = params_after_update(tiny_tokenizer, cfg_split, rollout, copy.deepcopy(models))
    assert micro == 1
    for a, b in zip(whole, split):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=0)


def test_generation_oom_halves_the_chunk(tiny_tokenizer, monkeypatch):
    cfg = config.make_config("ppo", "ci", max_new_tokens=6)
    models = four_models(len(tiny_tokenizer))
    real_generate = models[0].generate

    def tight(input_ids, **kwargs):
        if input_ids.shape[0] > 2:
            raise OOM
        return real_generate(input_ids=input_ids, **kwargs)
    monkeypatch.setattr(models[0], "generate", tight)
    logs = []
    rollout, chunk = rollout_of(models, tiny_tokenizer, cfg, log=logs.append)
    assert chunk == 2 and any("generation chunk halved to 2" in line for line in logs)
    assert rollout.responses.shape[0] == 8 and torch.isfinite(rollout.advantages).all()


def test_scoring_oom_halves_the_chunk_and_changes_nothing(tiny_tokenizer, monkeypatch):
    cfg = config.make_config("ppo", "ci", max_new_tokens=6)
    models = four_models(len(tiny_tokenizer))
    whole, _ = rollout_of(models, tiny_tokenizer, cfg)
    backbone = models[2].model                                         # the reward model's transformer
    real_forward = backbone.forward

    def tight(*args, **kwargs):
        if kwargs["input_ids"].shape[0] > 4:
            raise OOM
        return real_forward(*args, **kwargs)
    monkeypatch.setattr(backbone, "forward", tight)
    logs = []
    split, chunk = rollout_of(models, tiny_tokenizer, cfg, log=logs.append)
    assert chunk == 4 and any("scoring chunk halved to 4" in line for line in logs)
    assert torch.equal(whole.responses, split.responses)
    for name in ("logprobs", "ref_logprobs", "values", "raw_scores", "advantages", "returns"):
        torch.testing.assert_close(getattr(split, name), getattr(whole, name), atol=1e-5, rtol=0)


@pytest.mark.parametrize("lora", [False, True])
def test_gradient_checkpointing_gives_the_same_loss_and_gradients(tiny_tokenizer, lora):
    from peft import get_peft_model

    from rlhf.models import lora_config
    from rlhf.reward import TokenScorer

    cfg = config.make_config("ppo", "ci", max_new_tokens=8)
    models = four_models(len(tiny_tokenizer))
    rollout, _ = rollout_of(models, tiny_tokenizer, cfg, n=4)
    results = []
    for checkpointing in (False, True):
        actor, critic = copy.deepcopy(models[0]), copy.deepcopy(models[3])
        if lora:
            torch.manual_seed(1)
            actor = get_peft_model(actor, lora_config(4, "CAUSAL_LM"))
            torch.manual_seed(2)
            critic = get_peft_model(critic, lora_config(4, "SEQ_CLS"))
        if checkpointing:
            enable_gradient_checkpointing(actor)
            enable_gradient_checkpointing(critic)
        actor.train(), critic.train()
        pg, vf, _ = ppo_losses(actor, TokenScorer(critic), minibatch(rollout, torch.arange(4)), rollout.P, cfg)
        (pg + vf).backward()
        grads = [p.grad.clone() for m in (actor, critic) for p in m.parameters() if p.requires_grad]
        results.append((pg.detach(), vf.detach(), grads))
    (pg0, vf0, g0), (pg1, vf1, g1) = results
    assert torch.equal(pg0, pg1) and torch.equal(vf0, vf1) and len(g0) == len(g1) > 0
    for a, b in zip(g0, g1):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=0)


def test_ppo_config_turns_gradient_checkpointing_on(tiny_tokenizer):
    cfg = config.make_config("ppo", "ci", iterations=1, ppo_epochs=1, rollout_batch=4, minibatch=4,
                             max_new_tokens=4, gradient_checkpointing=True)
    models = four_models(len(tiny_tokenizer))
    train_ppo(models, tiny_tokenizer, prompt_ids(4), cfg, log=lambda m: None, progress=False)
    assert models[0].is_activation_checkpointing if hasattr(models[0], "is_activation_checkpointing") \
        else models[0].is_gradient_checkpointing
    layers = [m for m in models[3].modules() if hasattr(m, "gradient_checkpointing")]
    assert layers and all(m.gradient_checkpointing for m in layers)


# ----------------------------------------------------------------------------- CUDA RNG in a resume

def test_cuda_rng_states_are_saved_and_restored(tmp_path, monkeypatch):
    """Where CUDA is present, every device's generator goes into the resumable state and comes
    back (here with torch.cuda's RNG calls stood in for; tests/test_cuda.py does it for real)."""
    devices = {"states": [torch.tensor([1, 2, 3], dtype=torch.uint8), torch.tensor([4, 5], dtype=torch.uint8)]}
    restored = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "get_rng_state_all", lambda: devices["states"])
    monkeypatch.setattr(torch.cuda, "set_rng_state_all", lambda states: restored.extend(states))
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(2))], lr=0.1)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    checkpoint.save_train_state(tmp_path, {"opt": optimizer}, {"opt": scheduler}, {"step": 1})
    checkpoint.load_train_state(tmp_path, {"opt": optimizer}, {"opt": scheduler})
    assert [t.tolist() for t in restored] == [[1, 2, 3], [4, 5]]


# ----------------------------------------------------------------------------- make gpu-check

def test_gpu_check_runs_its_pipeline_and_prints_the_table(tmp_path):
    """bench/gpu_check.py at toy size on the CPU (fp16 through the CPU GradScaler): the code that
    `make gpu-check` runs on a GPU, so the first GPU owner does not meet its bugs."""
    import json
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    out = tmp_path / "gpu_check.json"
    done = subprocess.run([sys.executable, str(root / "bench" / "gpu_check.py"), "--shape", "tiny",
                           "--allow-cpu", "--steps", "1", "--precisions", "fp16", "--out", str(out)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "| precision | stage" in done.stdout
    rows = json.loads(out.read_text())["rows"]
    assert [(r["precision"], r["stage"]) for r in rows] == [("fp16", "sft"), ("fp16", "reward"), ("fp16", "ppo")]
    assert all(r["finite"] and r["seconds"] > 0 and r["tokens_per_s"] > 0 for r in rows)
    assert all(r["loss_scale"] >= 1 for r in rows)


def test_gpu_check_without_a_gpu_says_so():
    import subprocess
    import sys
    from pathlib import Path

    if torch.cuda.is_available():
        pytest.skip("there is a GPU here")
    script = Path(__file__).resolve().parents[1] / "bench" / "gpu_check.py"
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 1 and "no CUDA GPU here" in done.stdout


# ----------------------------------------------------------------------------- token-mean losses

@pytest.mark.parametrize("micro", [1, 3])
def test_sft_step_is_the_token_mean_whatever_the_micro_batch(micro):
    """Rows with 1 to 6 labelled tokens: one micro-batch of 8 and micro-batches of `micro` give
    the same gradient, that of the mean over all the step's labelled tokens."""
    from rlhf.sft import sft_loss
    from rlhf.train import robust_step

    g = torch.Generator().manual_seed(0)
    items = [{"input_ids": torch.randint(3, 64, (8,), generator=g).tolist(),
              "labels": [-100] * (8 - k) + torch.randint(3, 64, (k,), generator=g).tolist()} for k in range(1, 9)]
    collate = partial(data.collate_sft, pad_id=0)
    batch = collate(items)
    reference = tiny_lm().eval()                                       # dropout off: the same forward twice
    sft_loss(reference(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits,
             batch["labels"]).backward()                                # the whole batch's token mean
    model, accelerator = tiny_lm().eval(), make_accelerator("no")
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)
    stats, used = robust_step(model, items, collate, sft_loss_fn, accelerator, optimizer, micro, print)
    assert used == micro
    for expected, got in zip(reference.parameters(), model.parameters()):
        torch.testing.assert_close(got.grad, expected.grad, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("engine", ["DEEPSPEED", "FSDP"])
def test_engines_that_are_not_implemented_are_refused_clearly(engine):
    from accelerate.utils import DistributedType

    from rlhf.steps import check_engine

    assert DistributedType(engine).value == engine                     # the names accelerate uses
    with pytest.raises(NotImplementedError, match="ddp.yaml"):
        check_engine(engine)
    for fine in ("NO", "MULTI_CPU", "MULTI_GPU"):
        check_engine(DistributedType(fine).value)
