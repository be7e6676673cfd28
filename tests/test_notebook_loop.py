"""Notebook 3's training loop, the cell tagged `ppo-loop` in notebooks/3_rlhf.py, against the
library's runner `train_ppo` (what `make run` trains with: resumable, multi-process). From the same
models, prompts, config and seed, their first iterations must be the same, number for number, and
so must the weights they end with. Four tiny random OPT models (tests/test_ppo_details.py)."""
import jupytext
import pytest
import torch

import util
from conftest import ROOT
from test_ppo_details import make_models, prompt_ids


def loop_cell() -> str:
    notebook = jupytext.read(ROOT / "notebooks" / "3_rlhf.py")
    cells = [c for c in notebook.cells if "ppo-loop" in c.metadata.get("tags", [])]
    assert len(cells) == 1, "notebook 3 has one cell tagged ppo-loop"
    return cells[0].source


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
