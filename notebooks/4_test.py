# %% [markdown]
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/your-name/simple-rlhf-tiny/blob/main/4_test.ipynb)

# %% [markdown]
# # 4 · What did RLHF change?
#
# The SFT actor and the RLHF policy answer the same held-out prompts, by sampling (what PPO
# trained) and greedily. Three judges compare them: the **reward model** (what PPO optimised),
# the **gold judge** (notebook 0: a program that knows the right answers, never used in
# training; built-in data only), and the **KL** from the SFT model (how far RLHF moved). If the
# reward model's score rose but the gold score did not, the policy learned to please the reward
# model rather than to answer better.
#
# > **4 · RLHF 改变了什么？** SFT actor 和 RLHF 策略回答同一批留出的提示词，分别用采样（PPO 训练的就是采样分布）和贪心解码。三个评判标准：**奖励模型**分数（PPO 优化的目标）、**gold judge**（笔记本 0：知道正确答案的程序，从不参与训练，仅限内置数据）、相对 SFT 模型的 **KL 散度**（RLHF 移动了多远）。如果奖励模型分数涨了而 gold 分数没涨，说明策略学会的是讨好奖励模型，而不是答得更好。

# %% tags=["parameters"]
PRESET = "auto"
DATA = "dataset"
SET = ""            # any config field, as space-separated stage.field assignments (README, Settings)
PROJECT = "simple-rlhf-tiny"  # started outside the project (Colab): its folder, cloned if missing; /content/drive/MyDrive/NAME keeps it in Drive
REPO_URL = "https://github.com/your-name/simple-rlhf-tiny.git"  # cloned into PROJECT when it is not there
HUB_REPO = ""        # a Hub repo id to push model/rlhf to at the end, e.g. your-name/simple-rlhf-tiny; empty: no push

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
preset, data_cfg, cfg = util.start("eval", PRESET, DATA, show=("samples_per_prompt", "temperature"), overrides=SET)

# %%
import pandas as pd
from IPython.display import display
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification
sft_dir = util.require_checkpoint(util.stage_dir("actor"), "actor")
rlhf_dir = util.require_checkpoint(util.stage_dir("rlhf"), "rlhf")
critic_dir = util.require_checkpoint(util.stage_dir("critic"), "critic")
tokenizer = util.load_tokenizer(rlhf_dir)
policies = {"sft": AutoModelForCausalLM.from_pretrained(sft_dir).eval(),
            "rlhf": AutoModelForCausalLM.from_pretrained(rlhf_dir).eval()}
reward_model = AutoModelForSequenceClassification.from_pretrained(critic_dir).eval()
_, eval_rows = util.load_data(data_cfg)
prompts = list(dict.fromkeys(r["prompt"] for r in eval_rows))
prompts = prompts[:cfg.max_prompts] if cfg.max_prompts else prompts
judge = util.gold_judge_for(prompts)
print(f"{len(prompts)} eval prompts, {cfg.samples_per_prompt} samples each + 1 greedy; gold judge: {bool(judge)}")

# %%
records = util.evaluate_policies(policies, policies["sft"], reward_model, tokenizer, prompts, cfg,
                                 data_cfg.max_prompt_length, judge=judge)
figures, table = util.summarize(records, has_gold=judge is not None)
display(pd.DataFrame(table[1:], columns=["", "SFT", "RLHF"]).set_index(""))

# %% [markdown]
# ## Sampled answers, side by side
# PPO trains the distribution the policy samples from, so that is where the change shows. Below,
# the two policies' sampled answers to the same prompts, drawn at random from three kinds: pairs
# where RLHF's gold score is higher, lower, and the same, with how many pairs of each kind there
# are. Each answer carries its gold score, the reward model's score and the flaws the gold judge
# found.
#
# > **采样回答并排对比。** PPO 训练的是策略采样的分布，所以变化体现在采样回答上。下面是两个策略对同一提示词的采样回答，从三类中随机抽取：RLHF 的 gold 分数更高、更低、相同，并给出每类共有多少对。每条回答都标出 gold 分数、奖励模型分数和 gold judge 找到的缺陷。

# %%
def describe(record):
    flaws = ", ".join(util.gold_flaws(record["prompt"], record["response"], record["ended"])) or "clean"
    return f"gold {record['gold']:.2f} | rm {record['rm_score']:6.2f} | {flaws:<18} | {record['response']!r}"

if judge is not None:
    examples, counts = util.pick_examples(records, per_kind=3, seed=cfg.seed)
    total = sum(counts.values())
    for kind, label in (("better", "RLHF better"), ("worse", "RLHF worse"), ("same", "the same gold score")):
        print(f"== {label}: {counts[kind]} of {total} pairs ({counts[kind] / total:.0%})")
        for sft, rlhf in examples[kind]:
            print(f"{sft['prompt']}\n   SFT  {describe(sft)}\n   RLHF {describe(rlhf)}")
        print()

# %% [markdown]
# ## Flaw by flaw
# The share of sampled answers with each flaw, before (SFT) and after (RLHF). SFT copied the
# demonstrator's habits; the reward model learned from the preference pairs that people (here,
# the judge that labelled them) dislike them, and PPO removed what the reward model could see.
# The behavioural flaws (rude, rambling, repeated, cut off) mostly go. Wrong facts do not: the
# reward model barely tells a right fact from a wrong one (in the examples above a wrong answer can
# score as high as a right one), so PPO had nothing to push against there, and a policy that stops
# rambling and evading answers more questions, some of them wrongly. RLHF can only be as good as
# its reward model.
#
# > **逐项缺陷。** 采样回答中带有各类缺陷的比例，RLHF 之前（SFT）和之后。SFT 学会了示范者的坏习惯；奖励模型从偏好对中学到人（这里是给偏好对打标签的评判器）不喜欢这些习惯，PPO 去掉了奖励模型能识别的那些。行为上的缺陷（粗鲁、啰嗦、重复、话没说完）大多消失了，事实错误却没有减少：奖励模型几乎分不清事实的对错（上面的例子里，错误的回答可以和正确的回答得分一样高），PPO 在这方面无从学起；而一个不再啰嗦、不再回避的策略会回答更多问题，其中一些答错了。RLHF 的上限就是它的奖励模型。

# %%
import matplotlib.pyplot as plt
if judge is not None:
    flaws = pd.DataFrame(util.flaw_table(records), columns=["flaw", "SFT", "RLHF"]).set_index("flaw")
    display((100 * flaws).round(1).rename(columns=lambda name: f"{name} (% of answers)"))
    flaws.iloc[:-1].plot.barh(figsize=(6, 2.8), title="share of sampled answers with each flaw")
    plt.gca().invert_yaxis(); plt.tight_layout(); plt.show()

# %% [markdown]
# ## Greedy answers, a second view
# Greedy decoding takes the most likely token every time. RLHF changes that far less than it
# changes the sampled answers: the most likely answer was usually already right, and PPO mostly
# reshapes the rest of the distribution (compare the greedy rows of the table above).
#
# > **贪心解码：另一个视角。** 贪心解码每一步都取概率最大的 token。RLHF 对它的改变远小于对采样回答的改变：概率最大的回答通常本来就是对的，PPO 主要重塑的是分布的其余部分（对比上面表格中 greedy 的几行）。

# %%
greedy = {(r["prompt"], r["policy"]): r for r in records if r["mode"] == "greedy"}
changed = [p for p in prompts if greedy[(p, "sft")]["response"] != greedy[(p, "rlhf")]["response"]]
print(f"greedy answers that differ: {len(changed)} of {len(prompts)} prompts; the first of them:")
for prompt in changed[:6]:
    print(prompt)
    for name in ("sft", "rlhf"):
        r = greedy[(prompt, name)]
        gold = f"gold {r['gold']:.2f} " if judge else ""
        print(f"  {name:>4}: {gold}rm {r['rm_score']:6.2f} | {r['response']!r}")

# %% [markdown]
# ## Did the policy learn the task, or only the reward model?
# Along PPO training, the reward model's score and the gold score of the sampled answers. When
# both rise together, the reward model was a good proxy; a score rising alone is reward hacking.
#
# > **策略学会的是任务，还是只学会了讨好奖励模型？** PPO 训练过程中采样回答的奖励模型分数和 gold 分数。两者一起上升，说明奖励模型是个好的代理指标；只有奖励分数上升就是 reward hacking（奖励作弊）。

# %%
history = util.read_json(f"{rlhf_dir}/metrics.json")["history"]
its = [h["iteration"] for h in history]
fig, ax = plt.subplots(figsize=(6, 2.8))
ax.plot(its, [h["score"] for h in history], color="tab:blue"); ax.set_ylabel("reward-model score", color="tab:blue")
if "gold" in history[0]:
    ax2 = ax.twinx(); ax2.plot(its, [h["gold"] for h in history], color="tab:orange")
    ax2.set_ylabel("gold score", color="tab:orange")
ax.set_xlabel("PPO iteration"); plt.tight_layout(); plt.show()

# %% [markdown]
# ## Try it: one prompt format everywhere
# `util.chat` asks a question through the tokenizer's chat template, which renders exactly the
# training format. The RLHF model is a plain Hugging Face checkpoint, so `transformers.pipeline`
# works on it too, and given chat messages it uses the same template: the same greedy answer
# (`tests/test_pipeline.py` checks this on every eval prompt). Change the questions and run
# the cell again.
#
# > **试一试：处处同一种提示词格式。** `util.chat` 通过分词器的 chat template 提问，它渲染出的正是训练格式。RLHF 模型是普通的 Hugging Face 检查点，`transformers.pipeline` 也能直接用；传入消息列表时它用同一个模板，贪心解码给出相同的回答（`tests/test_pipeline.py` 在全部评测提示词上检查这一点）。改一改问题，再运行这个单元格。

# %%
from transformers import pipeline
generator = pipeline("text-generation", model=str(rlhf_dir))
for question in ["What colour is a banana?", "What is 2 plus 3?", "What is the capital of Peru?"]:
    messages = [{"role": "user", "content": question}]
    print(question, "| rendered as", repr(tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)))
    for name, model in policies.items():
        print(f"  util.chat, {name:>4}: {util.chat(model, tokenizer, question)!r}")
    reply = generator(messages, max_new_tokens=48, do_sample=False)[0]["generated_text"][-1]["content"]
    print(f"  pipeline,  rlhf: {reply.strip()!r}")

# %%
summary = {"preset": preset, "prompts": len(prompts), "samples_per_prompt": cfg.samples_per_prompt,
           "figures": figures, "table": table, "flaws": util.flaw_table(records) if judge else []}
util.save_checkpoint(util.stage_dir("eval"), configs=[cfg, data_cfg], metrics=summary,
                     files={"summary.json": summary, "records.json": records})
print("saved model/eval/summary.json")

# %% [markdown]
# ## Share the model (optional)
# Every checkpoint folder carries a model card, `README.md`: the base model, the data, the stage
# config, the metrics and how to load it with `pipeline`. With `HUB_REPO` set in the parameters
# cell and a Hub login (`hf auth login`), this uploads `model/rlhf` there; offline or without a
# repo id it says why it skipped.
#
# > **分享模型（可选）。** 每个检查点目录都带有模型卡 `README.md`（基础模型、数据、配置、指标、用 `pipeline` 加载的方法）。在参数单元格设置 `HUB_REPO` 并登录（`hf auth login`）后，这里把
# > `model/rlhf` 上传到 Hub；离线或未设置时会说明跳过的原因。

# %%
print((rlhf_dir / "README.md").read_text()[:600])
util.push_to_hub(util.stage_dir("rlhf"), HUB_REPO)
