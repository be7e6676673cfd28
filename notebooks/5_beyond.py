# %% [markdown]
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/your-name/simple-rlhf-tiny/blob/main/5_beyond.ipynb)

# %% [markdown]
# # 5 · Beyond PPO: DPO, RLOO and GRPO on the same data
#
# Notebook 3 trained the actor with PPO. Three other optimisers are in common use today, and this
# notebook runs each from the same SFT actor (`model/actor`), against the same reward model
# (`model/critic`), on the same prompts, then lets the gold judge say which answers best:
#
# | | learns from | critic | answers per prompt | KL to the SFT model |
# |---|---|---|---|---|
# | **PPO** (notebook 3) | sampled answers, reward model | yes (GAE) | 1 | per token, in the reward |
# | **DPO** | the preference pairs, no sampling | no | 0 | implicit, through β·log(π/π_ref) |
# | **RLOO** | sampled answers, reward model | no: the other k − 1 answers are the baseline | k | per answer, in the score |
# | **GRPO** | sampled answers, reward model | no: the group's mean and std | G | k3 estimate, in the loss |
#
# The online three sample and score exactly as PPO does (the same `generate`, the same reward
# model with its normalised head, the same EOS penalty and clip) and get the same budget: as many
# answers per iteration as a PPO rollout, and as many generated answer tokens in all as PPO used.
# DPO gets as many optimiser steps as PPO's actor took, each on as many sequences.
#
# > **5 · 超越 PPO：在同一份数据上比较 DPO、RLOO 和 GRPO。** 笔记本 3 用 PPO 训练了 actor。如今还有三种常用的优化方法，本笔记本让它们都从同一个 SFT actor（`model/actor`）出发，面对同一个奖励模型（`model/critic`）和同样的提示词，最后由 gold judge 判断谁的回答最好。上表列出每种方法学习的来源、是否需要 critic、每个提示词采样几条回答、以及 KL 约束放在哪里。三种在线方法的采样和打分与 PPO 完全相同，预算也相同：每次迭代的回答数与一次 PPO rollout 相同，生成的回答 token 总数与 PPO 相同。DPO 的优化步数与 PPO 的 actor 相同，每步处理的序列数也相同。

# %% tags=["parameters"]
PRESET = "auto"
DATA = "dataset"
SET = ""            # any config field, as space-separated stage.field assignments (README, Settings)
PROJECT_SEARCH = ""  # folders to look below for the project, colon-separated; empty means cwd, /content, MyDrive
REPO_URL = ""        # with no copy found: git clone this URL (on Colab into /content/simple-rlhf-tiny)

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
from rlhf import beyond, beyond_loop, scoreboard
from rlhf.overrides import stage_overrides

preset, data_cfg, cfg = util.start("beyond", PRESET, DATA, show=(
    "dpo_beta", "rloo_k", "rloo_kl_coef", "grpo_group", "grpo_clip", "grpo_kl_coef", "grpo_epochs"), overrides=SET)
ppo_cfg = util.make_config("ppo", preset, **stage_overrides(SET, "ppo"))
eval_cfg = util.make_config("eval", preset, **stage_overrides(SET, "eval"))

# %% [markdown]
# ## Part 1 · The math on toy tensors
# ### DPO: the policy as its own reward model
# $$r(x, y) = \beta \log\frac{\pi(y\mid x)}{\pi_{\text{ref}}(y\mid x)}, \qquad L = -\log\sigma\big(r(x, y_w) - r(x, y_l)\big)$$
# The same Bradley–Terry loss as the reward model's (notebook 2), with the implicit reward r in
# place of a learned score. Two pairs: the first already prefers its chosen answer a little more
# than the reference does, the second prefers its rejected one.
#
# > **第一部分 · 玩具张量上的数学。DPO：策略就是它自己的奖励模型。** 与奖励模型（笔记本 2）同样的 Bradley–Terry 损失，只是把学到的分数换成隐式奖励 r。两个偏好对：第一对比 reference 更偏向 chosen 一点，第二对却偏向 rejected。

# %%
policy_chosen, policy_rejected = torch.tensor([-10.0, -12.0]), torch.tensor([-14.0, -9.0])
ref_chosen, ref_rejected = torch.tensor([-11.0, -12.0]), torch.tensor([-14.0, -10.0])
loss, stats = beyond.dpo_loss(policy_chosen, policy_rejected, ref_chosen, ref_rejected, beta=cfg.dpo_beta)
print("implicit rewards, chosen", stats["chosen_rewards"], "rejected", stats["rejected_rewards"])
print(f"loss {float(loss):.4f} (log 2 = {torch.log(torch.tensor(2.0)):.4f} when pi = pi_ref) | accuracy {float(stats['accuracy'])}")

# %% [markdown]
# ### RLOO: the other answers are the baseline
# k answers to each prompt; each one's advantage is its score minus the mean score of the other
# k − 1, so the baseline never depends on the answer it judges. The KL penalty is paid once per
# answer, folded into its score.
#
# > **RLOO：其余回答就是基线。** 每个提示词采样 k 条回答；每条的优势是它的分数减去其余 k − 1 条的平均分，所以基线与被评价的回答无关。KL 惩罚按整条回答计一次，并入分数。

# %%
scores = torch.tensor([[1.0, 0.0, 0.5, -0.5], [2.0, 2.0, 2.0, 2.0]])  # (B, k): prompt 2's answers all equal
print("RLOO advantages\n", beyond.rloo_advantages(scores))
print(inspect.getsource(beyond.rloo_advantages))

# %% [markdown]
# ### GRPO: standardised within the group, clipped like PPO
# $$A_i = \frac{r_i - \text{mean}_g(r)}{\text{std}_g(r) + \epsilon}$$
# on every token of answer i, in PPO's clipped objective, plus β times the k3 estimate of the KL
# to the reference. A group whose answers all score the same teaches nothing (A = 0).
#
# > **GRPO：组内标准化，像 PPO 一样裁剪。** 优势放在回答 i 的每个 token 上，代入 PPO 的裁剪目标，再加上 β 乘以相对 reference 的 k3 KL 估计。一组回答分数全都相同时，什么也学不到（A = 0）。

# %%
advantages = beyond.grpo_advantages(scores).reshape(-1)                      # (N,)
print("GRPO advantages", advantages)
logprobs = torch.full((8, 3), -1.0); mask = torch.ones(8, 3)
loss, stats = beyond.grpo_loss(logprobs + 0.3, logprobs, logprobs, advantages, mask, cfg.grpo_clip, cfg.grpo_kl_coef)
print(f"loss {float(loss):.4f}", {k: round(float(v), 4) for k, v in stats.items()})

# %% [markdown]
# ## Part 2 · The models and the data
# The SFT actor is the starting point and the frozen reference of all three; the reward model's
# head is normalised with stage 2's statistics, as in PPO. DPO learns from the preference pairs
# the reward model learned from (the critic's share of the rows); RLOO and GRPO answer the PPO
# prompts. PPO's own run, `model/rlhf`, sets the token budget.
#
# > **第二部分 · 模型与数据。** SFT actor 是三种方法的起点，也是它们冻结的 reference；奖励模型的输出头与 PPO 中一样做了归一化。DPO 学习奖励模型学过的那些偏好对（critic 那份数据）；RLOO 和 GRPO 回答 PPO 的提示词。PPO 自己的训练（`model/rlhf`）决定 token 预算。

# %%
actor_dir = util.require_checkpoint(util.stage_dir("actor"), "actor")
critic_dir = util.require_checkpoint(util.stage_dir("critic"), "critic")
rlhf_dir = util.require_checkpoint(util.stage_dir("rlhf"), "rlhf")
tokenizer = util.load_tokenizer(actor_dir)
train_rows, eval_rows = util.load_data(data_cfg)
parts = util.split_rows(train_rows, data_cfg.split, data_cfg.seed)
pairs = beyond_loop.encode_dpo_pairs(parts["critic"], tokenizer, data_cfg.max_length, data_cfg.max_prompt_length)
held_out = beyond_loop.encode_dpo_pairs(eval_rows, tokenizer, data_cfg.max_length, data_cfg.max_prompt_length)
prompt_texts = [r["prompt"] for r in parts["rlhf"]]
prompt_ids = util.encode_prompts(parts["rlhf"], tokenizer, data_cfg.max_prompt_length)
judge = util.gold_judge_for(prompt_texts)
ppo_history = util.read_json(f"{rlhf_dir}/metrics.json")["history"]
ppo_tokens = round(sum(h["response_length"] * h["prompts"] for h in ppo_history))
budget_cfg = util.make_config("beyond", preset, **{**stage_overrides(SET, "beyond"), "token_budget": ppo_tokens})
print(f"{len(pairs)} preference pairs ({len(held_out)} held out), {len(prompt_ids)} prompts; "
      f"PPO generated {ppo_tokens} answer tokens in {len(ppo_history)} iterations; "
      f"DPO gets {beyond_loop.dpo_steps(ppo_cfg, cfg)} steps of {ppo_cfg.minibatch // 2} pairs")

# %% [markdown]
# ## Part 3 · DPO
# Each step: the log-probability of the chosen and the rejected answer under the actor and under
# the reference, the implicit rewards, the loss. Nothing is sampled. On held-out pairs the
# implicit reward model should rank the chosen answer first, like notebook 2's reward model.
#
# > **第三部分 · DPO。** 每一步：分别在 actor 和 reference 下计算 chosen 和 rejected 回答的 log 概率，得到隐式奖励和损失。不做任何采样。在留出的偏好对上，隐式奖励模型应当像笔记本 2 的奖励模型一样把 chosen 排在前面。

# %%
print(inspect.getsource(beyond_loop.dpo_step))
models = util.load_policy_models(actor_dir, critic_dir, ppo_cfg)
dpo_actor, dpo_history = beyond_loop.train_dpo(models, tokenizer, pairs, ppo_cfg, cfg)
frame = pd.DataFrame(dpo_history).set_index("step")
display(frame.iloc[::max(1, len(frame) // 8)][["loss", "accuracy", "margin", "chosen_reward", "rejected_reward"]].round(4)
        .rename(columns=util.verdict.labelled))
implicit = beyond_loop.implicit_rewards(dpo_actor, models[1], held_out, tokenizer.pad_token_id, cfg, ppo_cfg.temperature)
print("held-out implicit reward:", {k: round(v, 3) for k, v in implicit.items()})

# %% [markdown]
# ## Part 4 · RLOO
# k answers to each of rollout_batch / k prompts (as many answers as a PPO rollout), scored,
# penalised by β·KL per answer, the leave-one-out baseline subtracted, one REINFORCE pass. It
# stops when it has generated as many answer tokens as PPO did.
#
# > **第四部分 · RLOO。** 对 rollout_batch / k 个提示词各采样 k 条回答（回答数与一次 PPO rollout 相同），打分，按整条回答扣 β·KL，减去留一基线，做一次 REINFORCE 更新。生成的回答 token 数达到 PPO 的数量时停止。

# %%
print(inspect.getsource(beyond_loop.rloo_iteration))
models = util.load_policy_models(actor_dir, critic_dir, ppo_cfg)
rloo_actor, rloo_history = beyond_loop.train_online("rloo", models, tokenizer, prompt_ids, ppo_cfg, budget_cfg,
                                                    judge=judge, prompt_texts=prompt_texts)
KEYS = ["score", "gold", "kl", "response_length", "loss", "tokens_used"]
frame = pd.DataFrame(rloo_history).set_index("iteration")
display(frame.iloc[::max(1, len(frame) // 8)][KEYS].round(4).rename(columns=util.verdict.labelled))

# %% [markdown]
# ## Part 5 · GRPO
# A group of answers per prompt, scores standardised within the group, then `grpo_epochs` passes
# of PPO's clipped objective plus the k3 KL term. `ratio_mean` should stay near 1 and `clipfrac`
# small, as in PPO.
#
# > **第五部分 · GRPO。** 每个提示词一组回答，分数在组内标准化，然后做 `grpo_epochs` 轮 PPO 的裁剪目标加 k3 KL 项。与 PPO 一样，`ratio_mean` 应接近 1，`clipfrac` 应较小。

# %%
print(inspect.getsource(beyond_loop.grpo_iteration))
models = util.load_policy_models(actor_dir, critic_dir, ppo_cfg)
grpo_actor, grpo_history = beyond_loop.train_online("grpo", models, tokenizer, prompt_ids, ppo_cfg, budget_cfg,
                                                    judge=judge, prompt_texts=prompt_texts)
frame = pd.DataFrame(grpo_history).set_index("iteration")
display(frame.iloc[::max(1, len(frame) // 8)][KEYS + ["ratio_mean", "clipfrac", "kl_k3"]].round(4)
        .rename(columns=util.verdict.labelled))

# %%
for name, actor in (("dpo", dpo_actor), ("rloo", rloo_actor), ("grpo", grpo_actor)):
    if hasattr(actor, "merge_and_unload"):  # LoRA: a plain model again
        actor = actor.merge_and_unload()
    util.save_checkpoint(util.stage_dir(name), actor, tokenizer, configs=[ppo_cfg, budget_cfg, data_cfg])
    print("saved", util.stage_dir(name))

# %% [markdown]
# ## Part 6 · The scoreboard (one seed)
# The five policies answer the held-out prompts as in notebook 4: sampled answers, judged by the
# gold judge, by the reward model (normalised: 0 is an average SFT answer), and by their KL from
# the SFT model; the win rate counts, prompt by prompt, how often a policy's answer beats SFT's
# (ties half). This is one seed: `make scoreboard` runs three, with intervals (README, Beyond PPO).
#
# > **第六部分 · 成绩表（一个随机种子）。** 五个策略像笔记本 4 一样回答留出的提示词：采样回答由 gold judge、奖励模型（归一化：0 是一条普通的 SFT 回答）以及相对 SFT 的 KL 来评判；胜率逐个提示词统计该策略的回答胜过 SFT 的比例（平局算一半）。这里只有一个随机种子：`make scoreboard` 会跑三个并给出区间（README，Beyond PPO）。

# %%
from transformers import AutoModelForCausalLM
policies = {name: AutoModelForCausalLM.from_pretrained(util.stage_dir(folder)).eval()
            for name, folder in (("sft", "actor"), ("ppo", "rlhf"), ("dpo", "dpo"), ("rloo", "rloo"), ("grpo", "grpo"))}
reward_model = util.load_score_model(critic_dir, ppo_cfg).eval()
prompts = list(dict.fromkeys(r["prompt"] for r in eval_rows))[:eval_cfg.max_prompts or None]
records = util.evaluate_policies(policies, policies["sft"], reward_model, tokenizer, prompts, eval_cfg,
                                 data_cfg.max_prompt_length, judge=util.gold_judge_for(prompts))
tokens = {"ppo": ppo_tokens, "rloo": rloo_history[-1]["tokens_used"], "grpo": grpo_history[-1]["tokens_used"], "dpo": 0}
results = [{"algorithm": name, "seed": 0, "generated_tokens": tokens.get(name),
            "records": [r for r in records if r["policy"] == name]} for name in policies]
rows = scoreboard.board(results)
table = pd.DataFrame({name: {key: row[key][0] for key in scoreboard.FIGURES + ("generated_tokens",)}
                      for name, row in rows.items()}).T
display(table.round(3).rename(columns=util.verdict.labelled))
display(pd.DataFrame({name: row["flaws"] for name, row in rows.items()}).T.round(2).rename(columns=util.verdict.labelled))

# %% [markdown]
# ## Part 7 · Along training: gold and the proxy against KL
# Every iteration of PPO, RLOO and GRPO logged the gold score and the reward model's score of the
# answers it sampled (training prompts), and their KL from the SFT model. Plotted against that
# KL (5-iteration trailing means), an optimiser that fools the reward model shows the proxy still
# rising where gold has stopped or turned down: the over-optimisation of Gao et al. (2022).
# `make curve` runs PPO at several KL coefficients for the full picture.
#
# > **第七部分 · 沿训练过程：gold 与代理分数随 KL 的变化。** PPO、RLOO 和 GRPO 的每次迭代都记录了采样回答（训练提示词）的 gold 分数、奖励模型分数以及相对 SFT 的 KL。以 KL 为横轴（5 次迭代的滑动平均），如果优化器在糊弄奖励模型，就会看到代理分数还在上升，而 gold 已经停下甚至下降：这就是 Gao 等人（2022）描述的过度优化。`make curve` 会用多个 KL 系数跑 PPO，得到完整的图景。图：两幅图的横轴都是相对 SFT 的 KL 散度（每条回答的 nat 数），左图纵轴是 gold 分数，右图纵轴是奖励模型分数（代理分数）；每条线是一种算法（ppo、rloo、grpo）。

# %%
import matplotlib.pyplot as plt
runs = {"ppo": ppo_history, "rloo": rloo_history, "grpo": grpo_history}
curves = {name: scoreboard.curve_summary({"kl_coef": None, "history": h, "records": []}) for name, h in runs.items()}
fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
for name, curve in curves.items():
    kl = [p["kl"] for p in curve["points"]]
    for ax, key in zip(axes, ("gold", "rm_score")):
        ax.plot(kl, [p[key] for p in curve["points"]], label=name)
for ax, title in zip(axes, ("gold", "reward-model score")):
    ax.set_xlabel("KL from SFT (nats per answer)"); ax.set_title(title)
axes[0].legend(); plt.tight_layout(); plt.show()
display(pd.DataFrame({name: {"gold peak": c["gold_peak"]["gold"], "at KL": c["gold_peak"]["kl"],
                             "at iteration": c["gold_peak"]["iteration"], "gold drop after peak": c["gold_drop_after_peak"],
                             "RM rise after peak": c["rm_rise_after_peak"]} for name, c in curves.items()}).T.round(3)
        .rename(columns=util.verdict.labelled))

# %% [markdown]
# ## Verdict
# Computed from the numbers above: which optimiser wins on gold and by how much, which raised the
# reward model's score while gold fell (reward hacking), and whether gold turned down along
# training while the proxy kept rising. One seed decides little: the README's scoreboard has three.
#
# > **结论。** 由上面的数字计算得出：哪个优化器在 gold 上胜出、领先多少；哪个提高了奖励模型分数而 gold 下降了（奖励被钻空子）；以及沿训练过程 gold 是否在代理分数继续上升时转而下降。一个随机种子说明不了太多：README 的成绩表用了三个。

# %%
lines = scoreboard.verdict(rows) + [scoreboard.curve_verdict(name, c) for name, c in curves.items()]
print(util.verdict.join(lines, bullet="- "))
