"""Where one PPO iteration of ours spends its time: the project's train_ppo at the benchmark's
settings, one warm-up iteration, then one iteration under cProfile (and, with --ops, under the
torch profiler for the heaviest aten ops).

    python bench/profile_ppo.py [--shape tiny] [--precision fp32] [--ops]
"""
from __future__ import annotations

import argparse
import cProfile
import pstats
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from common import SHAPES, Settings, make_tokenizer, ppo_models, ppo_prompts  # noqa: E402

# (module file, function) -> what it is, in the order an iteration runs them
WATCH = [
    ("generation.py", "generate", "generate: model.generate, 32 new tokens"),
    ("rollout.py", "response_logits", "actor/reference forward -> response logits (score + train)"),
    ("rollout.py", "reference_logprobs", "  score: reference forward + logprobs"),
    ("rollout.py", "response_values", "critic forward -> values (score + train)"),
    ("rollout.py", "score", "  score: reward-model forward"),
    ("ppo.py", "logprobs_from_logits", "logprobs from (B, R, V) logits"),
    ("ppo.py", "entropy_from_logits", "entropy from (B, R, V) logits (a statistic)"),
    ("ppo.py", "gae", "GAE"),
    ("ppo_loop.py", "ppo_update", "train: ppo_epochs x one minibatch"),
    ("ppo_loop.py", "ppo_losses", "  train: forwards + losses"),
    ("accelerator.py", "backward", "  train: backward"),
    ("accelerator.py", "clip_grad_norm_", "  train: gradient-norm clip (actor, critic)"),
    ("adam.py", "step", "  train: AdamW steps (actor, critic)"),
    ("ppo_loop.py", "rollout_stats", "rollout statistics"),
]


class ProfiledLog:
    """train_ppo's `log`: starts the profilers after the warm-up iteration, stops after the next."""

    def __init__(self, ops: bool):
        self.profile, self.iterations, self.records = cProfile.Profile(), 0, []
        self.torch_prof = None
        if ops:
            from torch.profiler import ProfilerActivity, profile
            self.torch_prof = profile(activities=[ProfilerActivity.CPU], record_shapes=True)

    def __call__(self, message):
        pass

    def record(self, stats):
        self.iterations += 1
        self.records.append(stats)
        if self.iterations == 1:
            if self.torch_prof is not None:
                self.torch_prof.__enter__()
            self.profile.enable()
        elif self.iterations == 2:
            self.profile.disable()
            if self.torch_prof is not None:
                self.torch_prof.__exit__(None, None, None)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--shape", default="tiny", choices=sorted(SHAPES))
    parser.add_argument("--precision", default="fp32", choices=["fp32", "bf16"])
    parser.add_argument("--ops", action="store_true", help="also list the heaviest aten ops")
    args = parser.parse_args()

    from rlhf.config import make_config
    from rlhf.models import disable_dropout
    from rlhf.ppo_loop import train_ppo

    st = Settings(task="ppo", shape=args.shape, precision=args.precision)
    cfg = make_config("ppo", "opt-125m", iterations=2, rollout_batch=st.prompts, minibatch=st.prompts,
                      ppo_epochs=st.ppo_epochs, max_new_tokens=st.new_tokens, actor_lr=st.lr,
                      critic_lr=st.lr, mixed_precision={"fp32": "no", "bf16": "bf16"}[args.precision],
                      log_samples_every=10**6)
    models = tuple(disable_dropout(m) for m in ppo_models(st.shape, st.seed))
    log = ProfiledLog(args.ops)
    train_ppo(models, make_tokenizer(SHAPES[st.shape]["vocab_size"]), ppo_prompts(st), cfg,
              log=log, progress=False)

    rec = log.records[1]
    total = sum(rec[f"time_{p}"] for p in ("generate", "score", "train"))
    print(f"one PPO iteration, {args.shape} shape, {args.precision}: generate {rec['time_generate']:.2f} s, "
          f"score {rec['time_score']:.2f} s, train {rec['time_train']:.2f} s (sum {total:.2f} s; "
          f"times under cProfile)")
    stats = pstats.Stats(log.profile).stats  # (file, line, name) -> (cc, nc, tt, ct, callers)
    print(f"{'calls':>6} {'seconds':>8} {'share':>6}  function")
    for file, name, what in WATCH:
        hits = [(v[1], v[3]) for (f, _, n), v in stats.items() if f.endswith(file) and n == name]
        if hits:
            calls, seconds = max(hits, key=lambda h: h[1])
            print(f"{calls:>6} {seconds:>8.2f} {100 * seconds / total:>5.1f}%  {what} [{file}:{name}]")
    if log.torch_prof is not None:
        print(log.torch_prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=15))
        print(log.torch_prof.key_averages(group_by_input_shape=True).table(
            sort_by="self_cpu_time_total", row_limit=15, max_name_column_width=30,
            max_shapes_column_width=60))


if __name__ == "__main__":
    main()
