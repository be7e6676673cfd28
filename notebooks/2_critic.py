# %% [markdown]
# # 2 · The reward model
#
# A reward model reads a prompt and a response and returns one number: how much a person would
# like this answer. It is the base transformer with a scalar head
# (`AutoModelForSequenceClassification`, `num_labels=1`), trained on preference pairs with the
# Bradley–Terry loss
#
# $$\mathcal{L}_{\text{RM}} = -\log \sigma\big(r(x, y_{\text{chosen}}) - r(x, y_{\text{rejected}})\big)$$
#
# Only the difference of the two scores is learned, so the scale and offset of the reward are
# arbitrary; notebook 3 needs them fixed, so this notebook also measures the mean and spread of
# the reward on the actor's own answers.

# %% parameters
PRESET = "auto"
DATA = "dataset"
PROJECT_SEARCH = ""  # folders to look below for the project, ":"-separated; "" = cwd, /content, MyDrive
REPO_URL = ""        # with no copy found: git clone this URL (on Colab into /content/simple-rlhf-tiny)

# %%
preset, data_cfg, cfg = util.start("critic", PRESET, DATA)  # Colab set-up, configs printed, seeds

# %% [markdown]
# ## Pairs
# Chosen and rejected answers go through the model in **one** forward pass: the batch holds the
# B chosen sequences first and the B rejected ones after them, so both are scored by exactly the
# same weights and padding.

# %%
init_dir = util.require_checkpoint(util.stage_dir(cfg.init_from), cfg.init_from)
actor_dir = util.require_checkpoint(util.stage_dir("actor"), "actor")
tokenizer = util.load_tokenizer(init_dir)
train_rows, eval_rows = util.load_dataset_dir(DATA)
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

# %%
import inspect, torch
from transformers import AutoModelForSequenceClassification
model = AutoModelForSequenceClassification.from_pretrained(init_dir, num_labels=1)
model.config.pad_token_id = tokenizer.pad_token_id
util.check_tokenizer_matches(model, tokenizer, str(init_dir))
with torch.no_grad():  # a fresh head: N(0, 1/sqrt(d+1)) as in Ziegler et al.
    model.score.weight.normal_(0, 1 / (model.score.weight.shape[1] + 1) ** 0.5)
print(inspect.getsource(util.reward.sequence_scores))
model.eval()
print("before training:", util.reward.evaluate_reward(model, eval_pairs, collate))

# %% [markdown]
# ## Training
# The same loop as the actor's (`util.fit`), with the pairwise loss. Accuracy on held-out pairs
# counts ties as wrong, so a model that gives every answer the same score scores 0, not 0.5.

# %%
log = util.RunLog(util.stage_dir("logs"), "critic")
evaluate = lambda m: util.reward.evaluate_reward(m, eval_pairs, collate)
model, history = util.fit(model, train_pairs, collate, util.reward.reward_loss_fn, cfg,
                          log=log, evaluate=evaluate, resume_dir=util.resume_dir("critic"), tokenizer=tokenizer)
final = history["epochs"][-1]
print(f"held-out accuracy {final['eval_accuracy']:.3f}, mean margin {final['eval_margin']:.3f}")

# %%
import matplotlib.pyplot as plt
chosen, rejected = util.reward.score_pairs(model, eval_pairs, collate)
fig, axes = plt.subplots(1, 2, figsize=(10, 3))
axes[0].plot([s["step"] for s in history["steps"]], [s["loss"] for s in history["steps"]])
axes[0].set_title("pairwise loss"); axes[0].set_xlabel("step")
axes[1].hist(chosen, bins=30, alpha=0.6, label="chosen"); axes[1].hist(rejected, bins=30, alpha=0.6, label="rejected")
axes[1].set_title("reward on held-out pairs"); axes[1].legend()
plt.tight_layout(); plt.show()

# %% [markdown]
# ## Reward statistics for PPO
# PPO adds the reward to a KL penalty of a fixed scale (β = 0.1 per token), so the reward's scale
# matters: a raw score of a few units swamps the penalty and the policy learns to exploit the
# reward model. We sample answers from the SFT actor on prompts of the PPO split and record their
# reward's mean and standard deviation; notebook 3 normalises scores with them.

# %%
from transformers import AutoModelForCausalLM
actor = AutoModelForCausalLM.from_pretrained(actor_dir)
ppo_cfg = util.make_config("ppo", preset)
prompts = [r["prompt"] for r in parts["rlhf"][:max(64, 2 * ppo_cfg.rollout_batch)]]
texts, ended, sequences = util.complete(actor, tokenizer, prompts, data_cfg.max_prompt_length,
                                        ppo_cfg.max_new_tokens, do_sample=True, temperature=ppo_cfg.temperature)
scores = torch.tensor(util.reward.score_texts(model, sequences, tokenizer.pad_token_id))
stats = {"mean": float(scores.mean()), "std": float(scores.std()), "n": len(scores),
         "eos_rate": sum(ended) / len(ended), "source": "SFT actor samples on the rlhf split"}
print("reward on SFT samples:", stats)
del actor; util.free_gpu_cache()

# %%
metrics = {"preset": preset, "steps": len(history["steps"]), "train_seconds": history["train_seconds"],
           "eval_accuracy": final["eval_accuracy"], "eval_margin": final["eval_margin"],
           "eval_loss": final["eval_loss"], "history": history["epochs"]}
util.save_checkpoint(util.stage_dir("critic"), model, tokenizer, configs=[cfg, data_cfg],
                     metrics=metrics, files={"reward_stats.json": stats})
util.clear_resume("critic")  # the stage is complete: a rerun starts afresh
print("saved model/critic:", {k: v for k, v in metrics.items() if k != "history"})
