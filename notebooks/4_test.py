# %% [markdown]
# # 4 · What did RLHF change?
#
# The SFT actor and the RLHF policy answer the same held-out prompts, greedily and by sampling.
# Three judges compare them: the **reward model** (what PPO optimised), the **gold judge** (a
# program that knows the right answers, never used in training; built-in data only), and the
# **KL** from the SFT model (how far RLHF moved). If the reward model's score rose but the gold
# score did not, the policy learned to please the reward model rather than to answer better.

# %% parameters
PRESET = "auto"
DATA = "dataset"
PROJECT_SEARCH = ""  # folders to look below for the project, ":"-separated; "" = cwd, /content, MyDrive
REPO_URL = ""        # with no copy found: git clone this URL (on Colab into /content/simple-rlhf-tiny)

# %%
preset, data_cfg, cfg = util.start("eval", PRESET, DATA)  # Colab set-up, configs printed, seeds

# %%
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification
sft_dir = util.require_checkpoint(util.stage_dir("actor"), "actor")
rlhf_dir = util.require_checkpoint(util.stage_dir("rlhf"), "rlhf")
critic_dir = util.require_checkpoint(util.stage_dir("critic"), "critic")
tokenizer = util.load_tokenizer(rlhf_dir)
policies = {"sft": AutoModelForCausalLM.from_pretrained(sft_dir).eval(),
            "rlhf": AutoModelForCausalLM.from_pretrained(rlhf_dir).eval()}
reward_model = AutoModelForSequenceClassification.from_pretrained(critic_dir).eval()
_, eval_rows = util.load_dataset_dir(DATA)
prompts = list(dict.fromkeys(r["prompt"] for r in eval_rows))
prompts = prompts[:cfg.max_prompts] if cfg.max_prompts else prompts
judge = util.gold_judge_for(prompts)
print(f"{len(prompts)} eval prompts, {cfg.samples_per_prompt} samples each + 1 greedy; gold judge: {bool(judge)}")

# %%
records = util.evaluate_policies(policies, policies["sft"], reward_model, tokenizer, prompts, cfg,
                                 data_cfg.max_prompt_length, judge=judge)
figures, table = util.summarize(records, has_gold=judge is not None)
width = max(len(r[0]) for r in table)
for row in table:
    print(f"{row[0]:<{width}}  {row[1]:>8}  {row[2]:>8}")

# %% [markdown]
# ## Side by side

# %%
greedy = {(r["prompt"], r["policy"]): r for r in records if r["mode"] == "greedy"}
for prompt in prompts[:8]:
    print(prompt)
    for name in ("sft", "rlhf"):
        r = greedy[(prompt, name)]
        gold = f"gold {r['gold']:.2f} " if judge else ""
        print(f"  {name:>4}: {gold}rm {r['rm_score']:6.2f} | {r['response']!r}")

# %% [markdown]
# ## Did the policy learn the task, or only the reward model?
# Along PPO training, the reward model's score and the gold score of the sampled answers. When
# both rise together, the reward model was a good proxy; a score rising alone is reward hacking.

# %%
import matplotlib.pyplot as plt
history = util.read_json(f"{rlhf_dir}/metrics.json")["history"]
its = [h["iteration"] for h in history]
fig, ax = plt.subplots(figsize=(6, 3))
ax.plot(its, [h["score"] for h in history], color="tab:blue"); ax.set_ylabel("reward-model score", color="tab:blue")
if "gold" in history[0]:
    ax2 = ax.twinx(); ax2.plot(its, [h["gold"] for h in history], color="tab:orange")
    ax2.set_ylabel("gold score", color="tab:orange")
ax.set_xlabel("PPO iteration"); plt.tight_layout(); plt.show()

# %% [markdown]
# ## Try it
# `chat` asks one question in the dataset's format. The RLHF model also loads as a plain
# Hugging Face model, so `transformers.pipeline` works on it.

# %%
for question in ["What colour is a banana?", "What is 2 plus 3?"]:
    for name, model in policies.items():
        print(f"{name:>4} | {question} -> {util.chat(model, tokenizer, question)!r}")
from transformers import pipeline
generator = pipeline("text-generation", model=str(rlhf_dir), tokenizer=str(rlhf_dir))
print(generator("Human: What colour is a banana? Assistant:", max_new_tokens=16, do_sample=False)[0]["generated_text"])

# %%
summary = {"preset": preset, "prompts": len(prompts), "samples_per_prompt": cfg.samples_per_prompt,
           "figures": figures, "table": table}
util.save_checkpoint(util.stage_dir("eval"), configs=[cfg, data_cfg], metrics=summary,
                     files={"summary.json": summary, "records.json": records})
print("saved model/eval/summary.json")
