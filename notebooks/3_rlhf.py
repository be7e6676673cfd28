# %% [markdown]
# # 3 · RLHF with PPO
#
# The actor now learns from the reward model instead of from demonstrations. Four models take
# part (the names DeepSpeed-Chat uses):
#
# | model | from | trained? | role |
# |---|---|---|---|
# | **actor** | `model/actor` | yes | the policy π that writes answers |
# | **reference** | `model/actor` | frozen | π_ref, the SFT policy the actor must stay close to |
# | **reward** | `model/critic` | frozen | scores a whole answer once, at its last token |
# | **critic** | `model/critic` | yes | the value model: predicts, at every token, the return to come |
#
# One PPO iteration: **sample** answers → **score** them (reward model, KL penalty against the
# reference, values) → compute **advantages** (GAE) → a few **epochs** of clipped updates.
# Every piece is a small function in `rlhf/ppo.py`; this notebook runs each one on a toy tensor
# before the full loop.

# %% parameters
PRESET = "auto"
DATA = "dataset"
PROJECT_SEARCH = ""  # folders to look below for the project, ":"-separated; "" = cwd, /content, MyDrive
REPO_URL = ""        # with no copy found: git clone this URL (on Colab into /content/simple-rlhf-tiny)

# %%
import inspect, torch
from util import ppo

preset, data_cfg, cfg = util.start("ppo", PRESET, DATA)  # Colab set-up, configs printed, seeds

# %% [markdown]
# ## 1 · Rollout: sample, then cut at the first EOS
# Prompts are **left**-padded so every answer starts at the same column. Sampling is pure
# (`top_k=0`, `top_p=1`) at temperature T, and T divides the logits again whenever a log-prob is
# computed, so the probabilities PPO reasons about are the ones that produced the tokens.
# Everything after the first EOS becomes padding and is masked out of every sum.

# %%
responses = torch.tensor([[5, 6, 2, 7, 8],    # two tokens, then EOS (id 2), then junk
                          [5, 6, 7, 8, 9]])   # never stopped
mask, truncated, has_eos = ppo.response_mask(responses, eos_token_id=2, pad_token_id=0)
print("mask\n", mask, "\ntruncated\n", truncated, "\nhas_eos", has_eos)

# %% [markdown]
# ## 2 · Rewards: a KL penalty on every token, the score on the last one
# $$r_t = -\beta\,\big(\log\pi(y_t) - \log\pi_{\text{ref}}(y_t)\big) + \mathbb{1}[t = \text{last}]\cdot s$$
# The score $s$ is the reward model's, normalised with the statistics notebook 2 measured on SFT
# answers (mean 0, std 1), minus a penalty if the answer never emitted EOS, clipped to ±5.
# β = 0.1 keeps the policy near the reference: without it the actor drifts to whatever text
# fools the reward model.

# %%
logprobs = torch.tensor([[-1.0, -2.0, -0.5, 0.0, 0.0], [-1.0, -1.0, -1.0, -1.0, -1.0]])
ref_logprobs = torch.tensor([[-1.2, -1.5, -0.5, 0.0, 0.0], [-1.0, -1.0, -1.0, -1.0, -1.0]])
scores = torch.tensor([1.0, -0.5])
rewards, non_score = ppo.compute_rewards(scores, logprobs, ref_logprobs, mask, kl_coef=0.1)
print("rewards\n", rewards)
print("KL k1 per answer", ppo.kl_per_token(logprobs, ref_logprobs, mask).sum(1),
      "| k3 (never negative)", ppo.kl_per_token(logprobs, ref_logprobs, mask, "k3").sum(1))

# %% [markdown]
# ## 3 · Advantages: GAE over the valid tokens
# $$\delta_t = r_t + \gamma V_{t+1} - V_t, \qquad A_t = \sum_{k \ge t} (\gamma\lambda)^{k-t}\,\delta_k$$
# with γ = 1, λ = 0.95 and $V = 0$ after the last valid token. Returns $A + V$ are the critic's
# targets; the advantages are then whitened (mean 0, std 1) over valid tokens only. The fast
# version is one matrix product; the test suite checks it against the obvious loop below.

# %%
values = torch.tensor([[0.1, 0.2, 0.3, 9.0, 9.0], [0.0, 0.1, 0.0, 0.1, 0.0]])
advantages, returns = ppo.gae(values, rewards, mask, gamma=1.0, lam=0.95)
naive, _ = ppo.gae_naive(values, rewards, mask, gamma=1.0, lam=0.95)
print("advantages\n", advantages, "\nsame as the loop:", torch.allclose(advantages, naive))
print("whitened\n", ppo.masked_whiten(advantages, mask))
print(inspect.getsource(ppo.gae_naive))

# %% [markdown]
# ## 4 · The clipped losses
# $$L^{\text{policy}} = \mathbb{E}_t\big[\max(-A_t\rho_t,\; -A_t\,\text{clip}(\rho_t, 1-\epsilon, 1+\epsilon))\big],\quad \rho_t = \frac{\pi(y_t)}{\pi_{\text{old}}(y_t)}$$
# Before the first update π = π_old, so every ratio is exactly 1 and nothing is clipped. The
# value loss is clipped the same way around the rollout's values.

# %%
new_logprobs = logprobs + torch.tensor([[0.5, -0.1, 0.0, 0.0, 0.0], [0.0, 0.3, 0.0, -0.4, 0.1]])
loss, stats = ppo.policy_loss(new_logprobs, logprobs, advantages, mask, clip_ratio=0.2)
print("policy loss", round(float(loss), 4), {k: round(float(v), 4) for k, v in stats.items()})
print("at the start:", {k: float(v) for k, v in ppo.policy_loss(logprobs, logprobs, advantages, mask, 0.2)[1].items()})

# %% [markdown]
# ## The four models
# Dropout is switched off in all of them, so the log-probs of the rollout and of the first
# training pass agree exactly. With `lora_rank > 0` only LoRA adapters train, and the reference
# is the same network with its adapters switched off (no second copy in memory). With
# `critic_lora_rank > 0` the critic trains adapters and its value head only, which saves its
# gradients and AdamW state (3x its weights) in memory.

# %%
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification
from rlhf.rollout import disable_dropout
actor_dir = util.require_checkpoint(util.stage_dir("actor"), "actor")
critic_dir = util.require_checkpoint(util.stage_dir("critic"), "critic")
tokenizer = util.load_tokenizer(actor_dir)
actor = disable_dropout(AutoModelForCausalLM.from_pretrained(actor_dir))
reward_model = disable_dropout(AutoModelForSequenceClassification.from_pretrained(critic_dir)).eval()
critic = disable_dropout(AutoModelForSequenceClassification.from_pretrained(critic_dir))
reward_stats = util.read_json(f"{critic_dir}/reward_stats.json")
for name, model in (("actor", actor), ("critic", critic)):
    util.check_tokenizer_matches(model, tokenizer, f"model/{name}")
if cfg.lora_rank:
    from peft import get_peft_model
    actor = get_peft_model(actor, util.lora_config(cfg.lora_rank))
    reference = None
else:
    reference = disable_dropout(AutoModelForCausalLM.from_pretrained(actor_dir)).eval()
if cfg.critic_lora_rank:  # adapters on the critic too; peft keeps its value head ("score") fully trainable
    from peft import get_peft_model
    critic = get_peft_model(critic, util.lora_config(cfg.critic_lora_rank, "SEQ_CLS"))
print("reward statistics of SFT answers:", reward_stats)

train_rows, eval_rows = util.load_dataset_dir(DATA)
parts = util.split_rows(train_rows, data_cfg.split, data_cfg.seed)
prompt_texts = [r["prompt"] for r in parts["rlhf"]]
prompt_ids = util.encode_prompts(parts["rlhf"], tokenizer, data_cfg.max_prompt_length)
judge = util.gold_judge_for(prompt_texts)
print(f"{len(prompt_ids)} PPO prompts; gold judge: {'yes' if judge else 'no (not the built-in tasks)'}")

# %% [markdown]
# ## Training
# What each logged number means, and what a healthy run looks like:
#
# | number | meaning | healthy |
# |---|---|---|
# | `score` | reward model's raw score of the answers | rises |
# | `gold` | the built-in judge's grade (never used for training) | rises with `score`; if `score` rises and `gold` does not, the policy is fooling the reward model |
# | `rlhf_reward` | normalised score − β·KL, what PPO maximises | rises |
# | `kl`, `kl_k3` | KL(π‖π_ref) summed over an answer, two estimators | starts at 0, grows slowly; a few nats. k1 may dip below 0 on a batch, k3 never |
# | `entropy` | mean per-token entropy of the policy that sampled the rollout | falls slowly; a collapse to ~0 means the policy stopped exploring |
# | `response_length`, `eos_rate` | tokens per answer, share that ended with EOS | length settles, EOS rate → 1 |
# | `ratio_mean` | mean π/π_old over the update | ≈ 1 (exactly 1 on the first minibatch) |
# | `clipfrac` | share of tokens whose ratio left [1−ε, 1+ε] | 0 – 0.2; higher means steps too large |
# | `approx_kl` | KL between π_old and π after the update | ≪ 0.1 |
# | `policy_loss`, `value_loss` | the two losses | value loss falls as the critic learns |
# | `time_generate`, `time_score`, `time_train` | seconds per phase | generation and training dominate |

# %%
log = util.RunLog(util.stage_dir("logs"), "rlhf")
actor, critic, history, samples = util.train_ppo((actor, reference, reward_model, critic), tokenizer,
                                                 prompt_ids, cfg, reward_stats, log=log, judge=judge,
                                                 prompt_texts=prompt_texts, resume_dir=util.resume_dir("rlhf"))
first, last = history[0], history[-1]
for key in ("score", "gold", "kl", "response_length", "eos_rate", "clipfrac", "ratio_mean"):
    if key in last:
        print(f"{key:>16}: {first[key]:8.3f} -> {last[key]:8.3f}")

# %%
import matplotlib.pyplot as plt
keys = [k for k in ("score", "gold", "kl", "response_length", "clipfrac", "entropy") if k in last]
fig, axes = plt.subplots(1, len(keys), figsize=(3 * len(keys), 2.6))
its = [h["iteration"] for h in history]
for ax, key in zip(axes, keys):
    ax.plot(its, [h[key] for h in history]); ax.set_title(key); ax.set_xlabel("iteration")
plt.tight_layout(); plt.show()

# %%
print("samples along training:")
for s in samples:
    print(f"  it {s['iteration']:>3} | score {s['score']:6.2f} | {s['prompt']}\n           -> {s['response']!r}")

# %%
if cfg.lora_rank:
    actor = actor.merge_and_unload()  # a plain model again, loadable with AutoModelForCausalLM
metrics = {"preset": preset, "iterations": len(history), "first": first, "last": last,
           "history": history, "samples": samples}
util.save_checkpoint(util.stage_dir("rlhf"), actor, tokenizer, configs=[cfg, data_cfg], metrics=metrics)
util.clear_resume("rlhf")  # the stage is complete: a rerun starts afresh
print("saved model/rlhf")
