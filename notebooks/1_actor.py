# %% [markdown]
# # 1 · The actor: supervised fine-tuning (SFT)
#
# The actor is the base model taught to answer like the demonstrations: a causal-LM loss on the
# response tokens only. The prompt is context, not something to imitate, so its labels are
# masked (−100), and so are the pads. The built-in demonstrator is imperfect on purpose (rude,
# rambling, repeated or cut-off answers), so SFT learns its flaws too: that is the headroom RLHF
# closes in notebook 3.
#
# $$\mathcal{L}_{\text{SFT}} = -\frac{1}{|R|}\sum_{t \in R} \log \pi_\theta(y_t \mid x, y_{<t})$$

# %% parameters
PRESET = "auto"     # "auto" follows what 0_download chose
DATA = "dataset"
PROJECT_SEARCH = ""  # folders to look below for the project, ":"-separated; "" = cwd, /content, MyDrive
REPO_URL = ""        # with no copy found: git clone this URL (on Colab into /content/simple-rlhf-tiny)

# %%
preset, data_cfg, cfg = util.start("actor", PRESET, DATA)  # Colab set-up, configs printed, seeds

# %% [markdown]
# ## Data: the actor's share of the training rows
# The training rows are split once, deterministically, between the three stages (2:4:4 in the
# original), so the reward model and PPO see prompts the actor never trained on.

# %%
base_dir = util.require_checkpoint(util.stage_dir("base"), "base")
tokenizer = util.load_tokenizer(base_dir)
train_rows, eval_rows = util.load_dataset_dir(DATA)
parts = util.split_rows(train_rows, data_cfg.split, data_cfg.seed)
if data_cfg.max_eval_rows:
    eval_rows = eval_rows[:data_cfg.max_eval_rows]
train_examples, summary = util.encode_sft(parts["actor"], tokenizer, data_cfg.max_length, data_cfg.max_prompt_length)
eval_examples, _ = util.encode_sft(eval_rows, tokenizer, data_cfg.max_length, data_cfg.max_prompt_length)
print({k: len(v) for k, v in parts.items()}, "rows per stage")
print(util.format_summary(summary))

# %% [markdown]
# What the loss sees: one example, token by token. Positions labelled `-100` (the prompt) add
# nothing to the loss; the response and its EOS are learned.

# %%
from functools import partial
collate = partial(util.collate_sft, pad_id=tokenizer.pad_token_id)
batch = collate(train_examples[:2])
for token, label in list(zip(batch["input_ids"][0].tolist(), batch["labels"][0].tolist()))[:40]:
    print(f"{tokenizer.decode([token])!r:>14} {label}")
import inspect; print(inspect.getsource(util.sft.sft_loss))

# %% [markdown]
# ## Before training: samples from the base model

# %%
from transformers import AutoModelForCausalLM
model = AutoModelForCausalLM.from_pretrained(base_dir)
util.check_tokenizer_matches(model, tokenizer, str(base_dir))
prompts = [r["prompt"] for r in eval_rows[:cfg.sample_prompts]]

def show_samples(model, title):
    texts, ended, _ = util.complete(model, tokenizer, prompts, data_cfg.max_prompt_length, cfg.max_new_tokens)
    print(title)
    for p, t, e in zip(prompts, texts, ended):
        print(f"  {p}\n    -> {t!r} (EOS: {e}, gold {util.gold_score(p, t, e):.2f})")

show_samples(model, "base model (greedy):")

# %% [markdown]
# ## Training
# `util.fit` is the loop shared with the reward model: AdamW, linear warm-up and decay, gradient
# clipping, explicit gradient accumulation (halving the micro-batch on out-of-memory), bf16
# autocast where the GPU or CPU has bf16 (`mixed_precision="auto"`), eval loss and perplexity
# after each epoch, periodic checkpoints. The loss it trains with, `sft_loss_fn`, is `sft_loss`
# above with one saving: the LM head runs only on the positions that have a label.

# %%
log = util.RunLog(util.stage_dir("logs"), "actor")
evaluate = lambda m: util.sft.evaluate_sft(m, eval_examples, collate)
model, history = util.fit(model, train_examples, collate, util.sft.sft_loss_fn, cfg,
                          log=log, evaluate=evaluate, resume_dir=util.resume_dir("actor"), tokenizer=tokenizer)
print(f"trained {len(history['steps'])} steps in {history['train_seconds']:.0f} s")

# %%
import matplotlib.pyplot as plt
steps = history["steps"]
plt.figure(figsize=(6, 3))
plt.plot([s["step"] for s in steps], [s["loss"] for s in steps], label="train loss")
plt.plot([e["step"] for e in history["epochs"]], [e["eval_loss"] for e in history["epochs"]], "o-", label="eval loss")
plt.xlabel("step"); plt.legend(); plt.title("SFT loss"); plt.show()

# %%
show_samples(model, "actor after SFT (greedy):")

# %%
final = history["epochs"][-1]
metrics = {"preset": preset, "steps": len(steps), "train_seconds": history["train_seconds"],
           "train_loss": steps[-1]["loss"], "eval_loss": final["eval_loss"],
           "perplexity": final["perplexity"], "history": history["epochs"]}
util.save_checkpoint(util.stage_dir("actor"), model, tokenizer, configs=[cfg, data_cfg], metrics=metrics)
util.clear_resume("actor")  # the stage is complete: a rerun starts afresh
print("saved model/actor:", {k: v for k, v in metrics.items() if k != "history"})
