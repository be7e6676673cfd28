# %% [markdown]
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/your-name/simple-rlhf-tiny/blob/main/0_download.ipynb)

# %% [markdown]
# # 0 · Data, tokenizer and base model
#
# The first of five notebooks that run the whole RLHF pipeline:
#
# | notebook | what it makes |
# |---|---|
# | **0_download** | `model/base/` and `tokenizer/`: the base model everything starts from |
# | 1_actor | `model/actor/`: the base model fine-tuned on demonstrations (SFT) |
# | 2_critic | `model/critic/`: a reward model trained on preference pairs |
# | 3_rlhf | `model/rlhf/`: the actor improved by PPO against the reward model |
# | 4_test | `model/eval/`: SFT vs RLHF, side by side |
#
# With a GPU and internet, the base model is `facebook/opt-125m` from the Hugging Face hub.
# Offline (or on a CPU), the notebook builds its own: a byte-level BPE tokenizer trained on the
# dataset and a small OPT model from a config, so the whole pipeline runs in minutes. The outputs
# you see were made by `make notebook-outputs` with the `smollm2-135m` preset: SmolLM2-135M-Instruct,
# a real pretrained model that already speaks, on 2 CPU cores (`OUTPUTS_PRESET=tiny` makes the
# tiny preset's in minutes).
#
# The first code cell, the same in every notebook, gets the project: where the notebook started
# inside it (a laptop, `make run`) it stays; elsewhere (Colab, opened from the badge above) it
# clones the repository into `PROJECT`. A Colab runtime forgets its files when it ends, so to keep
# notebook 0's checkpoints for notebooks 1–4 set `PROJECT` to a Drive folder such as
# `/content/drive/MyDrive/simple-rlhf-tiny` in each of them.
#
# > **0 · 数据、分词器与基础模型。** 五个笔记本依次跑完整个 RLHF 流程：0 准备基础模型，1 监督微调得到 actor，2 训练奖励模型（critic），3 用 PPO 做 RLHF，4 对比 SFT 与 RLHF。有 GPU 且能访问
# > Hugging Face 时使用 `facebook/opt-125m`；离线或只有 CPU 时，本笔记本在数据集上训练一个字节级
# > BPE 分词器并构建一个小型 OPT 模型，几分钟即可跑完全流程。你看到的输出来自
# > `make notebook-outputs`，用的是 `smollm2-135m` 预设：真正预训练过、已经会说话的 SmolLM2-135M-Instruct，在 2 核 CPU 上运行（`OUTPUTS_PRESET=tiny` 则几分钟就能得到 tiny 预设的输出）。第一个代码单元格在每个笔记本里都一样，负责取得项目：笔记本在项目目录里启动时（本机、`make run`）就留在那里；在别处启动时（例如从上面的徽章打开 Colab）把仓库克隆到 `PROJECT`。Colab 运行时结束后文件会丢失，要让笔记本 1–4 用上笔记本 0 的检查点，请在每个笔记本里把 `PROJECT` 设为 Drive 中的目录，例如 `/content/drive/MyDrive/simple-rlhf-tiny`。

# %% tags=["parameters"]
PRESET = "auto"     # "auto", "tiny", "ci", "opt-125m" or "smollm2-135m" (a real pretrained model)
DATA = "dataset"    # train.json + eval.json folder, a JSON/JSONL/parquet file or folder, or a Hub dataset id
MODEL = ""          # a hub id instead of the preset's base model, e.g. "facebook/opt-350m"
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

# %% [markdown]
# ## Which preset?
# `auto` picks `opt-125m` when a GPU and the model hub are both reachable, otherwise `tiny`.
# The choice is recorded in `model/base/metrics.json`; later notebooks with `PRESET = "auto"`
# follow it. Each config prints the fields this notebook talks about and those the preset
# changed (marked \*); `util.config_table(cfg)` prints every field.
#
# > **选哪个预设？** `auto` 在 GPU 和模型仓库都可用时选 `opt-125m`，否则选 `tiny`。选择记录在
# > `model/base/metrics.json` 中，之后的笔记本（`PRESET = "auto"`）沿用它。配置表只列出本笔记本讲到的字段和预设改过的字段（标 \*）；`util.config_table(cfg)` 列出全部字段。

# %%
preset, reason = util.resolve_preset(PRESET, decide_anew=True)
print(f"preset: {preset} ({reason})")
overrides = util.check_overrides(SET, preset)  # an unknown or ill-typed field stops here
base_cfg = util.make_config("base", preset, **{**({"model_name": MODEL, "use_hub": True, "gguf_package": ""} if MODEL else {}), **overrides.get("base", {})})
data_cfg = util.make_config("data", preset, **{"data_dir": DATA, **overrides.get("data", {})})
print(util.config_table(base_cfg, show=("model_name",) if base_cfg.use_hub else ()))
if not base_cfg.use_hub:
    print("use_hub is False: no Hub model is asked for; the base model is the offline fallback built below")
print(util.config_table(data_cfg, show=("split", "max_length")))

# %% [markdown]
# ## The data
# One JSON object a line: `prompt` ("Human: … Assistant:"), `response` (a demonstration, what SFT
# learns; the built-in demonstrator is deliberately imperfect), and a preference pair `chosen` /
# `rejected` (what the reward model learns). See `dataset/README.md`.
#
# > **数据。** 每行一个 JSON 对象：`prompt`（"Human: … Assistant:"），`response`（示范回答，SFT
# > 学它；内置的示范者故意不完美），以及偏好对 `chosen` / `rejected`（奖励模型学它）。详见
# > `dataset/README.md`。

# %%
train_rows, eval_rows = util.load_data(data_cfg)  # a folder, a file, or a Hub dataset (rlhf/sources.py)
print(f"{len(train_rows)} training rows, {len(eval_rows)} eval rows")
for row in train_rows[:3]:
    for field in ("prompt", "response", "chosen", "rejected"):
        print(f"  {field:>8}: {row[field]}")
    print()

# %% [markdown]
# ## The gold judge
# The built-in questions come from a program that knows every answer, so a second program, the
# **gold judge** (`rlhf/tasks.py`), can grade any answer in [0, 1]:
#
# $$\text{gold} = 0.4\cdot\text{content} + \max\big(0,\ 0.6 - 0.3\,[\text{rude}] - 0.3\,[\text{unfocused}] - 0.2\,[\text{cut off}] - 0.2\,[\text{no EOS}]\big)$$
#
# *content*: the right answer is there and no wrong one; *unfocused*: repeated, rambling or
# evasive. The judge labelled the preference pairs (chosen beats rejected by more than 0.15) and
# grades the policies in notebooks 1, 3 and 4, where `gold` is its score. It never trains
# anything: the models learn only from demonstrations (SFT) and the reward model (PPO), as they
# would from people. On your own data there is no gold judge, and these cells say so.
#
# > **金标准评判器（gold judge）。** 内置题目由程序生成，程序知道每道题的答案，所以另一个程序——
# > gold judge（`rlhf/tasks.py`）——可以给任何回答打 0 到 1 分：内容正确占 0.4，行为分 0.6 再扣掉粗鲁（0.3）、不切题（重复、啰嗦或回避，0.3）、话没说完（0.2）、没有输出 EOS（0.2）。它给偏好对打了标签（chosen 比 rejected 高 0.15 以上），并在笔记本 1、3、4 中给策略打分（即 `gold`）。它从不参与训练：模型只从示范（SFT）和奖励模型（PPO）学习，就像从人类反馈中学习一样。用你自己的数据时没有 gold judge，这几个单元格会说明。

# %%
import pandas as pd
from IPython.display import display
judge = util.gold_judge_for([r["prompt"] for r in train_rows[:500]])
if judge is None:
    print("not the built-in tasks: no gold judge on this data")
else:
    checks = []
    for row in train_rows[:4]:
        for kind in ("response", "chosen", "rejected"):
            parts = util.gold_breakdown(row["prompt"], row[kind])  # ended: the data always has EOS
            checks.append({"prompt": row["prompt"], "kind": kind, "answer": row[kind],
                           **{k: int(parts[k]) for k in ("content", "tone", "focus", "complete")},
                           "gold": parts["total"], "flaws": ", ".join(util.gold_flaws(row["prompt"], row[kind]))})
    display(pd.DataFrame(checks).set_index(["prompt", "kind"]))

# %% [markdown]
# The flaws the judge finds over all training rows: the demonstrations carry the flaws SFT will
# copy, the chosen answers none, and each rejected answer one or two. The judge's findings agree
# with the labels the demonstrator drew (`tests/test_tasks.py` checks every answer of the built-in
# train and eval data).
#
# > 整个训练集里评判器找到的缺陷：示范回答带着 SFT 会学去的缺陷，chosen 没有缺陷，rejected 每条有一两个。评判器的判断与示范者生成时抽到的缺陷标签完全一致（`tests/test_tasks.py` 检查内置训练集和评测集的每一条回答）。图：横轴是各类缺陷（rude 粗鲁、rambling 啰嗦、repeated 重复、cut off 话没说完、evasive 回避问题、wrong 事实错误），纵轴是带有该缺陷的回答所占的比例（share of answers）；三种颜色的柱分别是示范回答（response）、chosen 和 rejected。

# %%
import matplotlib.pyplot as plt
if judge is not None:
    kinds = ("response", "chosen", "rejected")
    found = {kind: [util.gold_flaws(r["prompt"], r[kind]) for r in train_rows] for kind in kinds}
    labels = list(util.FLAW_NAMES.values())[:-1]  # no EOS: the data always ends
    fig, ax = plt.subplots(figsize=(8, 2.8))
    for k, kind in enumerate(kinds):
        shares = [sum(name in flaws for flaws in found[kind]) / len(train_rows) for name in util.FLAW_NAMES][:-1]
        ax.bar([i + 0.27 * (k - 1) for i in range(len(labels))], shares, width=0.27,
               label="demonstrations (response)" if kind == "response" else kind)
    ax.set_xticks(range(len(labels)), labels); ax.set_ylabel("share of answers"); ax.legend()
    ax.set_title("flaws the gold judge finds in the training rows"); plt.tight_layout(); plt.show()
    for kind in kinds:
        mean_gold = sum(util.gold_score(r["prompt"], r[kind]) for r in train_rows) / len(train_rows)
        clean = sum(not flaws for flaws in found[kind]) / len(train_rows)
        print(f"{kind:>8}: mean gold {mean_gold:.3f}, {clean:.0%} without a flaw")

# %% [markdown]
# ## Base model and tokenizer
# Online, `get_base` downloads the configured hub model. Offline it decides within seconds (not
# the ~50 s of hub retries) and builds the fallback. Either way the pad token is distinct from
# EOS, so the models can learn when to stop, and the tokenizer carries a **chat template** that
# renders a conversation in exactly the training format, so `tokenizer.apply_chat_template`,
# `transformers.pipeline` with chat messages, and every notebook build the same token ids.
#
# > **基础模型与分词器。** 联网时 `get_base` 下载配置的模型；离线时几秒内做出判断（不用等约 50 秒的重试）并构建后备模型。两种情况下 pad 都与 EOS 不同，模型才能学会何时停止；分词器还带有一个
# > **chat template**，把对话渲染成与训练完全相同的格式，因此 `tokenizer.apply_chat_template`、用消息列表调用的 `transformers.pipeline` 和所有笔记本得到的 token id 完全一样。

# %%
texts = [r["prompt"] + " " + r[k] for r in train_rows for k in ("response", "chosen", "rejected") if r[k]]
model, tokenizer, source = util.get_base(base_cfg, texts, fallback=PRESET == "auto" and not MODEL)
print("loaded:", source)
print(f"vocabulary {len(tokenizer)} | pad {tokenizer.pad_token!r}={tokenizer.pad_token_id} "
      f"bos {tokenizer.bos_token!r}={tokenizer.bos_token_id} eos {tokenizer.eos_token!r}={tokenizer.eos_token_id}")
messages = [{"role": "user", "content": "What colour is a banana?"}, {"role": "assistant", "content": "A banana is yellow."}]
print("chat template, prompt:  ", repr(tokenizer.apply_chat_template(messages[:1], add_generation_prompt=True, tokenize=False)))
print("chat template, SFT text:", repr(tokenizer.apply_chat_template(messages, tokenize=False)))
ids = tokenizer.apply_chat_template(messages, tokenize=True, return_dict=True)["input_ids"]
print(f"{len(ids)} tokens:", [tokenizer.decode([i]) for i in ids])
print(f"model: {type(model).__name__}, {util.count_parameters(model) / 1e6:.2f}M parameters")

# %%
metrics = {"preset": preset, "preset_reason": reason, "source": source,
           "parameters": util.count_parameters(model), "vocab_size": len(tokenizer)}
util.save_checkpoint(util.stage_dir("base"), model, tokenizer, configs=[base_cfg, data_cfg], metrics=metrics)
util.save_checkpoint("tokenizer", tokenizer=tokenizer)
print("saved model/base and tokenizer/:", metrics)
