"""Notebook 3's training loop, the cell tagged `ppo-loop` in notebooks/3_rlhf.py, against the
library's runner `train_ppo` (what `make run` trains with: resumable, multi-process). From the same
models, prompts, config and seed, their first iterations must be the same, number for number, and
so must the weights they end with. Four tiny random OPT models (tests/test_ppo_details.py)."""
import jupytext
import pytest
import torch

import util
from conftest import ROOT
from test_ppo_details import make_models, prompt_ids, rollout_of


def tagged_cell(tag: str = "ppo-loop") -> str:
    notebook = jupytext.read(ROOT / "notebooks" / "3_rlhf.py")
    cells = [c for c in notebook.cells if tag in c.metadata.get("tags", [])]
    assert len(cells) == 1, f"notebook 3 has one cell tagged {tag}"
    return cells[0].source


def loop_cell() -> str:
    return tagged_cell("ppo-loop")


def run_loop(tokenizer, cfg, ids, iterations):
    """The notebook's cell, executed with the names the notebook defines before it."""
    actor, reference, reward_model, critic = make_models(tokenizer)
    names = {"util": util, "torch": torch, "ppo": util.ppo, "cfg": cfg, "tokenizer": tokenizer,
             "prompt_ids": ids, "loop_iterations": iterations,
             "actor": actor, "reference": reference, "reward_model": reward_model, "critic": critic}
    exec(compile(loop_cell(), "notebooks/3_rlhf.py:ppo-loop", "exec"), names)
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
