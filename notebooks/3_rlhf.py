# %% [markdown]
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/your-name/simple-rlhf-tiny/blob/main/3_rlhf.ipynb)

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
# This notebook goes there in four steps: (1) each function of `rlhf/ppo.py` on a toy tensor,
# (2) one iteration by hand on the real models, with a table of every number for one answer,
# (3) the training loop in one short cell built from the same functions, (4) the full run with
# the library's runner (resumable, multi-process), which gives the loop's numbers exactly.
#
# > **3 · 用 PPO 做 RLHF。** actor 现在向奖励模型学习，而不是向示范学习。共有四个模型（沿用
# > DeepSpeed-Chat 的叫法）：**actor**（策略 π，训练）、**reference**（参考模型：冻结的 SFT 策略 π_ref，actor
# > 不能离它太远）、**reward**（冻结，在最后一个 token 上给整段回答打分）、**critic**（价值模型，训练，在每个 token 上预测之后的回报）。一次 PPO 迭代：**采样**回答 → **打分**（奖励模型、相对参考模型的
# > KL 散度惩罚、价值）→ 计算**优势**（GAE）→ 若干 **epoch** 的裁剪更新。本笔记本分四步：(1) 在玩具张量上逐个运行 `rlhf/ppo.py` 的函数；(2) 在真实模型上逐步运行一次迭代，并列出一条回答的每个数；
# > (3) 用同样的函数在一个简短的单元格里写出训练循环；(4) 用库里的训练器（可续训、可多进程）完整训练，它的数字与循环完全一致。

# %% [markdown]
# ![One PPO iteration: the actor samples answers to prompts; the actor, the reference, the reward model and the critic each read them; KL-penalised rewards; GAE; the PPO update of actor and critic](docs/ppo_flow.png)
#
# What flows between the four models in one iteration (`tools/make_diagram.py` draws it): the
# actor samples `query_responses`; the actor and the reference give `logprobs` and
# `ref_logprobs`, the reward model a `score`, the critic `values`; the per-token rewards are the
# KL penalty plus the score on the last token; GAE turns rewards and values into advantages and
# returns; the PPO epochs update the actor (policy loss) and the critic (value loss).
#
# > 一次迭代里四个模型之间流动的数据（由 `tools/make_diagram.py` 画出）：actor 采样出 `query_responses`；actor 和参考模型给出 `logprobs` 与 `ref_logprobs`，奖励模型给出 `score`，critic 给出 `values`；每个 token 的奖励是 KL 散度惩罚，最后一个 token 再加上分数；GAE 由奖励和价值算出优势和回报；PPO 的若干 epoch 更新 actor（策略损失）和 critic（价值损失）。图中橙色是训练的模型，蓝色是冻结的模型，灰色是数据。

# %% tags=["parameters"]
PRESET = "auto"
DATA = "dataset"
SET = ""            # any config field, as space-separated stage.field assignments (README, Settings)
PROJECT = "simple-rlhf-tiny"  # started outside the project (Colab): its folder, cloned if missing; /content/drive/MyDrive/NAME keeps it in Drive
REPO_URL = "https://github.com/your-name/simple-rlhf-tiny.git"  # cloned into PROJECT when it is not there

# %% cellView="form"
# @title Get the project, set up Colab, import util (the same cell in every notebook)
import os, subprocess, sys
root = "." if os.path.isfile("rlhf/colab.py") else PROJECT  # started outside it (Colab): PROJECT
if root.startswith("/content/drive/"): from google.colab import drive; drive.mount("/content/drive")
if not os.path.isfile(f"{root}/rlhf/colab.py"):  # not there yet: clone it
    subprocess.run(["git", "clone", "-q", "--depth=1", REPO_URL, root], check=True)
os.chdir(root); sys.path.insert(0, os.getcwd())
from rlhf.colab import in_colab, setup_colab
setup_colab()  # Colab only: pip-installs what requirements.txt wants and lacks (never torch)
import util  # only now: it imports transformers
print("project:", os.getcwd(), "| Colab:", in_colab(), "| GPU:", util.has_gpu())

# %%
import inspect, torch
import pandas as pd
from IPython.display import display
from util import ppo

preset, data_cfg, cfg = util.start("ppo", PRESET, DATA, show=(
    "kl_coef", "gamma", "lam", "clip_ratio", "clip_value", "ppo_epochs", "temperature", "score_clip"), overrides=SET)

# %% [markdown]
# ## Part 1 · The math on toy tensors
# ### 1 · Rollout: sample, then cut at the first EOS
# Prompts are **left**-padded so every answer starts at the same column. Sampling is pure
# (`top_k=0`, `top_p=1`) at temperature T, and T divides the logits again whenever a log-prob is
# computed, so the probabilities PPO reasons about are the ones that produced the tokens.
# Everything after the first EOS becomes padding and is masked out of every sum.
#
# > **第一部分 · 玩具张量上的数学。1 · 采样，然后在第一个 EOS 处截断。** 提示词**左**填充，所有回答从同一列开始。采样不做截断（`top_k=0`、`top_p=1`），温度为 T；之后每次计算 log 概率时 logits 也除以 T，所以 PPO 用到的概率正是生成这些 token 的概率。第一个 EOS 之后的内容都变成 pad，不计入任何求和。

# %%
responses = torch.tensor([[5, 6, 2, 7, 8],    # two tokens, then EOS (id 2), then junk
                          [5, 6, 7, 8, 9]])   # never stopped
mask, truncated, has_eos = ppo.response_mask(responses, eos_token_id=2, pad_token_id=0)
print("mask\n", mask, "\ntruncated\n", truncated, "\nhas_eos", has_eos)

# %% [markdown]
# ### 2 · Rewards: a KL penalty on every token, the score on the last one
# $$r_t = -\beta\,\big(\log\pi(y_t) - \log\pi_{\text{ref}}(y_t)\big) + \mathbb{1}[t = \text{last}]\cdot s$$
# The score $s$ is the reward model's, normalised with the statistics notebook 2 measured on SFT
# answers (mean 0, std 1), minus a penalty if the answer never emitted EOS, clipped to ±5.
# β = 0.1 keeps the policy near the reference: without it the actor drifts to whatever text
# fools the reward model.
#
# **The KL term, and why it can be negative.** KL(π‖π_ref) = E_{y∼π}[log π(y) − log π_ref(y)] is
# an expectation over answers the policy samples, and it is never negative. PPO cannot sum over
# every possible answer, so it estimates the KL on the tokens it sampled. **k1** = log π − log π_ref
# is unbiased (its mean over many samples is the KL), but one token, one answer or even one batch
# can give a negative number: where a sampled token is likelier under the reference than under the
# policy, its log-ratio is below 0. **k3** = (r − 1) − log r with r = π_ref/π is unbiased too and
# never negative, with less variance (Schulman, "Approximating KL divergence"). The reward uses
# k1, as the RLHF papers do; the logs show both (`kl`, `kl_k3`). Below, the first toy answer's
# k1 is negative: its second token has log π = −2.0 under the policy and −1.5 under the reference.
#
# > **2 · 奖励：每个 token 上有 KL 惩罚，最后一个 token 上加分数。** 分数 $s$ 来自奖励模型，用笔记本 2
# > 在 SFT 回答上测得的统计量归一化（均值 0、标准差 1），没有输出 EOS 的回答再扣一个惩罚，最后裁剪到
# > ±5。β = 0.1 让策略不远离参考模型；没有它，actor 会漂向任何能骗过奖励模型的文本。
# >
# > **KL 项，以及它为什么会是负数。** KL(π‖π_ref) = E_{y∼π}[log π(y) − log π_ref(y)] 是对策略采样出的回答求期望，它永远不小于 0。PPO 无法对所有可能的回答求和，只能用采样到的 token 来估计。**k1** = log π − log π_ref 是无偏估计（大量样本的均值就是 KL），但单个 token、单条回答甚至一整批都可能给出负数：如果采样到的 token 在 reference 下比在策略下更可能，它的对数比就小于 0。**k3** = (r − 1) − log r（r = π_ref/π）也是无偏的，而且永远不为负、方差更小（Schulman，"Approximating KL divergence"）。奖励里用的是 k1（与 RLHF 论文一致），日志里两者都记（`kl`、`kl_k3`）。下面第一条玩具回答的 k1 是负的：它的第二个 token 在策略下 log π = −2.0，在 reference 下是 −1.5。

# %%
logprobs = torch.tensor([[-1.0, -2.0, -0.5, 0.0, 0.0], [-1.0, -1.0, -1.0, -1.0, -1.0]])
ref_logprobs = torch.tensor([[-1.2, -1.5, -0.5, 0.0, 0.0], [-1.0, -1.0, -1.0, -1.0, -1.0]])
scores = torch.tensor([1.0, -0.5])
rewards, non_score = ppo.compute_rewards(scores, logprobs, ref_logprobs, mask, kl_coef=cfg.kl_coef)
print("rewards\n", rewards)
print("KL k1 per answer", ppo.kl_per_token(logprobs, ref_logprobs, mask).sum(1),
      "| k3 (never negative)", ppo.kl_per_token(logprobs, ref_logprobs, mask, "k3").sum(1))
print(inspect.getsource(ppo.compute_rewards))

# %% [markdown]
# ### 3 · Advantages: GAE over the valid tokens
# $$\delta_t = r_t + \gamma V_{t+1} - V_t, \qquad A_t = \sum_{k \ge t} (\gamma\lambda)^{k-t}\,\delta_k$$
# with γ = 1, λ = 0.95 and $V = 0$ after the last valid token. Returns $A + V$ are the critic's
# targets. The critic also outputs values after the EOS (the 9.0s below): they are ignored, and
# replacing them by anything leaves every advantage unchanged. Then the advantages are whitened
# (mean 0, std 1) over the valid tokens only, as the training loop does. The fast version is one
# matrix product; the loop below is its reference (the tests compare them).
#
# > **3 · 优势：在有效 token 上做 GAE。** γ = 1，λ = 0.95，最后一个有效 token 之后 $V = 0$。回报
# > $A + V$ 是 critic 的学习目标。critic 在 EOS 之后也有输出（下面的 9.0）：它们被忽略，换成任何值优势都不变。随后只在有效 token 上把优势标准化（均值 0、标准差 1），与训练循环一致。快速版本是一次矩阵乘法；下面的循环是它的参照（测试会比较两者）。

# %%
values = torch.tensor([[0.1, 0.2, 0.3, 9.0, 9.0], [0.0, 0.1, 0.0, 0.1, 0.0]])  # 9.0: after the EOS
advantages, returns = ppo.gae(values, rewards, mask, gamma=cfg.gamma, lam=cfg.lam)
naive, _ = ppo.gae_naive(values, rewards, mask, gamma=cfg.gamma, lam=cfg.lam)
print("advantages\n", advantages, "\nsame as the loop:", torch.allclose(advantages, naive))
anything = values.masked_fill(mask == 0, -123.0)
print("values after the EOS ignored:", torch.equal(ppo.gae(anything, rewards, mask, cfg.gamma, cfg.lam)[0], advantages))
whitened = ppo.masked_whiten(advantages, mask)
print("whitened\n", whitened, "\nmean and std over valid tokens:",
      round(float(ppo.masked_mean(whitened, mask)), 6), round(float(ppo.masked_var(whitened, mask).sqrt()), 6))
print(inspect.getsource(ppo.gae_naive))

# %% [markdown]
# ### 4 · The clipped policy loss
# $$L^{\text{policy}} = \mathbb{E}_t\big[\max(-A_t\rho_t,\; -A_t\,\text{clip}(\rho_t, 1-\epsilon, 1+\epsilon))\big],\quad \rho_t = \frac{\pi(y_t)}{\pi_{\text{old}}(y_t)}$$
# with the whitened advantages. Before the first update π = π_old, so every ratio is exactly 1
# and nothing is clipped. Once a token's ratio leaves [1 − ε, 1 + ε] in the direction its
# advantage favours, the clipped term wins and that token stops pushing.
#
# **π_old is not π_ref.** π_old is the policy that sampled this rollout: the actor's weights at the
# start of this iteration, held fixed through its epochs, so the ratio ρ measures how far *this
# update* has moved each token. π_ref is the SFT model, frozen for the whole run, and the KL
# penalty in the reward keeps *the whole run* near it. The statistic `approx_kl` =
# mean[½ (log π − log π_old)²] is the same kind of estimate (k2, never negative) of KL(π_old‖π):
# the size of one update, not the distance from the reference (that is `kl`).
#
# > **4 · 裁剪的策略损失。** 使用标准化后的优势。第一次更新前 π = π_old，所有比率都正好是 1，没有任何裁剪。一旦某个 token 的比率朝着优势鼓励的方向离开 [1 − ε, 1 + ε]，裁剪项胜出，这个 token 就不再推动更新。
# >
# > **π_old 不是 π_ref。** π_old 是采样出这次 rollout 的策略：本次迭代开始时 actor 的权重，在这次迭代的各个 epoch 中保持不变，所以比率 ρ 衡量的是*这一次更新*让每个 token 移动了多少。π_ref 是 SFT 模型，在整个训练中冻结，奖励里的 KL 惩罚让*整个训练*不远离它。统计量 `approx_kl` = mean[½ (log π − log π_old)²] 是 KL(π_old‖π) 的同类估计（k2，永不为负）：它是一次更新的大小，而不是与 reference 的距离（那是 `kl`）。

# %%
new_logprobs = logprobs + torch.tensor([[0.5, -0.1, 0.0, 0.0, 0.0], [0.0, 0.3, 0.0, -0.4, 0.1]])
loss, stats = ppo.policy_loss(new_logprobs, logprobs, whitened, mask, clip_ratio=cfg.clip_ratio)
print("ratio\n", (new_logprobs - logprobs).exp() * mask)
print("policy loss", round(float(loss), 4), {k: round(float(v), 4) for k, v in stats.items()})
print("at the start:", {k: float(v) for k, v in ppo.policy_loss(logprobs, logprobs, whitened, mask, cfg.clip_ratio)[1].items()})
print(inspect.getsource(ppo.policy_loss))

# %% [markdown]
# ### 5 · The clipped value loss
# $$L^{V} = \tfrac12\,\mathbb{E}_t\big[\max\big((V_t - R_t)^2,\ (V^{\text{old}}_t + \text{clip}(V_t - V^{\text{old}}_t, -c, c) - R_t)^2\big)\big]$$
# The critic regresses its values on the returns, but a value may not move more than c = 0.2
# from the rollout's in one iteration: where a bigger move would lower the error, the clipped
# error counts instead (`vf_clipfrac`). At the start (V = V_old) it is half the squared error.
# How good the critic is shows in its **explained variance**, 1 − Var[R − V] / Var[R] over the
# valid tokens: 1 when every value equals its return, 0 when the values do no better than one
# constant guess, below 0 when they do worse. Training logs it every iteration
# (`explained_variance`).
#
# > **5 · 裁剪的价值损失。** critic 把价值回归到回报上，但一次迭代中价值离 rollout 时的值不能超过
# > c = 0.2：如果更大的移动能降低误差，就改用裁剪后的误差（`vf_clipfrac` 统计其比例）。开始时（V = V_old）它就是平方误差的一半。critic 好不好，看它的**解释方差**（explained variance）：在有效 token 上算 1 − Var[R − V] / Var[R]。每个价值都等于回报时为 1，价值不比一个常数猜测好时为 0，更差时小于 0。训练时每次迭代都记录它（`explained_variance`）。

# %%
new_values = values + torch.tensor([[0.5, 0.1, -0.05, 3.0, 3.0], [0.0, 0.3, 0.0, -0.1, 0.0]])
loss, vstats = ppo.value_loss(new_values, values, returns, mask, clip_value=cfg.clip_value)
print("returns\n", returns)
print("value loss", round(float(loss), 4), {k: round(float(v), 4) for k, v in vstats.items()})
start_loss, _ = ppo.value_loss(values, values, returns, mask, cfg.clip_value)
print("at the start:", round(float(start_loss), 4), "= 0.5 * mean squared error",
      round(float(0.5 * ppo.masked_mean((values - returns) ** 2, mask)), 4))
print("explained variance of the toy values:", round(float(ppo.explained_variance(values, returns, mask)), 4),
      "| of values equal to the returns:", float(ppo.explained_variance(returns, returns, mask)))
print(inspect.getsource(ppo.value_loss))

# %% [markdown]
# ## Part 2 · One iteration by hand, on the real models
# The same steps on the trained checkpoints: a handful of prompts from the PPO split, every tensor
# made by a library function you can read (`util.rollout`, `util.ppo`). Dropout is off in all
# four models, so the log-probs of the rollout and of the first training pass agree exactly. The
# accelerator sets the device and mixed precision; every pass of the rollout runs under the same
# autocast as the update.
#
# > **第二部分 · 在真实模型上逐步运行一次迭代。** 在训练好的检查点上重复同样的步骤：从 PPO 那份数据取几个提示词，每个张量都由一个可以阅读的库函数算出（`util.rollout`、`util.ppo`）。四个模型都关闭了
# > dropout，所以 rollout 时和第一次训练前向时的 log 概率完全一致。accelerator 负责设备和混合精度；
# > rollout 的每次前向都与更新使用同样的 autocast。

# %%
actor_dir = util.require_checkpoint(util.stage_dir("actor"), "actor")
critic_dir = util.require_checkpoint(util.stage_dir("critic"), "critic")
tokenizer = util.load_tokenizer(actor_dir)
reward_stats = util.read_json(f"{critic_dir}/reward_stats.json")
accelerator = util.make_accelerator(cfg.mixed_precision)
actor, reference, reward_model, critic = util.load_ppo_models(actor_dir, critic_dir, cfg, accelerator.device)
for name, model in (("actor", actor), ("critic", critic)):
    util.check_tokenizer_matches(model, tokenizer, f"model/{name}")
train_rows, _ = util.load_data(data_cfg)
rows = util.split_rows(train_rows, data_cfg.split, data_cfg.seed)["rlhf"]
prompt_texts = [r["prompt"] for r in rows]
prompt_ids = util.encode_prompts(rows, tokenizer, data_cfg.max_prompt_length)
judge = util.gold_judge_for(prompt_texts)
print(f"{len(prompt_ids)} PPO prompts; reward statistics of SFT answers: mean {reward_stats['mean']:.3f}, "
      f"std {reward_stats['std']:.3f}; gold judge: {'yes' if judge else 'no (not the built-in tasks)'}")

# %% [markdown]
# **a · Prompts, left-padded.** Four prompts of different lengths. Pads come first; position ids
# count from the first real token, so padding changes nothing a model computes for the real ones.
#
# > **a · 左填充的提示词。** 四个长度不同的提示词。pad 在前；位置编号从第一个真实 token 开始计数，所以填充不会改变模型对真实 token 的任何计算。

# %%
batch = util.collate_prompts(prompt_ids[:4], tokenizer.pad_token_id, accelerator.device)
queries, query_mask = batch["input_ids"], batch["attention_mask"]                  # (B, P)
positions = util.position_ids_from_mask(query_mask)                                # (B, P)
for row in range(2):
    print(util.token_table([tokenizer.decode([t]) for t in queries[row].tolist()], width=12,
                           mask=query_mask[row].tolist(), position=positions[row].tolist()), "\n")
print("queries:", tuple(queries.shape), "(B, P)")

# %% [markdown]
# **b · Sample, c · cut at the first EOS.** `generate` returns the raw continuation (pads after
# an EOS, or the last tokens of an answer that never stopped); `response_mask` cuts each one after
# its first EOS. Prompt and response are joined into `query_responses`, the input of every pass.
#
# > **b · 采样；c · 在第一个 EOS 处截断。** `generate` 返回原始续写（EOS 之后是 pad，没有停下的回答一直写到长度上限）；`response_mask` 在第一个 EOS 之后截断。提示词和回答拼成 `query_responses`，作为之后每次前向计算的输入。

# %%
torch.manual_seed(cfg.seed)
with accelerator.autocast():
    sampled = util.generate(actor, queries, query_mask, tokenizer, cfg.max_new_tokens,
                            do_sample=True, temperature=cfg.temperature)           # (B, R)
mask, responses, has_eos = ppo.response_mask(sampled, tokenizer.eos_token_id, tokenizer.pad_token_id)
query_responses = torch.cat([queries, responses], 1)                               # (B, T)
attention_mask = torch.cat([query_mask, mask.long()], 1)                           # (B, T)
P = queries.shape[1]
texts, ended = util.decode_responses(responses.cpu(), tokenizer)
for prompt, text, length, eos in zip(prompt_texts[:4], texts, mask.sum(1).tolist(), has_eos.tolist()):
    print(f"{prompt}\n   -> {text!r} ({int(length)} tokens, EOS: {eos})")
print("responses:", tuple(responses.shape), "(B, R) | query_responses:", tuple(query_responses.shape), "(B, T)")

# %% [markdown]
# **d · Three passes, e · the score.** The actor and the reference give the log-probability of
# every sampled token (position t − 1 predicts token t, at temperature T); the critic gives a
# value at every position; the reward model scores each answer at its last token, then the score
# is penalised without EOS and clipped (`util.rollout.score`). It is normalised already: loading
# the models folded stage 2's statistics of SFT answers into the reward model's head,
# (w·h + b − mean) / std (`util.reward.fold_score_stats`). Before the first update the actor *is*
# the reference, so the KL is exactly 0.
#
# > **d · 三次前向；e · 打分。** actor 和参考模型给出每个采样 token 的 log 概率（位置 t − 1 预测
# > token t，温度为 T）；critic 在每个位置给出价值；奖励模型在每条回答的最后一个 token 上打分，然后对没有 EOS 的回答扣分并裁剪（`util.rollout.score`）。分数已经是归一化的：加载模型时把第二阶段在 SFT
# > 回答上的统计量折进了奖励模型的输出头，(w·h + b − mean) / std（`util.reward.fold_score_stats`）。第一次更新之前 actor 与参考模型完全相同，所以 KL 散度正好是 0。

# %%
with torch.no_grad(), accelerator.autocast():
    logits = util.rollout.response_logits(actor, query_responses, attention_mask, P)   # (B, R, V)
    logprobs = ppo.logprobs_from_logits(logits, responses, cfg.temperature)             # (B, R)
    entropy = ppo.entropy_from_logits(logits, cfg.temperature)                          # (B, R)
    ref_logprobs = util.rollout.reference_logprobs(actor, reference, query_responses, attention_mask,
                                                   P, cfg.temperature)                  # (B, R)
    values = util.rollout.response_values(critic, query_responses, attention_mask, P)   # (B, R)
    raw_scores, scores = util.rollout.score(reward_model, query_responses, attention_mask, has_eos,
                                            cfg)                                        # (B,), (B,)
print("logits", tuple(logits.shape), "| logprobs, ref_logprobs, values", tuple(logprobs.shape))
print("KL per answer:", ppo.kl_per_token(logprobs, ref_logprobs, mask).sum(1).tolist())
for prompt, text, eos, raw, s in zip(prompt_texts, texts, has_eos.tolist(), raw_scores.tolist(), scores.tolist()):
    gold = f" | gold {judge(prompt, text, eos):.2f}" if judge else ""
    print(f"reward model {raw:6.2f} -> after EOS penalty and clip {s:5.2f}{gold} | {text!r}")

# %% [markdown]
# **f · Rewards, advantages, whitening, and one answer token by token.** Every number PPO learns
# from, for the first answer: the two log-probs and the KL term they give (0 so far), the reward
# (the score lands on the last token), the critic's value, the GAE advantage, the same whitened
# over the batch's valid tokens, and the return the critic will regress on. The last two rows are
# past the EOS: the critic still output values there, and nothing uses them. The critic starts as
# the reward model with the same statistics folded into its head, so its values are in the units
# of the normalised score from the first iteration: a constant offset c in the values would shift
# every advantage by −c·λ^(L−1−t) and favour short (or long) answers.
#
# > **f · 奖励、优势、标准化，以及一条回答的逐 token 数值。** 第一条回答上 PPO 学习用到的每个数：两个
# > log 概率及其给出的 KL 项（目前为 0）、奖励（分数落在最后一个 token 上）、critic 的价值、GAE 优势、在整批有效 token 上标准化后的优势，以及 critic 要回归的回报。最后两行在 EOS 之后：critic 在那里仍有输出，但没有任何地方用到它们。critic 最初就是奖励模型，输出头里折进了同样的统计量，所以从第一次迭代起它的价值就和归一化后的分数同一尺度：价值里一个常数偏移 c 会让每个优势平移 −c·λ^(L−1−t)，偏向短（或长）的回答。

# %%
rewards, non_score_rewards = ppo.compute_rewards(scores, logprobs, ref_logprobs, mask, cfg.kl_coef)
advantages, returns = ppo.gae(values, rewards, mask, cfg.gamma, cfg.lam)                  # (B, R)
whitened = ppo.masked_whiten(advantages, mask)                                            # (B, R)

def token_frame(row, **extra):
    """The per-token numbers of answer `row`, its valid tokens and two past the EOS."""
    n = min(int(mask[row].sum()) + 2, responses.shape[1])
    columns = {"token": [tokenizer.decode([t]) for t in sampled[row, :n].tolist()], "mask": mask[row, :n],
               "log π": logprobs[row, :n], "log π_ref": ref_logprobs[row, :n],
               "−β·KL": non_score_rewards[row, :n], "reward": rewards[row, :n], "value": values[row, :n],
               "advantage": advantages[row, :n], "whitened": whitened[row, :n], "return": returns[row, :n],
               **{k: v[row, :n] for k, v in extra.items()}}
    return pd.DataFrame({k: v if k == "token" else v.double().cpu().numpy() for k, v in columns.items()}).round(3)

display(token_frame(0))

# %% [markdown]
# **What the advantage says, and what this table shows.** The advantage of a token is how much
# better things turned out after it than the critic expected before it: roughly, the rewards that
# followed (here the score at the end, minus the KL terms) minus the critic's value at that token,
# with GAE's λ blending in the critic's later guesses. A positive advantage makes the token more
# likely, a negative one less likely. But the advantage is only as good as the critic: before PPO
# has trained it, the critic's values are a reward model's guesses partway through an answer, and
# much of each advantage is the critic's error rather than anything the token did. The cell below
# measures that on this batch (the critic's explained variance) and points at the rows to read.
#
# > **优势说明了什么，这张表又显示了什么。** 一个 token 的优势，是它之后的实际结果比 critic 在它之前的预期好多少：大致是之后得到的奖励（这里是结尾的分数减去各个 KL 项）减去 critic 在这个 token 上的价值，GAE 的 λ 再把 critic 之后的几次估计混合进来。优势为正，这个 token 变得更可能；为负，变得更不可能。但优势的好坏取决于 critic：在 PPO 训练它之前，critic 的价值只是奖励模型对半截回答的猜测，每个优势里很大一部分是 critic 的误差，而不是这个 token 本身的作用。下面的单元格在这一批上度量这一点（critic 的解释方差），并指出值得看的几行。

# %%
def read_the_table(row):
    """Remarks on answer `row`'s table, computed from it: the critic's error, the most negative
    whitened advantage."""
    frame = token_frame(row)
    valid = frame[frame["mask"] == 1]
    explained = float(ppo.explained_variance(values, returns, mask))
    error = (valid["value"] - valid["return"]).abs().mean()
    print(f"values {valid['value'].min():.2f} to {valid['value'].max():.2f}, returns {valid['return'].min():.2f} "
          f"to {valid['return'].max():.2f}: the critic is off by {error:.2f} on average on this answer.")
    print(f"explained variance over the batch's valid tokens: {explained:.2f} "
          + ("(below 0.5: most of each advantage is the critic's error, not what the token did)" if explained < 0.5
             else "(the critic already accounts for most of the returns' spread)"))
    low = valid["whitened"].idxmin()
    token, following = valid["token"][low], "".join(valid["token"].iloc[low + 1:])
    print(f"most negative whitened advantage: {token!r} at position {low} ({valid['whitened'][low]:+.2f} whitened). "
          f"The critic expected {valid['value'][low]:.2f} from there; the return it learns towards is {valid['return'][low]:.2f} "
          f"(advantage = return - value = {valid['advantage'][low]:+.2f}); "
          + (f"what followed was {following!r}. " if following else "it ends the answer. ")
          + f"The update makes {token!r} less likely after this context.")

read_the_table(0)

# %% [markdown]
# **g · One PPO update, written out.** The rollout goes into a `Rollout` (what `util.make_rollout`
# returns in the loop). The update is `ppo_epochs` passes over it; each pass shuffles the answers
# and cuts them into minibatches, and each minibatch is one optimiser step: the actor's new
# log-probs give the clipped policy loss, the critic's new values the clipped value loss, one
# backward of their sum (the two models share no parameter, so each gets only its own gradient),
# each model's gradient clipped to norm `max_grad_norm` on its own, one AdamW step for both (two
# parameter groups, two learning rates). Below it is written out with the functions of part 1;
# `util.ppo_update` does exactly this, plus what long runs need (micro-batches and out-of-memory
# back-off, skipping non-finite steps, fp16 loss scaling). On the first minibatch the ratio is
# exactly 1; the mean ratio and the clip fraction over all the epochs say how far the update
# moved the policy.
#
# > **g · 一次 PPO 更新，逐行写出。** 把 rollout 装进一个 `Rollout`（循环里 `util.make_rollout` 返回的就是它）。更新就是在它上面做 `ppo_epochs` 轮：每一轮把回答打乱、切成 minibatch，每个 minibatch 做一次优化器步：actor 新的 log 概率给出裁剪的策略损失，critic 新的价值给出裁剪的价值损失，对两者之和做一次反向传播（两个模型没有共享参数，各自只得到自己的梯度），每个模型的梯度各自裁剪到范数 `max_grad_norm`，再对两者做一次 AdamW 更新（两个参数组，两个学习率）。下面用第一部分的函数把它逐行写出；`util.ppo_update` 做的正是这些，外加长时间训练需要的东西（micro-batch 与显存不足时的回退、跳过非有限值的步、fp16 的损失缩放）。第一个 minibatch 上比率正好是 1；所有 epoch 的平均比率和裁剪比例说明更新让策略移动了多远。

# %%
experience = util.rollout.Rollout(
    query_responses=query_responses, attention_mask=attention_mask, responses=responses, mask=mask,
    has_eos=has_eos, logprobs=logprobs, ref_logprobs=ref_logprobs, values=values, entropy=entropy,
    raw_scores=raw_scores, scores=scores, rewards=rewards, non_score_rewards=non_score_rewards,
    advantages=whitened, returns=returns)

# %% tags=["ppo-update"]
snapshot = lambda model: {k: v.detach().clone() for k, v in model.state_dict().items()}
start = {"actor": snapshot(actor), "critic": snapshot(critic)}   # to run the library's update from here too
optimizer, schedule = util.make_optimizer(actor, critic, cfg)
actor, critic, optimizer = accelerator.prepare(actor, critic, optimizer)
generator = torch.Generator().manual_seed(cfg.seed)
B, steps = experience.responses.shape[0], []
actor.train(); critic.train()
for epoch in range(cfg.ppo_epochs):
    order = torch.randperm(B, generator=generator)                                      # a new shuffle each epoch
    for begin in range(0, B, cfg.minibatch):
        rows = order[begin:begin + cfg.minibatch].to(experience.responses.device)
        mb = {k: getattr(experience, k)[rows] for k in ("query_responses", "attention_mask", "responses",
                                                          "mask", "logprobs", "values", "advantages", "returns")}
        with accelerator.autocast():
            logits = util.rollout.response_logits(actor, mb["query_responses"], mb["attention_mask"], P)  # (b, R, V)
            new_logprobs = ppo.logprobs_from_logits(logits, mb["responses"], cfg.temperature)           # (b, R)
            pg_loss, pg_stats = ppo.policy_loss(new_logprobs, mb["logprobs"], mb["advantages"], mb["mask"],
                                                cfg.clip_ratio)                                         # ()
            new_values = util.rollout.response_values(critic, mb["query_responses"], mb["attention_mask"], P)  # (b, R)
            vf_loss, vf_stats = ppo.value_loss(new_values, mb["values"], mb["returns"], mb["mask"], cfg.clip_value)
        optimizer.zero_grad(set_to_none=True)
        accelerator.backward(pg_loss + vf_loss)
        accelerator.unscale_gradients()                                  # fp16 only: undo the loss scale first
        torch.nn.utils.clip_grad_norm_(actor.parameters(), cfg.max_grad_norm)   # each model on its own
        torch.nn.utils.clip_grad_norm_(critic.parameters(), cfg.max_grad_norm)
        optimizer.step()
        steps.append({**pg_stats, **vf_stats, "policy_loss": pg_loss.detach(), "value_loss": vf_loss.detach()})
actor.eval(); critic.eval()
inline = {k: sum(float(step[k]) for step in steps) / len(steps) for k in steps[0]}
print(f"{cfg.ppo_epochs} epochs x {len(range(0, B, cfg.minibatch))} minibatch(es) of {min(B, cfg.minibatch)} answers "
      f"= {len(steps)} steps; means over them:")
print({k: round(v, 4) for k, v in inline.items()})

# %% [markdown]
# **The library's update gives the same numbers.** Back to the weights before the update, a fresh
# optimiser (and, for fp16, a fresh loss scale), the same shuffle seed, and `util.ppo_update` on the same rollout: the largest
# difference in any weight and in any statistic should be 0 (or a rounding error on a GPU).
#
# > **库里的更新给出同样的数字。** 回到更新前的权重，新建优化器（fp16 时还有新的损失缩放），用同样的打乱种子，在同一个 rollout 上调用 `util.ppo_update`：任何权重、任何统计量的最大差异都应该是 0（在 GPU 上可能有舍入误差）。

# %%
written_out = {"actor": snapshot(actor), "critic": snapshot(critic)}
actor.load_state_dict(start["actor"]); critic.load_state_dict(start["critic"])
accelerator = util.make_accelerator(cfg.mixed_precision)  # fp16: a fresh loss scale too
optimizer, schedule = util.make_optimizer(actor, critic, cfg)
optimizer = accelerator.prepare(optimizer)
update, skipped, _ = util.ppo_update(actor, critic, experience, cfg, optimizer, accelerator,
                                     torch.Generator().manual_seed(cfg.seed))
weights_now = {"actor": snapshot(actor), "critic": snapshot(critic)}
weight_gap = max(float((written_out[m][k].float() - weights_now[m][k].float()).abs().max())
                 for m in written_out for k in written_out[m] if written_out[m][k].is_floating_point())
print(f"util.ppo_update: {skipped} steps skipped; largest difference from the written-out update: "
      f"weights {weight_gap:.3g}, statistics {max(abs(inline[k] - update[k]) for k in inline):.3g}")
with torch.no_grad(), accelerator.autocast():
    after = ppo.logprobs_from_logits(util.rollout.response_logits(actor, query_responses, attention_mask, P),
                                     responses, cfg.temperature)
print("KL per answer now:", [round(k, 4) for k in ppo.kl_per_token(after, ref_logprobs, mask).sum(1).tolist()])
ratio_after = (after - logprobs).exp() * mask                                           # (B, R)
display(token_frame(0, **{"ratio after": ratio_after}))

# %% [markdown]
# **Reading the ratios.** The last column is π/π_old for each token after the whole update. Where a
# token's ratio left [1 − ε, 1 + ε] in the direction its advantage asks (above 1 + ε with a positive
# advantage, below 1 − ε with a negative one), the clipped term won: its gradient was 0 from then on
# and the token stopped pushing. Where it left the other way, carried by the updates of other
# tokens that share the same weights, the unclipped term won and kept pulling it back. Which
# tokens those are, computed from this update:
#
# > **读比率。** 最后一列是整个更新之后每个 token 的 π/π_old。如果某个 token 的比率朝优势要求的方向离开 [1 − ε, 1 + ε]（优势为正时高于 1 + ε，为负时低于 1 − ε），裁剪项胜出：从那时起它的梯度为 0，这个 token 不再推动更新。如果它朝相反方向离开（被共享同一组权重的其他 token 的更新带动），未裁剪项胜出，会继续把它拉回来。是哪些 token，由下面从这次更新中算出：

# %%
def outside_the_clip(row):
    """The tokens of answer `row` whose ratio after the update lies outside 1 -+ clip_ratio."""
    n = int(mask[row].sum())
    far = [(t, tokenizer.decode([int(responses[row, t])]), float(ratio_after[row, t]), float(whitened[row, t]))
           for t in range(n) if abs(float(ratio_after[row, t]) - 1) > cfg.clip_ratio]
    print(f"answer {row}: {len(far)} of {n} tokens outside [{1 - cfg.clip_ratio:.2f}, {1 + cfg.clip_ratio:.2f}]")
    for t, token, ratio, advantage in far:
        pushed = "up" if advantage > 0 else "down"
        agrees = (ratio > 1) == (advantage > 0)
        print(f"  position {t} {token!r}: ratio {ratio:.3f}, whitened advantage {advantage:+.2f} (pushed {pushed}); "
              + ("it moved the way its advantage asks: clipped, it stopped pushing" if agrees else
                 "it moved against its own advantage, carried by the other tokens' updates: the loss pulls it back"))

for row in range(len(responses)):
    outside_the_clip(row)

# %% [markdown]
# ## Part 3 · The training loop
# The whole of PPO is these steps in a loop: draw a batch of prompts, make a rollout (sample,
# the four models' passes, rewards, GAE, whitening: `make_rollout` is part 2's cells a–f in one
# function), update, anneal the learning rates. The models start again from the checkpoints.
# `loop_iterations` is kept small here: part 4 runs all of them.
#
# **A fixed or an adaptive β.** With `adaptive_kl` off (the default), β stays `kl_coef` for the
# whole run. With it on, β follows the controller of Ziegler et al. (2019): after each iteration
# β ← β · (1 + clip(KL / `target_kl` − 1, −0.2, 0.2) · n / `kl_horizon`), where KL is the
# iteration's mean k1 per answer and n its number of answers. A KL above the target raises β, below
# it lowers β, by at most 20% per `kl_horizon` answers. The last line of the loop does this.
#
# > **第三部分 · 训练循环。** 整个 PPO 就是把这些步骤放进循环：取一批提示词，做一次 rollout（采样、四个模型的前向、奖励、GAE、标准化：`make_rollout` 就是第二部分 a–f 合成的一个函数），更新，然后衰减学习率。模型重新从检查点加载。这里 `loop_iterations` 取得很小：第四部分会跑完全部迭代。
# >
# > **固定的还是自适应的 β。** `adaptive_kl` 关闭时（默认），β 在整个训练中保持为 `kl_coef`。打开时，β 按 Ziegler 等人（2019）的控制器调整：每次迭代之后 β ← β · (1 + clip(KL / `target_kl` − 1, −0.2, 0.2) · n / `kl_horizon`)，其中 KL 是这次迭代每条回答的平均 k1，n 是回答的条数。KL 高于目标就提高 β，低于目标就降低 β，每 `kl_horizon` 条回答最多变化 20%。循环的最后一行做的就是这件事。

# %%
actor, reference, reward_model, critic = util.load_ppo_models(actor_dir, critic_dir, cfg, accelerator.device)
loop_iterations = min(3, cfg.iterations)
print(f"adaptive_kl {cfg.adaptive_kl}: beta " + (f"starts at {cfg.kl_coef} and moves towards a KL of {cfg.target_kl} "
      f"per answer, horizon {cfg.kl_horizon}" if cfg.adaptive_kl else f"stays {cfg.kl_coef}"))

# %% tags=["ppo-loop"]
accelerator = util.make_accelerator(cfg.mixed_precision)
optimizer, schedule = util.make_optimizer(actor, critic, cfg)
actor, critic, optimizer = accelerator.prepare(actor, critic, optimizer)
kl_coef, loop_history = cfg.kl_coef, []
torch.manual_seed(cfg.seed)
for it in range(loop_iterations):
    ids = util.prompt_batch(prompt_ids, cfg.rollout_batch, cfg.seed, it)
    batch = util.collate_prompts(ids, tokenizer.pad_token_id, accelerator.device)
    with accelerator.autocast():  # the rollout in the update's precision: the first ratio is exactly 1
        rollout, _ = util.make_rollout((actor, reference, reward_model, critic), tokenizer, batch["input_ids"],
                                       batch["attention_mask"], cfg, kl_coef, util.Timer())
    update, skipped, _ = util.ppo_update(actor, critic, rollout, cfg, optimizer, accelerator,
                                         torch.Generator().manual_seed(cfg.seed * 1000 + it))
    schedule.step()  # the learning rates fall linearly to 0 over cfg.iterations
    loop_history.append({"iteration": it + 1, **util.rollout_stats(rollout, kl_coef), **update})
    if cfg.adaptive_kl:
        kl_coef = ppo.update_kl_coef(kl_coef, loop_history[-1]["kl"], cfg.target_kl, len(ids), cfg.kl_horizon)

# %%
KEYS = ["score", "kl", "response_length", "ratio_mean", "clipfrac", "policy_loss", "value_loss", "explained_variance"]
display(pd.DataFrame(loop_history).set_index("iteration")[KEYS].round(4).rename(columns=util.verdict.labelled))

# %% [markdown]
# ### Verdict on the loop
# What these iterations show, computed from `loop_history` by `util.verdict.training_verdict`: the
# mean of the first k iterations against the last k, each change against its noise, and the rule
# of part 4's table (a score rising while gold does not means the policy fools the reward model).
# A few iterations are too few to judge anything; part 4's full run is the one to read.
#
# > **循环的结论。** 这几次迭代说明了什么，由 `util.verdict.training_verdict` 从 `loop_history` 算出：前 k 次迭代的均值对比后 k 次，每个变化都和它的噪声比较，再套用第四部分表格中的规则（分数涨而 gold 不涨，说明策略在糊弄奖励模型）。几次迭代太少，什么也判断不了；要看的是第四部分的完整训练。

# %%
print(util.verdict.training_verdict(loop_history))

# %% [markdown]
# ## Part 4 · The full run
# `util.train_ppo` is that loop with what a long run needs: it resumes from a periodic checkpoint
# after a crash, runs in several processes (`accelerate launch`, each process sampling its own
# prompts, gradients averaged), halves its batches on out-of-memory, stops after too many
# non-finite updates, logs the gold score and samples. From the same checkpoints and seed its
# first iterations are the loop's, number for number (compared below, and in
# `tests/test_notebook_loop.py`).
#
# What each logged number means, and what a healthy run looks like:
#
# | number | meaning | healthy |
# |---|---|---|
# | `score` | reward model's score of the answers, normalised in its head (0: an average SFT answer) | rises |
# | `gold` | the gold judge's grade (notebook 0; never used for training) | rises with `score`; if `score` rises and `gold` does not, the policy is fooling the reward model |
# | `rlhf_reward` | normalised score − β·KL, what PPO maximises | rises |
# | `kl`, `kl_k3` | KL(π‖π_ref) summed over an answer, two estimators | starts at 0, grows slowly; a few nats. k1 may dip below 0 on a batch, k3 never |
# | `entropy` | mean per-token entropy of the policy that sampled the rollout | falls slowly; a collapse to ~0 means the policy stopped exploring |
# | `response_length`, `eos_rate` | tokens per answer, share that ended with EOS | length settles, EOS rate → 1 |
# | `ratio_mean` | mean π/π_old over the update | ≈ 1 (exactly 1 on the first minibatch) |
# | `clipfrac` | share of tokens whose ratio left [1−ε, 1+ε] | 0 – 0.2; higher means steps too large |
# | `approx_kl` | KL between π_old and π after the update | ≪ 0.1 |
# | `explained_variance` | 1 − Var[R − V] / Var[R]: the share of the returns' spread the critic's values account for | rises towards 1 as the critic learns; near 0 or below, the advantages are mostly its error |
# | `policy_loss`, `value_loss` | the two losses | value loss falls as the critic learns |
#
# > **第四部分 · 完整训练。** `util.train_ppo` 就是上面的循环，再加上长时间训练需要的东西：崩溃后从定期检查点续训、多进程运行（`accelerate launch`，每个进程采样自己的提示词，梯度取平均）、显存不足时把 batch 减半、连续出现非有限值的更新时停止、记录 gold 分数和样例。从同样的检查点和随机种子出发，它前几次迭代的数字与循环完全相同（下面会比较，`tests/test_notebook_loop.py` 也会检查）。每个记录的数字的含义，以及正常的训练是什么样子：
# >
# > | 数字 | 含义 | 正常的样子 |
# > |---|---|---|
# > | `score` | 奖励模型给回答的分数，已在输出头里归一化（0：一条普通的 SFT 回答） | 上升 |
# > | `gold` | gold judge 的评分（笔记本 0；从不用于训练） | 随 `score` 一起上升；若 `score` 上升而 `gold` 不升，说明策略在糊弄奖励模型 |
# > | `rlhf_reward` | 归一化分数 − β·KL，PPO 最大化的目标 | 上升 |
# > | `kl`、`kl_k3` | 一条回答上累加的 KL 散度 KL(π‖π_ref)，两种估计量 | 从 0 开始缓慢增长，几个 nat；k1 在某一批上可能低于 0，k3 从不为负 |
# > | `entropy` | 采样这批 rollout 的策略的平均每 token 熵 | 缓慢下降；跌到约 0 表示策略不再探索 |
# > | `response_length`、`eos_rate` | 每条回答的 token 数、以 EOS 结束的比例 | 长度趋于稳定，EOS 比例 → 1 |
# > | `ratio_mean` | 更新中 π/π_old 的均值 | ≈ 1（第一个 minibatch 上正好是 1） |
# > | `clipfrac` | 比率离开 [1−ε, 1+ε] 的 token 比例 | 0 – 0.2；更高说明步子太大 |
# > | `approx_kl` | 更新前的 π_old 与更新后的 π 之间的 KL 散度 | ≪ 0.1 |
# > | `explained_variance` | 1 − Var[R − V] / Var[R]：回报的波动中 critic 的价值能解释的比例 | 随 critic 的学习升向 1；接近 0 或小于 0 时，优势主要是 critic 的误差 |
# > | `policy_loss`、`value_loss` | 两个损失 | 价值损失随 critic 学习而下降 |

# %% [markdown]
# `explained_variance` is new in this table: the critic's explained variance of part 1's value loss,
# measured on each rollout before the update. The run's summary below does not read the first and
# the last iteration (each is one batch, and noisy): it compares the mean of the first k iterations
# with the mean of the last k, and calls a change real only beyond twice its standard error.
#
# > 上表中的 `explained_variance` 是 critic 的解释方差（见第一部分的价值损失），在每次更新前的 rollout 上测得：它应随 critic 的学习升向 1；接近 0 或小于 0 时，优势主要是 critic 的误差。下面的训练总结不看第一次和最后一次迭代（每次只是一批，噪声很大），而是比较前 k 次迭代的均值和后 k 次的均值，只有变化超过两倍标准误差才算数。

# %%
actor, reference, reward_model, critic = util.load_ppo_models(actor_dir, critic_dir, cfg)
log = util.open_log("rlhf", [cfg, data_cfg], preset, SET)  # every iteration's numbers, also to TensorBoard
actor, critic, history, samples = util.train_ppo((actor, reference, reward_model, critic), tokenizer,
                                                 prompt_ids, cfg, log=log, judge=judge,
                                                 prompt_texts=prompt_texts, resume_dir=util.resume_dir("rlhf"))
same = pd.DataFrame(history[:loop_iterations]).set_index("iteration")[KEYS]
print("first iterations, runner minus notebook loop (all 0: the same numbers):")
display((same - pd.DataFrame(loop_history).set_index("iteration")[KEYS]).abs().round(6))
k = util.verdict.window_size(len(history))
summary_keys = ("score", "gold", "kl", "response_length", "eos_rate", "entropy", "clipfrac", "explained_variance")
print(f"the run in windows: mean of the first {k} iterations against the last {k}")
display(pd.DataFrame(util.verdict.window_table(history, summary_keys, k)).set_index("number").round(3)
        .rename(index=util.verdict.labelled, columns=util.verdict.labelled))

# %%
import matplotlib.pyplot as plt
keys = [key for key in ("score", "gold", "kl", "response_length", "entropy", "explained_variance") if key in history[-1]]
fig, axes = plt.subplots(1, len(keys), figsize=(2.6 * len(keys), 2.4))
its = [h["iteration"] for h in history]
for ax, key in zip(axes, keys):
    ax.plot(its, [h[key] for h in history]); ax.set_title(key); ax.set_xlabel("iteration")
    for window in (its[:k], its[-k:]):  # the windows the summary and the verdict compare
        ax.axvspan(window[0] - 0.5, window[-1] + 0.5, color="grey", alpha=0.15)
plt.tight_layout(); plt.show()

# %%
print("samples along training:")
for s in samples:
    gold = f" | gold {s['gold']:.2f}" if "gold" in s else ""
    print(f"  it {s['iteration']:>3} | score {s['score']:6.2f}{gold} | {s['prompt']}\n           -> {s['response']!r}")

# %% [markdown]
# ### Verdict
# This run, judged by its own numbers (`util.verdict.training_verdict` on `history` and
# `samples`): the windows shaded in the plots, each change against its noise, the rule of the
# table above applied to the score and gold, and the logged samples that the reward model rates
# above an average SFT answer although the gold judge finds a flaw. Notebook 4 measures the same
# question on held-out prompts, with more answers.
#
# > ### 结论用这次训练自己的数字来评判（`util.verdict.training_verdict`，输入 `history` 和 `samples`）：图中阴影标出的两个窗口、每个变化与其噪声的比较、把上表的规则用在分数和 gold 上，以及那些奖励模型打分高于一条普通 SFT 回答、gold judge 却找到缺陷的样例。笔记本 4 在留出的提示词上用更多回答检验同一个问题。上面的图：每个小图是一个记录的数字，标题就是它的名字（score 奖励模型分数、gold 分数、kl 相对参考模型的 KL 散度、response_length 回答长度、entropy 熵、explained_variance 解释方差）；横轴是迭代次数（iteration），纵轴是这个数字，灰色阴影是结论比较的前 k 次和后 k 次迭代两个窗口。

# %%
print(util.verdict.training_verdict(history, samples))

# %%
if cfg.lora_rank:
    actor = actor.merge_and_unload()  # a plain model again, loadable with AutoModelForCausalLM
metrics = {"preset": preset, "iterations": len(history), "first": history[0], "last": history[-1],
           "history": history, "samples": samples}
util.save_checkpoint(util.stage_dir("rlhf"), actor, tokenizer, configs=[cfg, data_cfg], metrics=metrics)
util.clear_resume("rlhf")  # the stage is complete: a rerun starts afresh
print("saved model/rlhf")
