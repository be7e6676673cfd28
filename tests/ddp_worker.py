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
from torch.optim.optimizer import register_optimizer_step_pre_hook  # noqa: E402
from transformers import OPTConfig, OPTForCausalLM, OPTForSequenceClassification  # noqa: E402

from rlhf import data, reward, sft  # noqa: E402
from rlhf import ppo_loop as ppo_loop_module  # noqa: E402

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
FIRST_GRADS = {}  # the gradients the first optimiser step applies, by position in its groups
NO_CLIP = 1e9  # max_grad_norm of the runs whose first gradients are compared: clipping would hide their scale


def remember(model):
    INITIAL.update({k: v.detach().clone() for k, v in model.state_dict().items()})
    return model


def record_first_gradients(optimizer, args, kwargs):
    """A step pre-hook on every optimiser: what the first step applies (after DDP's average)."""
    if not FIRST_GRADS:
        params = [p for group in optimizer.param_groups for p in group["params"]]
        FIRST_GRADS.update({str(i): p.grad.detach().clone() for i, p in enumerate(params) if p.grad is not None})


def run_sft(per_device, out=None, fault_on_rank=None, **overrides):
    """fit on 32 sequences; with fault_on_rank=(rank, call, fault), that rank's loss_fn call number
    `call` is given FAULTS[fault]; each rank then writes its log lines."""
    torch.manual_seed(0)
    model = remember(OPTForCausalLM(opt_config()))
    items = [{"input_ids": s, "labels": [-100] * 3 + s[3:]} for s in sequences(32, 8, 1)]
    cfg = make_config("actor", "ci", **{"batch_size": per_device, "max_steps": 3, "checkpoint_every": 0,
                                        "lr": 1e-2, "mixed_precision": PRECISION, "max_grad_norm": NO_CLIP,
                                        **overrides})
    rank, loss_fn, logs = Accelerator(cpu=True).process_index, sft.sft_loss_fn, []
    if fault_on_rank and fault_on_rank[0] == rank:
        loss_fn = on_call(loss_fn, fault_on_rank[1], FAULTS[fault_on_rank[2]])
    model, _ = fit(model, items, partial(data.collate_sft, pad_id=0), loss_fn, cfg, log=logs.append, progress=False)
    if out is not None:
        (out / f"log-{rank}.txt").write_text("\n".join(logs))
    return model


def run_rm(per_device):
    torch.manual_seed(0)
    model = remember(OPTForSequenceClassification(opt_config(num_labels=1)))
    pairs = [{"chosen_ids": c, "rejected_ids": r} for c, r in zip(sequences(32, 8, 2), sequences(32, 8, 3))]
    cfg = make_config("critic", "ci", batch_size=per_device, max_steps=3, checkpoint_every=0, lr=1e-2,
                      mixed_precision=PRECISION, max_grad_norm=NO_CLIP)
    model, _ = fit(model, pairs, partial(data.collate_pairs, pad_id=0), reward.reward_loss_fn, cfg,
                   log=lambda m: None, progress=False)
    return model


def raise_oom(grad):
    raise torch.OutOfMemoryError("CUDA out of memory (injected into a backward by tests/ddp_worker.py)")


def on_call(fn, number, fault):
    """fn, except that its `number`-th call's output goes through fault(output) (in place)."""
    calls = []

    def wrapped(*args):
        out = fn(*args)
        calls.append(1)
        if len(calls) == number:
            fault(out)
        return out
    return wrapped


def oom_in_backward(out):
    out[0].register_hook(raise_oom)  # the loss: its backward raises out-of-memory


def overflow_with_infinite_stat(out):
    """fp16: a finite loss whose scaled gradient overflows, and on this rank a statistic that is
    not finite (the decision to keep an overflowed step's statistics must still be all-rank)."""
    out[0].register_hook(lambda grad: grad * 1e35)
    out[-1]["approx_kl"] = torch.tensor(float("inf"))


FAULTS = {"oom": oom_in_backward, "overflow": overflow_with_infinite_stat}


def slow_replace(seconds):
    """os.replace after a pause, so that two ranks that both decided to rename collide for sure."""
    import os
    import time

    real = os.replace

    def replace(src, dst):
        time.sleep(seconds)
        return real(src, dst)
    os.replace = replace


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
                      mixed_precision=PRECISION, max_grad_norm=NO_CLIP)
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
    fault = overrides.pop("fault_on_rank", None)
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
    if fault and fault[0] == rank:
        ppo_loop_module.ppo_losses = on_call(ppo_loop_module.ppo_losses, fault[1], FAULTS[fault[2]])
    logs = []
    actor, _, history, _ = train_ppo((actor, copy.deepcopy(actor).eval(), reward_model, critic),
                                     Tok(), prompts, cfg, log=logs.append, progress=False,
                                     resume_dir=resume_dir)
    (out / f"history-{rank}.json").write_text(json.dumps(history))
    (out / f"log-{rank}.txt").write_text("\n".join(logs))
    return actor


def run(task, out, per_device):
    tasks = {"sft": run_sft, "rm": run_rm, "ppo": run_ppo,
             # NaN reward statistics on rank 1 only: every update must be skipped on both ranks
             "ppo_nan": lambda n: ppo_loop(n, out, iterations=2, max_bad_updates=10, nan_on_rank=1),
             "ppo_adaptive": lambda n: ppo_loop(n, out, adaptive_kl=True, target_kl=0.5, kl_horizon=20),
             "ppo_resume": lambda n: ppo_loop(n, out, iterations=4, checkpoint_every=2),
             # rank 1 runs out of memory in the backward of the first step's last micro-batch (of 2)
             "sft_oom": lambda n: run_sft(n, out, fault_on_rank=(1, 2, "oom"), grad_accum=2),
             "ppo_oom": lambda n: ppo_loop(n, out, iterations=2, micro_batch=n // 2, fault_on_rank=(1, 2, "oom")),
             # fp16: the first update overflows, and only rank 1 sees a non-finite statistic
             "ppo_overflow": lambda n: ppo_loop(n, out, iterations=2, mixed_precision="fp16", max_bad_updates=10,
                                                fault_on_rank=(1, 1, "overflow")),
             # resumed after a crash between save_checkpoint's two renames, each rename 2 s slow
             "ppo_recover": lambda n: (slow_replace(2.0), ppo_loop(n, out, iterations=4, checkpoint_every=2))[1]}
    register_optimizer_step_pre_hook(record_first_gradients)
    model = tasks[task](per_device)
    state = Accelerator(cpu=True)
    weights = {k: v.detach().contiguous().clone() for k, v in model.state_dict().items()}
    save_file(weights, str(out / f"{task}-{state.num_processes}-{state.process_index}.safetensors"))
    save_file({k: v.contiguous() for k, v in INITIAL.items()}, str(out / f"{task}-initial.safetensors"))
    save_file(FIRST_GRADS, str(out / f"{task}-{state.num_processes}-{state.process_index}-grads.safetensors"))


if __name__ == "__main__":
    task, out, per_device = sys.argv[1], Path(sys.argv[2]), int(sys.argv[3])
    if len(sys.argv) > 4:  # notebook_launcher PROCESSES PORT: what a notebook cell would call
        from accelerate import notebook_launcher
        notebook_launcher(run, (task, out, per_device), num_processes=int(sys.argv[4]),
                          master_addr="127.0.0.1", use_port=sys.argv[5])
    else:
        run(task, out, per_device)
