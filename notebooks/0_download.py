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
# dataset and a small OPT model from a config, so the whole pipeline runs in minutes.

# %% parameters
PRESET = "auto"     # "auto", "tiny", "ci" or "opt-125m"
DATA = "dataset"    # a folder holding train.json and eval.json
MODEL = ""          # a hub id instead of the preset's base model, e.g. "facebook/opt-350m"
PROJECT_SEARCH = ""  # folders to look below for the project, ":"-separated; "" = cwd, /content, MyDrive
REPO_URL = ""        # with no copy found: git clone this URL (on Colab into /content/simple-rlhf-tiny)

# %% [markdown]
# ## Which preset?
# `auto` picks `opt-125m` when a GPU and the model hub are both reachable, otherwise `tiny`.
# The choice is recorded in `model/base/metrics.json`; later notebooks with `PRESET = "auto"`
# follow it.

# %%
preset, reason = util.resolve_preset(PRESET, decide_anew=True)
print(f"preset: {preset} ({reason})")
base_cfg = util.make_config("base", preset, **({"model_name": MODEL, "use_hub": True} if MODEL else {}))
data_cfg = util.make_config("data", preset, data_dir=DATA)
print(util.config_table(base_cfg)); print(); print(util.config_table(data_cfg))

# %% [markdown]
# ## The data
# One JSON object a line: `prompt` ("Human: … Assistant:"), `response` (a demonstration, what SFT
# learns; the built-in demonstrator is deliberately imperfect), and a preference pair `chosen` /
# `rejected` (what the reward model learns). See `dataset/README.md`.

# %%
train_rows, eval_rows = util.load_dataset_dir(DATA)
print(f"{len(train_rows)} training rows, {len(eval_rows)} eval rows")
for row in train_rows[:3]:
    for key in ("prompt", "response", "chosen", "rejected"):
        print(f"  {key:>8}: {row[key]}")
    print()

# %%
import matplotlib.pyplot as plt
fig, axes = plt.subplots(1, 2, figsize=(10, 3))
for ax, key in zip(axes, ("prompt", "response")):
    ax.hist([len(r[key].split()) for r in train_rows], bins=30)
    ax.set_title(f"{key} length (words)")
plt.tight_layout(); plt.show()

# %% [markdown]
# ## Base model and tokenizer
# Online, `get_base` downloads the configured hub model. Offline it decides within seconds (not
# the ~50 s of hub retries) and builds the fallback. Either way the pad token is distinct from
# EOS, so the models can learn when to stop.

# %%
texts = [r["prompt"] + " " + r[k] for r in train_rows for k in ("response", "chosen", "rejected") if r[k]]
model, tokenizer, source = util.get_base(base_cfg, texts)
print("source:", source)
print(f"vocabulary {len(tokenizer)} | pad {tokenizer.pad_token!r}={tokenizer.pad_token_id} "
      f"bos {tokenizer.bos_token!r}={tokenizer.bos_token_id} eos {tokenizer.eos_token!r}={tokenizer.eos_token_id}")
example = train_rows[0]["prompt"] + " " + train_rows[0]["chosen"]
ids = tokenizer(example, add_special_tokens=False).input_ids
print(f"{len(ids)} tokens:", [tokenizer.decode([i]) for i in ids])
print(f"model: {type(model).__name__}, {util.count_parameters(model) / 1e6:.2f}M parameters")

# %%
metrics = {"preset": preset, "preset_reason": reason, "source": source,
           "parameters": util.count_parameters(model), "vocab_size": len(tokenizer)}
util.save_checkpoint(util.stage_dir("base"), model, tokenizer, configs=[base_cfg, data_cfg], metrics=metrics)
util.save_checkpoint("tokenizer", tokenizer=tokenizer)
print("saved model/base and tokenizer/:", metrics)
