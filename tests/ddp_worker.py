"""Run by tests/test_distributed.py, once plainly and once under torchrun with 2 processes (gloo):
the project's own training functions on tiny models; saves each rank's final weights.

    python tests/ddp_worker.py TASK OUT_DIR PER_DEVICE_BATCH      (TASK: sft, rm or ppo)
"""
import copy
import sys
from functools import partial
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from accelerate import Accelerator  # noqa: E402
from safetensors.torch import save_file  # noqa: E402
from transformers import OPTConfig, OPTForCausalLM, OPTForSequenceClassification  # noqa: E402

from rlhf import data, reward, sft  # noqa: E402

# fp32: the test compares 1 and 2 processes to < 2%; bf16 rounding (auto on a bf16 CPU) would
# add its own noise of that size and hide what is being checked, the gradient averaging
PRECISION = "no"
from rlhf.config import make_config  # noqa: E402
from rlhf.models import disable_dropout  # noqa: E402
from rlhf.ppo_loop import Timer, make_optimizer, ppo_update  # noqa: E402
from rlhf.reward import TokenScorer  # noqa: E402
from rlhf.rollout import Rollout, make_rollout  # noqa: E402
from rlhf.train import fit  # noqa: E402


def opt_config(**kw):
    return OPTConfig(vocab_size=64, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, ffn_dim=32,
                     word_embed_proj_dim=16, max_position_embeddings=64, dropout=0.0, pad_token_id=0,
                     bos_token_id=1, eos_token_id=2, **kw)


def sequences(n, length, seed):
    g = torch.Generator().manual_seed(seed)
    return [[1] + torch.randint(3, 64, (length,), generator=g).tolist() + [2] for _ in range(n)]


INITIAL = {}  # the weights before training, saved beside the result


def remember(model):
    INITIAL.update({k: v.detach().clone() for k, v in model.state_dict().items()})
    return model


def run_sft(per_device):
    torch.manual_seed(0)
    model = remember(OPTForCausalLM(opt_config()))
    items = [{"input_ids": s, "labels": [-100] * 3 + s[3:]} for s in sequences(32, 8, 1)]
    cfg = make_config("actor", "ci", batch_size=per_device, max_steps=3, checkpoint_every=0, lr=1e-2,
                      mixed_precision=PRECISION)
    model, _ = fit(model, items, partial(data.collate_sft, pad_id=0), sft.sft_loss_fn, cfg,
                   log=lambda m: None, progress=False)
    return model


def run_rm(per_device):
    torch.manual_seed(0)
    model = remember(OPTForSequenceClassification(opt_config(num_labels=1)))
    pairs = [{"chosen_ids": c, "rejected_ids": r} for c, r in zip(sequences(32, 8, 2), sequences(32, 8, 3))]
    cfg = make_config("critic", "ci", batch_size=per_device, max_steps=3, checkpoint_every=0, lr=1e-2,
                      mixed_precision=PRECISION)
    model, _ = fit(model, pairs, partial(data.collate_pairs, pad_id=0), reward.reward_loss_fn, cfg,
                   log=lambda m: None, progress=False)
    return model


class Tok:
    """What the PPO loop needs of a tokenizer, for ids that stand for themselves."""
    pad_token_id, eos_token_id, bos_token_id = 0, 2, 1

    def decode(self, ids, skip_special_tokens=True):
        return " ".join(map(str, ids))

    def save_pretrained(self, folder):  # nothing to save: the ids are the vocabulary
        pass


def run_ppo(per_device):
    """One PPO update on the same rollout: the 1-process run takes all rows, each of 2 processes half."""
    torch.manual_seed(0)
    actor = remember(disable_dropout(OPTForCausalLM(opt_config())))
    reward_model = disable_dropout(OPTForSequenceClassification(opt_config(num_labels=1))).eval()
    critic = copy.deepcopy(reward_model)
    cfg = make_config("ppo", "ci", max_new_tokens=6, ppo_epochs=1, rollout_batch=per_device, minibatch=per_device,
                      mixed_precision=PRECISION)
    batch = data.collate_prompts([s[:4] for s in sequences(8, 6, 4)], 0)
    torch.manual_seed(1)  # the same rollout in every process
    rollout, _ = make_rollout((actor, copy.deepcopy(actor).eval(), reward_model, critic), Tok(), batch["input_ids"],
                           batch["attention_mask"], cfg, cfg.kl_coef, Timer())
    accelerator = Accelerator(cpu=True)
    rows = torch.arange(8)[accelerator.process_index::accelerator.num_processes]
    mine = Rollout(**{k: (v[rows] if torch.is_tensor(v) else v) for k, v in vars(rollout).items()})
    optimizer, _ = make_optimizer(actor, critic, cfg)
    actor, critic, optimizer = accelerator.prepare(actor, TokenScorer(critic), optimizer)
    ppo_update(actor, critic, mine, cfg, optimizer, accelerator, torch.Generator().manual_seed(0))
    return accelerator.unwrap_model(actor)


def ppo_loop(per_device, out, **overrides):
    """train_ppo itself, as notebook 3 runs it, on tiny models; each rank writes its history."""
    import json

    from rlhf.ppo_loop import train_ppo

    nan_rank = overrides.pop("nan_on_rank", None)
    torch.manual_seed(0)
    actor = remember(disable_dropout(OPTForCausalLM(opt_config())))
    reward_model = disable_dropout(OPTForSequenceClassification(opt_config(num_labels=1))).eval()
    cfg = make_config("ppo", "ci", **{"iterations": 3, "max_new_tokens": 6, "ppo_epochs": 1, "checkpoint_every": 0,
                                      "rollout_batch": per_device, "minibatch": per_device,
                                      "mixed_precision": PRECISION, **overrides})
    rank = Accelerator(cpu=True).process_index
    critic = copy.deepcopy(reward_model)
    if nan_rank == rank:  # this rank's reward model scores NaN, as if its statistics were NaN
        reward.fold_score_stats(reward_model, float("nan"), 1.0)
    prompts = [s[:4] for s in sequences(16, 6, 4)]
    resume_dir = out / "resume" if cfg.checkpoint_every else None
    actor, _, history, _ = train_ppo((actor, copy.deepcopy(actor).eval(), reward_model, critic),
                                     Tok(), prompts, cfg, log=lambda m: None, progress=False,
                                     resume_dir=resume_dir)
    (out / f"history-{rank}.json").write_text(json.dumps(history))
    return actor


def run(task, out, per_device):
    tasks = {"sft": run_sft, "rm": run_rm, "ppo": run_ppo,
             # NaN reward statistics on rank 1 only: every update must be skipped on both ranks
             "ppo_nan": lambda n: ppo_loop(n, out, iterations=2, max_bad_updates=10, nan_on_rank=1),
             "ppo_adaptive": lambda n: ppo_loop(n, out, adaptive_kl=True, target_kl=0.5, kl_horizon=20),
             "ppo_resume": lambda n: ppo_loop(n, out, iterations=4, checkpoint_every=2)}
    model = tasks[task](per_device)
    state = Accelerator(cpu=True)
    weights = {k: v.detach().contiguous().clone() for k, v in model.state_dict().items()}
    save_file(weights, str(out / f"{task}-{state.num_processes}-{state.process_index}.safetensors"))
    save_file({k: v.contiguous() for k, v in INITIAL.items()}, str(out / f"{task}-initial.safetensors"))


if __name__ == "__main__":
    task, out, per_device = sys.argv[1], Path(sys.argv[2]), int(sys.argv[3])
    if len(sys.argv) > 4:  # notebook_launcher PROCESSES PORT: what a notebook cell would call
        from accelerate import notebook_launcher
        notebook_launcher(run, (task, out, per_device), num_processes=int(sys.argv[4]),
                          master_addr="127.0.0.1", use_port=sys.argv[5])
    else:
        run(task, out, per_device)
