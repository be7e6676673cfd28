"""Notebook 3's training loop, the cell tagged `ppo-loop` in notebooks/3_rlhf.py, against the
library's runner `train_ppo` (what `make run` trains with: resumable, multi-process). From the same
models, prompts, config and seed, their first iterations must be the same, number for number, and
so must the weights they end with. Four tiny random OPT models (tests/test_ppo_details.py)."""
import jupytext
import pytest
import torch
from torch.optim.optimizer import register_optimizer_step_pre_hook

import util
from test_rollout import head_token_by_token, logprobs_token_by_token
from conftest import ROOT
from test_ppo_details import make_models, prompt_ids, rollout_of


def tagged_cell(tag: str = "ppo-loop") -> str:
    notebook = jupytext.read(ROOT / "notebooks" / "3_rlhf.py")
    cells = [c for c in notebook.cells if tag in c.metadata.get("tags", [])]
    assert len(cells) == 1, f"notebook 3 has one cell tagged {tag}"
    return cells[0].source


def loop_cell() -> str:
    return tagged_cell("ppo-loop")


def exec_loop(tokenizer, cfg, ids, iterations) -> dict:
    """The notebook's cell, executed with the names the notebook defines before it; returns its
    names afterwards (the last `rollout`, the trained `actor` and `critic`, `loop_history`, ...)."""
    actor, reference, reward_model, critic = make_models(tokenizer)
    names = {"util": util, "torch": torch, "ppo": util.ppo, "cfg": cfg, "tokenizer": tokenizer,
             "prompt_ids": ids, "loop_iterations": iterations,
             "actor": actor, "reference": reference, "reward_model": reward_model, "critic": critic}
    exec(compile(loop_cell(), "notebooks/3_rlhf.py:ppo-loop", "exec"), names)
    return names


def run_loop(tokenizer, cfg, ids, iterations):
    names = exec_loop(tokenizer, cfg, ids, iterations)
    return names["loop_history"], names["actor"], names["critic"]


@pytest.mark.parametrize("overrides", [{"mixed_precision": "no"},
                                       {"mixed_precision": "bf16", "adaptive_kl": True, "target_kl": 0.5},
                                       {"mixed_precision": "fp16", "ppo_epochs": 1}])
def test_the_notebook_loop_gives_the_runners_first_iterations(tiny_tokenizer, overrides):
    cfg = util.make_config("ppo", "ci", **{"iterations": 3, "max_new_tokens": 6, "rollout_batch": 8,
                                           "minibatch": 4, **overrides})
    ids = prompt_ids(tiny_tokenizer, 8)
    loop_history, loop_actor, loop_critic = run_loop(tiny_tokenizer, cfg, ids, cfg.iterations)
    torch.rand(5)  # the runner seeds itself: the caller's random state must not matter
    actor, critic, history, _ = util.train_ppo(make_models(tiny_tokenizer), tiny_tokenizer, ids, cfg,
                                               log=lambda message: None, progress=False)
    assert len(loop_history) == len(history) == cfg.iterations
    for mine, theirs in zip(loop_history, history):
        shared = set(mine) & set(theirs)
        assert {"score", "kl", "ratio_mean", "clipfrac", "policy_loss", "value_loss", "kl_coef"} <= shared
        assert {k: mine[k] for k in shared} == {k: theirs[k] for k in shared}
    assert history[0]["policy_loss"] != history[-1]["policy_loss"]  # it did train
    unwrap = lambda model: getattr(model, "module", model)
    for mine, theirs in ((unwrap(loop_actor), actor), (unwrap(loop_critic), critic)):
        for (name, a), b in zip(mine.state_dict().items(), theirs.state_dict().values()):
            assert torch.equal(a, b), name


def ppo_loss_by_hand(actor, critic, rollout, cfg):
    """PPO's two losses written out the slow way, one answer and one token at a time, each a
    token mean over the whole minibatch: the clipped surrogate and the clipped value loss."""
    pg_loss = vf_loss = 0.0
    tokens = rollout.mask.sum()
    for b in range(rollout.responses.shape[0]):
        n = int(rollout.mask[b].sum())
        prompt = rollout.query_responses[b, :rollout.P][rollout.attention_mask[b, :rollout.P].bool()]
        response, advantages, returns = rollout.responses[b, :n], rollout.advantages[b, :n], rollout.returns[b, :n]
        ratio = torch.exp(logprobs_token_by_token(actor, prompt, response, cfg.temperature) - rollout.logprobs[b, :n])
        clipped_ratio = ratio.clamp(1 - cfg.clip_ratio, 1 + cfg.clip_ratio)
        pg_loss = pg_loss + torch.maximum(-advantages * ratio, -advantages * clipped_ratio).sum() / tokens
        values, old = head_token_by_token(critic, prompt, response)[:n], rollout.values[b, :n]
        clipped_values = old + (values - old).clamp(-cfg.clip_value, cfg.clip_value)
        vf_loss = vf_loss + 0.5 * torch.maximum((values - returns) ** 2, (clipped_values - returns) ** 2).sum() / tokens
    return pg_loss, vf_loss


def test_the_notebook_loops_first_update_is_ppo_computed_by_hand(tiny_tokenizer):
    """The test above compares two callers of the same functions, so a wrong function passes it.
    Here one iteration of the cell (one minibatch, one update) is held against PPO written out by
    hand on fresh copies of the models: its logged losses, the gradients the optimiser applies
    (unclipped, so their scale shows) and the weights after AdamW's first step at each model's rate."""
    cfg = util.make_config("ppo", "ci", iterations=1, ppo_epochs=1, rollout_batch=8, minibatch=8, max_new_tokens=6,
                           temperature=0.7, max_grad_norm=1e9, mixed_precision="no")
    applied = []
    hook = register_optimizer_step_pre_hook(lambda optimizer, args, kwargs: applied.append(
        [[p.grad.clone() for p in group["params"]] for group in optimizer.param_groups]))
    try:
        names = exec_loop(tiny_tokenizer, cfg, prompt_ids(tiny_tokenizer, 8), 1)
    finally:
        hook.remove()
    assert len(applied) == 1
    actor, _, _, critic = make_models(tiny_tokenizer)  # the weights the loop started from
    pg_loss, vf_loss = ppo_loss_by_hand(actor, critic, names["rollout"], cfg)
    assert names["loop_history"][0]["policy_loss"] == pytest.approx(pg_loss.item(), abs=1e-6)
    assert names["loop_history"][0]["value_loss"] == pytest.approx(vf_loss.item(), abs=1e-6)
    (pg_loss + vf_loss).backward()
    unwrap = lambda model: getattr(model, "module", model)
    groups = zip((actor, critic), (unwrap(names["actor"]), unwrap(names["critic"])), applied[0],
                 (cfg.actor_lr, cfg.critic_lr), names["optimizer"].param_groups)
    for start, trained, grads, lr, group in groups:
        assert len(grads) == len(list(start.parameters()))
        for p0, p1, g in zip(start.parameters(), trained.parameters(), grads):
            torch.testing.assert_close(g, p0.grad, atol=1e-7, rtol=1e-4)
            adamw_first_step = p0 * (1 - lr * group["weight_decay"]) - lr * g / (g.abs() + group["eps"])
            torch.testing.assert_close(p1.detach(), adamw_first_step.detach(), atol=1e-7, rtol=1e-5)


@pytest.mark.parametrize("overrides", [{"mixed_precision": "no", "minibatch": 2},
                                       {"mixed_precision": "bf16", "minibatch": 4, "ppo_epochs": 2},
                                       {"mixed_precision": "fp16", "minibatch": 2, "ppo_epochs": 1}])
def test_the_written_out_update_is_the_librarys(tiny_tokenizer, overrides):
    """Notebook 3's cell tagged `ppo-update` (one PPO update, epochs and minibatches written out)
    ends with the same weights as util.ppo_update from the same models, rollout and seed."""
    cfg = util.make_config("ppo", "ci", **{"max_new_tokens": 6, **overrides})
    accelerator = util.make_accelerator(cfg.mixed_precision)
    actor, _, _, critic = models = make_models(tiny_tokenizer)
    rollout = rollout_of(models, tiny_tokenizer, cfg, n=4)
    names = {"util": util, "torch": torch, "ppo": util.ppo, "cfg": cfg, "accelerator": accelerator,
             "experience": rollout, "actor": actor, "critic": critic, "P": rollout.P}
    exec(compile(tagged_cell("ppo-update"), "notebooks/3_rlhf.py:ppo-update", "exec"), names)
    assert len(names["steps"]) == cfg.ppo_epochs * (4 // cfg.minibatch)
    library_actor, _, _, library_critic = make_models(tiny_tokenizer)  # the same seed: the same start
    accelerator = util.make_accelerator(cfg.mixed_precision)  # fp16: a fresh loss scale, as the notebook's
    optimizer, _ = util.make_optimizer(library_actor, library_critic, cfg)
    library_actor, library_critic, optimizer = accelerator.prepare(library_actor, library_critic, optimizer)
    update, _, _ = util.ppo_update(library_actor, library_critic, rollout, cfg, optimizer, accelerator,
                                   torch.Generator().manual_seed(cfg.seed))
    # fp16: the first step may overflow at the initial loss scale; both skip it (the scaler does)
    assert {k: update[k] for k in names["inline"]} == names["inline"]
    for mine, theirs in ((names["actor"], library_actor), (names["critic"], library_critic)):
        theirs = theirs.state_dict()
        for name, weight in mine.state_dict().items():
            assert torch.equal(weight, theirs[name]), name
    first = make_models(tiny_tokenizer)[0].state_dict()
    assert any(not torch.equal(w, first[n]) for n, w in names["actor"].state_dict().items())  # it did train
