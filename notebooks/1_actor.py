# %% [markdown]
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/your-name/simple-rlhf-tiny/blob/main/1_actor.ipynb)

# %% [markdown]
# # 1 · The actor: supervised fine-tuning (SFT)
#
# The actor is the base model taught to answer like the demonstrations: a causal-LM loss on the
# response tokens only. The prompt is context, not something to imitate, so its labels are
# masked (−100), and so are the pads. The built-in demonstrator is imperfect on purpose (rude,
# rambling, repeated or cut-off answers, notebook 0), so SFT learns its flaws too: that is the
# headroom RLHF can close (notebook 3 trains it, notebook 4 measures how much of it closes).
#
# $$\mathcal{L}_{\text{SFT}} = -\frac{1}{|R|}\sum_{t \in R} \log \pi_\theta(y_t \mid x, y_{<t})$$
#
# > **1 · Actor：监督微调（SFT）。** actor 是学会像示范那样回答的基础模型：只在回答部分的 token 上计算语言模型损失。提示词只是上下文，不需要模仿，所以它的标签被屏蔽（−100），pad 也一样。内置示范者故意不完美（粗鲁、啰嗦、重复、话没说完，见笔记本 0），SFT 会把这些缺陷一起学去：这正是 RLHF 可以弥补的空间（笔记本 3 训练它，笔记本 4 测量实际弥补了多少）。

# %% tags=["parameters"]
PRESET = "auto"     # "auto" follows what 0_download chose
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
preset, data_cfg, cfg = util.start("actor", PRESET, DATA, show=("lr", "batch_size", "epochs"), overrides=SET)

# %% [markdown]
# ## Data: the actor's share of the training rows
# The training rows are split once, deterministically, between the three stages in the ratio
# `data_cfg.split` (actor : critic : rlhf), so the reward model and PPO see prompts the actor never
# trained on. The default is the original's 2:4:4; the offline presets (`tiny` and
# `smollm2-135m`) give the actor the largest share (5:3:2), since a model trained from scratch
# needs more demonstrations to learn the format; the real model keeps the same split so that its
# figures compare with the tiny model's.
# The line below prints the rows each stage got.
#
# > **数据：actor 分到的训练行。** 训练数据按 `data_cfg.split`（actor : critic : rlhf）的比例一次性、确定性地分给三个阶段，因此奖励模型和 PPO 看到的提示词是 actor 训练时没见过的。默认是原项目的 2:4:4；离线预设（`tiny` 和 `smollm2-135m`）给 actor 最大的份额（5:3:2），因为从零训练的模型需要更多示范才能学会格式；真实模型沿用同样的比例，以便和 tiny 模型的结果对比。下面一行打印每个阶段分到的行数。

# %%
base_dir = util.require_checkpoint(util.stage_dir("base"), "base")
tokenizer = util.load_tokenizer(base_dir)
train_rows, eval_rows = util.load_data(data_cfg)
parts = util.split_rows(train_rows, data_cfg.split, data_cfg.seed)
if data_cfg.max_eval_rows:
    eval_rows = eval_rows[:data_cfg.max_eval_rows]
train_examples, summary = util.encode_sft(parts["actor"], tokenizer, data_cfg.max_length, data_cfg.max_prompt_length)
eval_examples, _ = util.encode_sft(eval_rows, tokenizer, data_cfg.max_length, data_cfg.max_prompt_length)
print({k: len(v) for k, v in parts.items()}, "rows per stage")
print(util.format_summary(summary))

# %% [markdown]
# What the loss sees: one example, token by token. Positions labelled `-100` (the BOS and the
# prompt) add nothing to the loss; the response and its EOS are learned. The sequence is exactly
# what the tokenizer's chat template renders (notebook 0).
#
# > 损失函数看到的内容：逐个 token 展示一个样本。标签为 `-100` 的位置（BOS 和提示词）不计入损失；回答及其 EOS 才是学习目标。这个序列与分词器的 chat template 渲染结果完全一致（见笔记本 0）。

# %%
import inspect
from functools import partial
collate = partial(util.collate_sft, pad_id=tokenizer.pad_token_id)
batch = collate(train_examples[:2])
ids, labels = batch["input_ids"][0].tolist(), batch["labels"][0].tolist()
print(util.token_table([tokenizer.decode([t]) for t in ids], label=labels))
print(inspect.getsource(util.sft.sft_loss))

# %% [markdown]
# ## Before training: samples from the base model
# `gold` is the judge of notebook 0: 0.4 for the right content, up to 0.6 for behaviour. With the
# offline fallback (`tiny`, `ci`) the base model has random weights, so its answers are strings
# of the tokenizer's pieces: fragments of words (such as `relan`) and single bytes, shown as �
# where a byte is only part of a character. A pretrained base model (`smollm2-135m`) writes text,
# but not yet in the answer format.
#
# > **训练前：基础模型的回答。** `gold` 是笔记本 0 介绍的评判器：内容正确得 0.4，行为最多得 0.6。用离线后备模型时（`tiny`、`ci`），基础模型的权重是随机的，所以它的回答是分词器词表片段的拼接：单词的碎片（例如 `relan`）和单个字节；一个字节只是某个字符的一部分时显示为 �。预训练的基础模型（`smollm2-135m`）能写出通顺的文字，但还不是回答的格式。

# %%
from transformers import AutoModelForCausalLM
model = AutoModelForCausalLM.from_pretrained(base_dir)
util.check_tokenizer_matches(model, tokenizer, str(base_dir))
prompts = [r["prompt"] for r in eval_rows[:cfg.sample_prompts]]
judge = util.gold_judge_for(prompts)

def show_samples(model, title):
    texts, ended, _ = util.complete(model, tokenizer, prompts, data_cfg.max_prompt_length, cfg.max_new_tokens)
    print(title)
    for p, t, e in zip(prompts, texts, ended):
        gold = f", gold {judge(p, t, e):.2f}" if judge else ""
        print(f"  {p}\n    -> {t!r} (EOS: {e}{gold})")

show_samples(model, "base model (greedy):")

# %% [markdown]
# ## Training
# `util.fit` is the loop shared with the reward model: AdamW, linear warm-up and decay, gradient
# clipping, explicit gradient accumulation (halving the micro-batch on out-of-memory), bf16
# autocast where the GPU or CPU has bf16 (`mixed_precision="auto"`), eval loss and perplexity
# after each epoch, periodic checkpoints. The loss it trains with, `sft_loss_fn`, is `sft_loss`
# above with one saving: the LM head runs only on the positions that have a label.
#
# > **训练。** `util.fit` 是与奖励模型共用的训练循环：AdamW、线性预热与衰减、梯度裁剪、显式梯度累积（显存不足时把 micro-batch 减半）、硬件支持 bf16 时自动用 bf16（`mixed_precision="auto"`）、每个
# > epoch 后计算验证损失和困惑度、定期保存可续训的检查点。它用的损失 `sft_loss_fn` 就是上面的
# > `sft_loss`，只省了一步：LM head 只在有标签的位置上计算。

# %%
log = util.open_log("actor", [cfg, data_cfg], preset, SET)  # model/logs/actor.log, .jsonl, TensorBoard
evaluate = lambda m: util.sft.evaluate_sft(m, eval_examples, collate)
model, history = util.fit(model, train_examples, collate, util.sft.sft_loss_fn, cfg,
                          log=log, evaluate=evaluate, resume_dir=util.resume_dir("actor"), tokenizer=tokenizer)
final = history["epochs"][-1]
print(f"trained {len(history['steps'])} steps: eval loss {final['eval_loss']:.3f}, perplexity {final['perplexity']:.2f}")

# %%
import matplotlib.pyplot as plt
steps = history["steps"]
plt.figure(figsize=(6, 2.8))
plt.plot([s["step"] for s in steps], [s["loss"] for s in steps], label="train loss")
plt.plot([e["step"] for e in history["epochs"]], [e["eval_loss"] for e in history["epochs"]], "o-", label="eval loss")
plt.xlabel("step"); plt.legend(); plt.title("SFT loss"); plt.tight_layout(); plt.show()

# %% [markdown]
# After SFT the actor answers in the data's format. Greedy decoding shows its most likely answers,
# below; whether it also copied the demonstrator's habits shows when it *samples*, as PPO will:
# the verdict after them samples the actor on more eval prompts and counts the flaws.
#
# > SFT 之后，actor 能按数据的格式回答。贪心解码给出它最可能的回答（见下）；它是否也学会了示范者的坏习惯，要看它**采样**时的表现（PPO 用的就是采样）：后面的结论在更多评测提示词上采样并统计缺陷。上图：横轴是训练步数（step），纵轴是损失；train loss 是每一步的训练损失，eval loss（圆点）是每个 epoch 结束时的验证损失。

# %%
show_samples(model, "actor after SFT (greedy):")

# %% [markdown]
# ### Verdict
# Computed by `util.verdict.sft_verdict` from this run: the eval loss over the epochs, and the gold
# of the actor's greedy and sampled answers (at PPO's temperature) to the same eval prompts, with
# the flaws the judge finds in the samples. A gap counts only beyond twice its standard error.
#
# > ### 结论由 `util.verdict.sft_verdict` 从这次训练算出：各 epoch 的验证损失，以及 actor 对同一批评测提示词的贪心回答和采样回答（用 PPO 的温度）的 gold 分数，外加 judge 在采样回答中找到的缺陷。只有超过两倍标准误差的差距才算数。

# %%
if judge is not None:
    verdict_prompts = list(dict.fromkeys(r["prompt"] for r in eval_rows))[:64]  # enough answers to count flaws
    ppo_cfg = util.make_config("ppo", preset, **util.stage_overrides(SET, "ppo"))
    answers = {}
    for mode in ("greedy", "sampled"):
        texts, ended, _ = util.complete(model, tokenizer, verdict_prompts, data_cfg.max_prompt_length, cfg.max_new_tokens,
                                        do_sample=mode == "sampled", temperature=ppo_cfg.temperature)
        answers[mode] = list(zip(verdict_prompts, texts, ended))
    print(util.verdict.sft_verdict(history["epochs"], [judge(*a) for a in answers["greedy"]],
                                   [judge(*a) for a in answers["sampled"]],
                                   [util.gold_flaws(*a) for a in answers["sampled"]], ppo_cfg.temperature))

# %%
metrics = {"preset": preset, "steps": len(steps), "train_seconds": history["train_seconds"],
           "train_loss": steps[-1]["loss"], "eval_loss": final["eval_loss"],
           "perplexity": final["perplexity"], "history": history["epochs"]}
util.save_checkpoint(util.stage_dir("actor"), model, tokenizer, configs=[cfg, data_cfg], metrics=metrics)
util.clear_resume("actor")  # the stage is complete: a rerun starts afresh
print("saved model/actor")
