# %% [markdown]
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/your-name/simple-rlhf-tiny/blob/main/2_critic.ipynb)

# %% [markdown]
# # 2 · The reward model (the "critic" notebook)
#
# A reward model reads a prompt and a response and returns one number: how much a person would
# like this answer. It is the base transformer with a scalar head
# (`AutoModelForSequenceClassification`, `num_labels=1`), trained on preference pairs with the
# Bradley–Terry loss
#
# $$\mathcal{L}_{\text{RM}} = -\log \sigma\big(r(x, y_{\text{chosen}}) - r(x, y_{\text{rejected}})\big)$$
#
# **Why "critic"?** The notebook keeps the original Simple_RLHF's name because the model it
# trains plays two parts in notebook 3: frozen, it is the **reward model** that scores a whole
# answer once, at its last token; copied and trained on, it is the **critic** (the value model)
# that predicts, at every token, the reward still to come. Both read the same scalar head, one at
# the last position and one at every position.
#
# Only the difference of the two scores is learned, so the scale and offset of the reward are
# arbitrary; notebook 3 needs them fixed, so this notebook also measures the mean and spread of
# the reward on the actor's own answers.
#
# > **2 · 奖励模型（“critic”笔记本）。** 奖励模型读入提示词和回答，输出一个数：人会有多喜欢这个回答。它是带一个标量输出头的基础模型（`AutoModelForSequenceClassification`，`num_labels=1`），用偏好对上的 Bradley–Terry 损失训练。**为什么叫 critic？** 沿用原项目 Simple_RLHF 的命名，因为这里训练的模型在笔记本 3 里扮演两个角色：冻结时它是**奖励模型**，在回答的最后一个 token
# > 上给整段回答打一次分；复制一份继续训练时它是 **critic**（价值模型），在每个 token 上预测之后还能得到多少奖励。两者读的是同一个标量头，一个只读最后位置，一个读每个位置。损失只约束两个分数之差，所以奖励的尺度和偏移是任意的；笔记本 3 需要固定它们，因此本笔记本还会在 actor 自己的回答上测量奖励的均值和标准差。

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
preset, data_cfg, cfg = util.start("critic", PRESET, DATA, show=("lr", "batch_size", "epochs", "init_from"), overrides=SET)

# %% [markdown]
# ## The pairwise loss
# `pairwise_loss` (in `rlhf/reward.py`) on three toy pairs: a clear win, a tie, a loss. The tie
# costs log 2 and counts as wrong, so a model that gives every answer the same score has
# accuracy 0, not 0.5.
#
# > **成对损失。** 用三个玩具偏好对演示 `pairwise_loss`（在 `rlhf/reward.py` 中）：明显胜出、平局、输掉。平局的损失是 log 2 并算作判错，所以给所有回答打同样分数的模型准确率是 0，而不是 0.5。

# %%
import inspect, torch
print(inspect.getsource(util.reward.pairwise_loss))
chosen_scores, rejected_scores = torch.tensor([2.0, 0.5, -1.0]), torch.tensor([-1.0, 0.5, 1.0])
for c, r in zip(chosen_scores, rejected_scores):
    print(f"r_chosen {c:+.1f}  r_rejected {r:+.1f}  ->  -log sigmoid(margin) = {-torch.nn.functional.logsigmoid(c - r):.3f}")
loss, accuracy, margin = util.reward.pairwise_loss(chosen_scores, rejected_scores)
print(f"loss (their mean) {loss:.3f} | accuracy {accuracy:.3f} | mean margin {margin:.3f}")

# %% [markdown]
# ## Pairs
# Chosen and rejected answers go through the model in **one** forward pass: the batch holds the
# B chosen sequences first and the B rejected ones after them, so both are scored by exactly the
# same weights and padding.
#
# > **偏好对。** chosen 和 rejected 在**一次**前向计算中通过模型：一个 batch 先放 B 条 chosen，再放
# > B 条 rejected，两者由完全相同的权重和 padding 打分。

# %%
init_dir = util.require_checkpoint(util.stage_dir(cfg.init_from), cfg.init_from)
actor_dir = util.require_checkpoint(util.stage_dir("actor"), "actor")
tokenizer = util.load_tokenizer(init_dir)
train_rows, eval_rows = util.load_data(data_cfg)
parts = util.split_rows(train_rows, data_cfg.split, data_cfg.seed)
if data_cfg.max_eval_rows:
    eval_rows = eval_rows[:data_cfg.max_eval_rows]
train_pairs, summary = util.encode_pairs(parts["critic"], tokenizer, data_cfg.max_length, data_cfg.max_prompt_length)
eval_pairs, _ = util.encode_pairs(eval_rows, tokenizer, data_cfg.max_length, data_cfg.max_prompt_length)
print(f"{len(train_pairs)} training pairs, {len(eval_pairs)} eval pairs")
print(util.format_summary(summary))
from functools import partial
collate = partial(util.collate_pairs, pad_id=tokenizer.pad_token_id)
batch = collate(train_pairs[:2])
print("batch:", tuple(batch["input_ids"].shape), "= 2 chosen rows, then 2 rejected rows")
for row in batch["input_ids"]:
    print("  ", tokenizer.decode(row, skip_special_tokens=True)[-70:])

# %% [markdown]
# ## The score is read at the last real token
# The head runs on every position; the reward is the value at the last non-pad token (the EOS),
# the only position that has seen the whole answer. Appending pads must not change it.
#
# > **分数读在最后一个真实 token 上。** 输出头在每个位置都有输出；奖励取最后一个非 pad token（即 EOS）处的值，只有这个位置看到了完整的回答。在后面补 pad 不应改变它。

# %%
from transformers import AutoModelForSequenceClassification
model = AutoModelForSequenceClassification.from_pretrained(init_dir, num_labels=1)
model.config.pad_token_id = tokenizer.pad_token_id
util.check_tokenizer_matches(model, tokenizer, str(init_dir))
with torch.no_grad():  # a fresh head: N(0, 1/sqrt(d+1)) as in Ziegler et al.
    model.score.weight.normal_(0, 1 / (model.score.weight.shape[1] + 1) ** 0.5)
print(inspect.getsource(util.reward.sequence_scores))
model.eval()
before = util.reward.evaluate_reward(model, eval_pairs, collate)
print("before training:", {k: round(v, 3) for k, v in before.items()})

# %% [markdown]
# ## Training
# The same loop as the actor's (`util.fit`), with `reward_loss_fn`: the pairwise loss on one
# forward pass over the chosen and rejected rows.
#
# > **训练。** 与 actor 相同的训练循环（`util.fit`），损失换成 `reward_loss_fn`：对 chosen 和 rejected
# > 一次前向计算后求成对损失。

# %%
log = util.open_log("critic", [cfg, data_cfg], preset, SET)
evaluate = lambda m: util.reward.evaluate_reward(m, eval_pairs, collate)
model, history = util.fit(model, train_pairs, collate, util.reward.reward_loss_fn, cfg,
                          log=log, evaluate=evaluate, resume_dir=util.resume_dir("critic"), tokenizer=tokenizer)
final = history["epochs"][-1]
print(f"held-out accuracy {final['eval_accuracy']:.3f}, mean margin {final['eval_margin']:.3f}")

# %% [markdown]
# ### Verdict
# Computed by `util.verdict.reward_verdict` from this run: the held-out accuracy (how often the
# chosen answer scores above the rejected one) and the mean margin, before and after training,
# against chance.
#
# > ### 结论由 `util.verdict.reward_verdict` 从这次训练算出：训练前后在留出偏好对上的准确率（chosen 得分高于 rejected 的比例）和平均差值，并与随机猜测比较。

# %%
print(util.verdict.reward_verdict(before, final, len(eval_pairs)))

# %% [markdown]
# Left, the pairwise loss over the training steps; right, the trained reward model's scores of
# the held-out chosen and rejected answers: the two histograms should separate.
#
# > 图：左图横轴是训练步数（step），纵轴是成对损失（pairwise loss）；右图是训练好的奖励模型给留出偏好对中 chosen 和 rejected 回答打的分数的直方图（横轴是分数，纵轴是回答数），两个直方图应当分开。

# %%
import matplotlib.pyplot as plt
chosen, rejected = util.reward.score_pairs(model, eval_pairs, collate)
fig, axes = plt.subplots(1, 2, figsize=(9, 2.8))
axes[0].plot([s["step"] for s in history["steps"]], [s["loss"] for s in history["steps"]])
axes[0].set_title("pairwise loss"); axes[0].set_xlabel("step")
axes[1].hist(chosen, bins=30, alpha=0.6, label="chosen"); axes[1].hist(rejected, bins=30, alpha=0.6, label="rejected")
axes[1].set_title("reward on held-out pairs"); axes[1].legend()
plt.tight_layout(); plt.show()

# %% [markdown]
# ## Reward statistics for PPO
# In PPO (notebook 3) the reward model's score is added to a second term of a fixed size: a
# per-token penalty for moving away from the SFT model, explained there. So the score's scale
# matters: a raw score of several units swamps that penalty and the policy learns to exploit the
# reward model. We sample answers from the SFT actor on prompts of the PPO split and record their
# reward's mean and standard deviation; notebook 3 normalises scores with them.
#
# > **给 PPO 用的奖励统计量。** 在 PPO 中（笔记本 3），奖励模型的分数要和另一个固定大小的项相加：每个 token 上对偏离 SFT 模型的惩罚（在那里解释）。所以分数的尺度很重要：几个单位的原始分数会压过这个惩罚，策略就会去钻奖励模型的空子。我们在 PPO 那份提示词上让
# > SFT actor 采样回答，记录奖励的均值和标准差；笔记本 3 用它们把分数归一化。

# %%
from transformers import AutoModelForCausalLM
actor = AutoModelForCausalLM.from_pretrained(actor_dir)
ppo_cfg = util.make_config("ppo", preset, **util.stage_overrides(SET, "ppo"))
prompts = [r["prompt"] for r in parts["rlhf"][:max(64, 2 * ppo_cfg.rollout_batch)]]
texts, ended, sequences = util.complete(actor, tokenizer, prompts, data_cfg.max_prompt_length,
                                        ppo_cfg.max_new_tokens, do_sample=True, temperature=ppo_cfg.temperature)
scores = torch.tensor(util.reward.score_texts(model, sequences, tokenizer.pad_token_id))
stats = {"mean": float(scores.mean()), "std": float(scores.std()), "n": len(scores),
         "eos_rate": sum(ended) / len(ended), "source": "SFT actor samples on the rlhf split"}
print("reward on SFT samples:", {k: round(v, 3) if isinstance(v, float) else v for k, v in stats.items()})
del actor
_ = util.free_gpu_cache()

# %%
metrics = {"preset": preset, "steps": len(history["steps"]), "train_seconds": history["train_seconds"],
           "eval_accuracy": final["eval_accuracy"], "eval_margin": final["eval_margin"],
           "eval_loss": final["eval_loss"], "history": history["epochs"]}
util.save_checkpoint(util.stage_dir("critic"), model, tokenizer, configs=[cfg, data_cfg],
                     metrics=metrics, files={"reward_stats.json": stats})
util.clear_resume("critic")  # the stage is complete: a rerun starts afresh
print("saved model/critic")
