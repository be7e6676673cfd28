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
display(pd.DataFrame(table[1:], columns=["", "SFT", "RLHF"]).set_index("").rename(index=util.verdict.labelled))

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
    better, worse, same = counts["better"], counts["worse"], counts["same"]
    print(f"win_rate_gold counts a tie as half a win: ({better} better + {same} same / 2) / {total} pairs = "
          f"{(better + same / 2) / total:.3f}, the table's {figures['sampled/win_rate_gold']:.3f}. "
          f"Leaving the ties out, RLHF is better in {better} of the {better + worse} pairs that differ "
          f"({better / max(better + worse, 1):.0%}).")

# %% [markdown]
# ## How sure is the difference? One seed, a bootstrap interval
# The figures above come from one training run (one seed) and a few hundred prompts. Had other
# prompts or other samples been drawn, the gold difference would come out somewhat different. A
# **percentile bootstrap** measures by how much: take each prompt's gold difference (RLHF minus
# SFT, each averaged over its samples: paired by prompt, so a prompt's difficulty cancels), draw
# as many prompts again with replacement, 10,000 times (a fixed seed), and read the middle 95% of
# the means (`util.bootstrap_interval`). It does not cover a retrain with another seed: that
# would take several runs.
#
# > **差异有多可靠？只有一个随机种子：用 bootstrap 区间。** 上面的数字来自一次训练（一个随机种子）和几百个提示词。如果抽到的是别的提示词或别的样本，gold 的差异会有所不同。**百分位 bootstrap** 估计这种波动有多大：对每个提示词取 gold 差（RLHF 减 SFT，各自先在其样本上取平均：按提示词配对，提示词本身的难度就抵消了），有放回地重新抽同样多的提示词，重复 10,000 次（固定种子），取这些均值中间的 95%（`util.bootstrap_interval`）。它不包括换一个种子重新训练带来的波动：那需要多次训练。

# %%
if judge is not None:
    differences = util.per_prompt_differences(records, "gold")
    mean_gold, low, high = util.bootstrap_interval(differences, seed=cfg.seed)
    print(util.verdict.difference_line(util.verdict.Text("sampled gold, RLHF minus SFT", "采样回答的 gold 分数，RLHF 减 SFT"),
                                       mean_gold, low, high, len(differences)))
    greedy_differences = util.per_prompt_differences(records, "gold", mode="greedy")
    print(util.verdict.difference_line(util.verdict.Text("greedy gold, RLHF minus SFT", "贪心回答的 gold 分数，RLHF 减 SFT"), *util.bootstrap_interval(greedy_differences, seed=cfg.seed),
                                       len(greedy_differences)))

# %% [markdown]
# ## Flaw by flaw
# The share of sampled answers with each flaw, before (SFT) and after (RLHF). SFT copied the
# demonstrator's habits; the reward model learned from the preference pairs that people (here,
# the judge that labelled them) dislike them, and PPO removed what the reward model could see.
# What to expect: the behavioural flaws (rude, rambling, repeated, cut off) are easy for a reward
# model to see, so PPO should remove most of them. A wrong fact is harder to see: where the reward
# model scores a wrong answer above a right one, PPO has nothing to push against, and a policy that
# stops rambling and evading answers more questions, some of them wrongly. RLHF can only be as good
# as its reward model. The cell after the chart says what happened on this run.
#
# > **逐项缺陷。** 采样回答中带有各类缺陷的比例，RLHF 之前（SFT）和之后。SFT 学会了示范者的坏习惯；奖励模型从偏好对中学到人（这里是给偏好对打标签的评判器）不喜欢这些习惯，PPO 去掉了奖励模型能识别的那些。可以预期：行为上的缺陷（粗鲁、啰嗦、重复、话没说完）奖励模型容易识别，PPO 应该去掉其中大部分；事实错误难以识别：如果奖励模型给错误回答的分数比正确回答还高，PPO 在这方面就无从学起，而一个不再啰嗦、不再回避的策略会回答更多问题，其中一些答错了。RLHF 的上限就是它的奖励模型。图表之后的单元格说明这次训练实际发生了什么。图：纵轴列出各类缺陷，横轴是带有该缺陷的采样回答所占的比例，SFT 和 RLHF 各一根柱。

# %%
import matplotlib.pyplot as plt
if judge is not None:
    flaws = pd.DataFrame(util.flaw_table(records), columns=["flaw", "SFT", "RLHF"]).set_index("flaw")
    display((100 * flaws).round(1).rename(index=util.verdict.labelled, columns=lambda name: f"{name} (% of answers, 回答占比 %)"))
    flaws.iloc[:-1].plot.barh(figsize=(6, 2.8), title="share of sampled answers with each flaw")
    plt.gca().invert_yaxis(); plt.tight_layout(); plt.show()

# %% [markdown]
# **What this run shows.** Each flaw's share before and after, called a change only beyond twice
# the binomial standard error of the difference (`util.verdict.share_trend`); then the answers that
# show why wrong facts survive: for each prompt with both a wrong answer and a clean one among all
# six answers to it (two policies, two samples and a greedy answer each), whether the reward model
# scores the wrong one higher (`util.wrong_above_clean`).
#
# > **这次训练显示了什么。** 每种缺陷前后的比例，只有变化超过两者之差的二项分布标准误差的两倍才算变化（`util.verdict.share_trend`）；然后是说明事实错误为什么留下来的回答：对每个提示词，在它的六个回答（两个策略，各两个采样和一个贪心回答）中如果既有错误回答又有无缺陷的回答，看奖励模型是否给错误的那个打了更高的分（`util.wrong_above_clean`）。

# %%
if judge is not None:
    n = {policy: sum(r["policy"] == policy and r["mode"] == "sampled" for r in records) for policy in ("sft", "rlhf")}
    for flaw, before, after in util.flaw_table(records)[:-1]:
        trend = util.verdict.word(util.verdict.share_trend(before, after, n['sft'], n['rlhf']))
        print(f"{util.verdict.labelled(flaw):>16}: {before:6.1%} -> {after:6.1%}  {trend.en} ({trend.zh})")
    found, both = util.wrong_above_clean(records)
    print(f"\nthe reward model scores a wrong answer above a clean one on {len(found)} of the {both} prompts "
          "that have both" + ("; the widest gaps:" if found else "."))
    for wrong, clean in found[:5]:
        print(f"  rm {wrong['rm_score']:5.2f} {wrong['response']!r}\n     above rm {clean['rm_score']:5.2f} {clean['response']!r}")

# %% [markdown]
# ## Did RLHF close the headroom?
# Notebook 1 promised that SFT's copied flaws are headroom for RLHF. The reference level is the
# demonstrator's: the gold score of the demonstrations SFT learned from, here those of the eval
# prompts. Below, each policy's gold against it (paired by prompt, with a bootstrap interval), and
# the share of wrong answers in the demonstrations, in SFT's greedy answers (its most likely ones)
# and in its sampled answers, which says why SFT samples worse than its data.
#
# > **RLHF 把差距补上了吗？** 笔记本 1 说 SFT 学去的缺陷就是 RLHF 的提升空间。参照水平是示范者的：SFT 学习的示范回答的 gold 分数，这里取评测提示词的示范回答。下面把每个策略的 gold 与它比较（按提示词配对，附 bootstrap 区间），并给出错误回答的比例：在示范回答中、在 SFT 的贪心回答（它最可能的回答）中、在它的采样回答中，这说明了 SFT 采样为什么比它的数据差。

# %%
if judge is not None:
    asked = set(prompts)
    demonstrations = [{"prompt": r["prompt"], "policy": "demonstrator", "mode": "sampled", "response": r["response"],
                       "gold": util.gold_score(r["prompt"], r["response"])} for r in eval_rows if r["prompt"] in asked]
    demo_gold = sum(d["gold"] for d in demonstrations) / len(demonstrations)
    print(f"mean gold: demonstrations {demo_gold:.3f} | SFT sampled {figures['sampled/gold/sft']:.3f}, "
          f"greedy {figures['greedy/gold/sft']:.3f} | RLHF sampled {figures['sampled/gold/rlhf']:.3f}, "
          f"greedy {figures['greedy/gold/rlhf']:.3f}")
    readings = {}
    for name in ("sft", "rlhf"):
        gaps = util.per_prompt_differences(records + demonstrations, "gold", a=name, b="demonstrator")
        mean_gap, low, high = util.bootstrap_interval(gaps, seed=cfg.seed)
        readings[name] = util.verdict.interval_reading(low, high)
        label = util.verdict.Text(f"{name.upper()} sampled minus the demonstrations", f"{name.upper()} 采样回答减示范回答")
        print(util.verdict.difference_line(label, mean_gap, low, high, len(gaps)))
    print({"higher": util.verdict.Text("RLHF's sampled answers went past the demonstrator's level.",
                                       "RLHF 的采样回答超过了示范者的水平。"),
           "lower": util.verdict.Text("RLHF's sampled answers are still below the demonstrator's level: the headroom is not closed.",
                                      "RLHF 的采样回答仍低于示范者的水平：提升空间还没有补上。"),
           "no clear difference": util.verdict.Text("RLHF's sampled answers are back at the demonstrator's level.",
                                                    "RLHF 的采样回答回到了示范者的水平。")}[readings["rlhf"]])
    wrong_share = lambda rows: sum("wrong" in util.gold_flaws(r["prompt"], r["response"], r.get("ended", True))
                                   for r in rows) / len(rows)
    shares = {"demonstrations": wrong_share(demonstrations),
              **{f"SFT {mode}": wrong_share([r for r in records if r["policy"] == "sft" and r["mode"] == mode])
                 for mode in ("greedy", "sampled")}}
    print("wrong answers: " + ", ".join(f"{k} {v:.1%}" for k, v in shares.items()))
    if shares["SFT sampled"] > max(shares["SFT greedy"], shares["demonstrations"]):
        print(f"SFT did not copy its wrong answers from the data ({shares['demonstrations']:.1%} wrong there), and its "
              f"most likely answer is wrong on {shares['SFT greedy']:.1%} of the prompts. Sampling at temperature "
              f"{cfg.temperature:g} also draws the less likely tokens, and a small model still gives them real "
              f"probability, often a word that belongs to another question: {shares['SFT sampled']:.1%} of its samples "
              "are wrong. That, with the copied flaws, is why SFT samples below its data.")
    else:
        print("Here sampling does not add wrong answers: SFT's samples are no more often wrong than its greedy "
              "answers or its data, so the gap to the data is the copied flaws above.")

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
# > **策略学会的是任务，还是只学会了讨好奖励模型？** PPO 训练过程中采样回答的奖励模型分数和 gold 分数。两者一起上升，说明奖励模型是个好的代理指标；只有奖励分数上升就是 reward hacking（奖励作弊）。图：横轴是 PPO 迭代次数，左纵轴（蓝线）是奖励模型分数，右纵轴（橙线）是 gold 分数。

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
# ### Verdict
# The rule above, applied to this plot by `util.verdict.training_verdict` (as at the end of
# notebook 3): the first k iterations against the last k, each change against its noise, and the
# samples logged during training that the reward model rates above an average SFT answer although
# the gold judge finds a flaw.
#
# > ### 结论用 `util.verdict.training_verdict` 把上面的规则用在这张图上（与笔记本 3 结尾相同）：前 k 次迭代对比后 k 次，每个变化与其噪声比较，并列出训练中记录的、奖励模型打分高于一条普通 SFT 回答而 gold judge 找到缺陷的样例。

# %%
print(util.verdict.training_verdict(history, util.read_json(f"{rlhf_dir}/metrics.json")["samples"]))

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
card = (rlhf_dir / "README.md").read_text()
print(card.partition("## Stage config")[0])  # the card's head; its sections:
print("sections:", ", ".join(line[3:] for line in card.splitlines() if line.startswith("## ")),
      f"({len(card.splitlines())} lines in {rlhf_dir}/README.md)")
util.push_to_hub(util.stage_dir("rlhf"), HUB_REPO)
