"""Stage 3, part 2: the PPO update and the training loop.

Each iteration: sample a rollout (rlhf.rollout.make_rollout), then `ppo_epochs` passes over
shuffled minibatches of it, each one optimiser step: a clipped policy step on the actor and a
clipped value step on the critic. One AdamW holds both models as two parameter groups (their own
learning rates, their own gradient clipping), so under fp16 the loss scaler unscales and updates
once per step, as GradScaler requires.
"""
from __future__ import annotations

import contextlib
import math
import time
from collections import defaultdict

import torch

from . import faults, ppo
from .checkpoint import gather_rng_states, has_train_state, load_train_state, load_weights, save_checkpoint
from .data import collate_prompts
from .generation import decode_responses
from .reward import TokenScorer
from .rollout import make_rollout, response_logits, response_values
from .runtime import halve_on_oom
from .steps import (adamw, all_processes, enable_gradient_checkpointing, is_overflow, loss_scale,
                    make_accelerator, mean_over_processes, restore_scaler, scaler_state,
                    sum_over_processes)


class Timer:
    """Seconds spent in named phases: `with timer("generate"): ...`."""

    def __init__(self):
        self.seconds = defaultdict(float)

    @contextlib.contextmanager
    def __call__(self, phase: str):
        start = time.perf_counter()
        yield
        self.seconds[phase] += time.perf_counter() - start


def minibatch(rollout, index):
    """The rows `index` of every per-row tensor of a rollout, as a dict."""
    keys = ("query_responses", "attention_mask", "responses", "mask", "logprobs", "values",
            "advantages", "returns")
    return {k: getattr(rollout, k)[index] for k in keys}


def ppo_losses(actor, critic, mb, P: int, cfg):
    """Policy and value losses of one minibatch, with their statistics."""
    logits = response_logits(actor, mb["query_responses"], mb["attention_mask"], P)   # (b, R, V)
    logprobs = ppo.logprobs_from_logits(logits, mb["responses"], cfg.temperature)     # (b, R)
    pg_loss, stats = ppo.policy_loss(logprobs, mb["logprobs"], mb["advantages"], mb["mask"], cfg.clip_ratio)
    values = response_values(critic, mb["query_responses"], mb["attention_mask"], P)  # (b, R)
    vf_loss, vstats = ppo.value_loss(values, mb["values"], mb["returns"], mb["mask"], cfg.clip_value)
    return pg_loss, vf_loss, {**stats, **vstats, "policy_loss": pg_loss.detach(), "value_loss": vf_loss.detach()}


def accumulate_gradients(actor, critic, mb, P, cfg, accelerator, micro: int, tokens: float):
    """Backward of the minibatch's losses in chunks of `micro` rows. Returns its stats, or None
    when a loss is not finite in any process (then no process has taken a backward step that
    synchronises, so none waits for another).

    The losses are token means, so each chunk's is weighted by its share of `tokens` (the valid
    tokens of the minibatch over all processes) times the number of processes, which DDP's
    average divides out: the gradients add up to the unsplit ones. Gradients are all-reduced
    once, on the last chunk (`no_sync` on the others).
    """
    starts = range(0, mb["mask"].shape[0], micro)
    totals, finite = defaultdict(float), True
    for start in starts:
        chunk = {k: v[start:start + micro] for k, v in mb.items()}
        weight = chunk["mask"].sum() * accelerator.num_processes / max(tokens, 1.0)
        last = start == starts[-1]
        with contextlib.ExitStack() as stack:
            if not last:
                for model in (actor, critic):
                    stack.enter_context(accelerator.no_sync(model))
            with accelerator.autocast():
                pg_loss, vf_loss, stats = ppo_losses(actor, critic, chunk, P, cfg)
            finite = finite and bool(torch.isfinite(pg_loss) and torch.isfinite(vf_loss))
            if last and not all_processes(accelerator, finite):  # one collective a step, on every rank
                return None
            if finite:
                accelerator.backward((pg_loss + vf_loss) * weight)  # disjoint parameters: each model its own gradient
        for k, v in stats.items():
            totals[k] += float(v) * float(chunk["mask"].sum()) / max(float(mb["mask"].sum()), 1.0)
    return totals


def update_step(actor, critic, mb, P, cfg, optimizer, accelerator, micro: int, log=print):
    """One optimiser step on actor and critic. Returns (stepped, stats, micro).

    An out-of-memory error halves the micro-batch and redoes the step (the same update). With
    fp16, the scaler unscales once, and an overflowed step is skipped by the scaler, which halves
    its scale; without a scaler, a non-finite gradient skips the step here. stats is empty when
    the step failed for another reason than an fp16 overflow (a non-finite loss, say).
    """
    tokens = sum_over_processes(accelerator, float(mb["mask"].sum()))  # once, outside the retries

    def attempt(micro):
        optimizer.zero_grad(set_to_none=True)
        return accumulate_gradients(actor, critic, mb, P, cfg, accelerator, micro, tokens)

    stats, micro = halve_on_oom(attempt, micro, log, "PPO micro-batch")
    if stats is None:
        optimizer.zero_grad(set_to_none=True)
        return False, {}, micro
    accelerator.unscale_gradients()  # fp16: divide by the loss scale, once for both models
    actor_norm = float(torch.nn.utils.clip_grad_norm_(actor.parameters(), cfg.max_grad_norm))
    critic_norm = float(torch.nn.utils.clip_grad_norm_(critic.parameters(), cfg.max_grad_norm))
    stepped = math.isfinite(actor_norm) and math.isfinite(critic_norm)
    if stepped or accelerator.scaler is not None:
        optimizer.step()  # fp16: the scaler skips an overflowed step itself
    optimizer.zero_grad(set_to_none=True)
    if stepped:
        return True, {**stats, "actor_grad_norm": actor_norm, "critic_grad_norm": critic_norm}, micro
    # an fp16 overflow skips the step, but its forward was sound: its statistics count
    return False, (stats if is_overflow(accelerator, stats) else {}), micro


def ppo_update(actor, critic, rollout, cfg, optimizer, accelerator, generator, micro=None, log=print):
    """`ppo_epochs` passes over shuffled minibatches. Returns (mean stats, skipped updates, micro):
    `micro` is the micro-batch that fitted in memory (the whole minibatch unless halved)."""
    actor.train()
    critic.train()
    totals, counts, skipped = defaultdict(float), defaultdict(int), 0
    B = rollout.responses.shape[0]
    micro = micro or cfg.micro_batch or cfg.minibatch
    for _ in range(cfg.ppo_epochs):
        order = torch.randperm(B, generator=generator)
        for start in range(0, B, cfg.minibatch):
            mb = minibatch(rollout, order[start:start + cfg.minibatch].to(rollout.responses.device))
            stepped, stats, micro = update_step(actor, critic, mb, rollout.P, cfg, optimizer, accelerator, micro, log)
            skipped += not stepped
            for k, v in stats.items():
                totals[k] += float(v)
                counts[k] += 1
    actor.eval()
    critic.eval()
    return {k: v / counts[k] for k, v in totals.items()}, skipped, micro


def rollout_stats(rollout, kl_coef):
    """What to log about a rollout: scores, KL (per response), length, EOS rate."""
    mask = rollout.mask
    k1 = ppo.kl_per_token(rollout.logprobs, rollout.ref_logprobs, mask, "k1").sum(1)  # (B,)
    k3 = ppo.kl_per_token(rollout.logprobs, rollout.ref_logprobs, mask, "k3").sum(1)  # (B,)
    return {
        "score": float(rollout.raw_scores.mean()),
        "score_penalised": float(rollout.scores.mean()),  # after the EOS penalty and clip
        "rlhf_reward": float((rollout.scores - kl_coef * k1).mean()),
        "kl": float(k1.mean()), "kl_k3": float(k3.mean()),
        "entropy": float(ppo.masked_mean(rollout.entropy, mask)),  # of the policy that sampled
        "response_length": float(mask.sum(1).mean()),
        "eos_rate": float(rollout.has_eos.float().mean()),
        "empty_responses": int((mask.sum(1) <= 1).sum()),
        "advantage_std": float(ppo.masked_var(rollout.advantages, mask).sqrt()),
        "kl_coef": kl_coef,
    }


def make_optimizer(actor, critic, cfg):
    """One AdamW over two parameter groups, the actor's (group 0, actor_lr) and the critic's
    (group 1, critic_lr), and a linear-to-zero schedule for both.

    Adam's update is per parameter, so this is the same as two optimisers; being one, it gives
    the fp16 loss scaler a single unscale and a single update per step. train_ppo steps the
    schedule once per iteration, so iteration i trains at lr * (1 - i / iterations): the last at
    lr / iterations, and the run ends at 0.
    """
    from torch.optim.lr_scheduler import LambdaLR

    trainable = lambda model: [p for p in model.parameters() if p.requires_grad]
    optimizer = adamw([{"params": trainable(actor), "lr": cfg.actor_lr},
                       {"params": trainable(critic), "lr": cfg.critic_lr}], cfg.actor_lr, eps=1e-5)
    return optimizer, LambdaLR(optimizer, lambda iteration: max(0.0, 1.0 - iteration / cfg.iterations))


def prompt_batch(prompt_ids, batch: int, seed: int, iteration: int):
    """The prompts of one iteration: shuffled passes over the prompts, a pure function of
    (seed, iteration) so a resumed run draws exactly the batches it would have drawn."""
    per_pass = max(1, len(prompt_ids) // batch)
    epoch, index = divmod(iteration, per_pass)
    order = torch.randperm(len(prompt_ids), generator=torch.Generator().manual_seed(seed * 1000 + epoch))
    return [prompt_ids[i] for i in order[index * batch:(index + 1) * batch].tolist()]


def ppo_iteration(models, tokenizer, ids, cfg, kl_coef, optimizer, accelerator, iteration,
                  sizes=None, log=print):
    """Rollout and update on one batch of prompt ids. Returns (rollout, stats).

    Sampling and scoring use the plain models; the update goes through the prepared (in a
    multi-process run, DistributedDataParallel) actor and critic so their gradients are averaged.
    `sizes` ({"chunk": rows per generation/scoring pass, "micro": rows per backward}) keeps what
    fitted in memory from one iteration to the next; out-of-memory errors halve them.
    """
    sizes = {} if sizes is None else sizes
    actor, reference, reward_model, critic = models
    plain = (accelerator.unwrap_model(actor), reference, reward_model, accelerator.unwrap_model(critic).model)
    timer = Timer()
    batch = {k: v.to(accelerator.device) for k, v in collate_prompts(ids, tokenizer.pad_token_id).items()}
    with accelerator.autocast():  # the same precision as the update, so the first ratio is 1
        rollout, sizes["chunk"] = make_rollout(plain, tokenizer, batch["input_ids"], batch["attention_mask"],
                                               cfg, kl_coef, timer, sizes.get("chunk"), log)
    stats = rollout_stats(rollout, kl_coef)
    generator = torch.Generator().manual_seed(cfg.seed * 1000 + iteration)
    with timer("train"):
        update, skipped, sizes["micro"] = ppo_update(actor, critic, rollout, cfg, optimizer, accelerator,
                                                     generator, sizes.get("micro"), log)
    scale = loss_scale(accelerator)
    stats.update(update, skipped_updates=skipped, **({"loss_scale": scale} if scale is not None else {}),
                 **{f"time_{k}": v for k, v in timer.seconds.items()})
    # the same numbers in every process: the adaptive KL and the bad-update count must not drift
    stats = mean_over_processes(accelerator, stats)
    return rollout, {"iteration": iteration + 1, **stats, "prompts": len(ids) * accelerator.num_processes}


def save_resume(resume_dir, actor, critic, tokenizer, optimizer, schedule, progress, rng_states=None):
    """The resumable PPO checkpoint: actor (weights or LoRA adapters), critic, optimiser, RNG."""
    save_checkpoint(resume_dir, actor, tokenizer, extra_models={"critic": critic},
                    train_state=({"ppo": optimizer}, {"ppo": schedule}, progress, rng_states))


def load_resume(resume_dir, actor, critic, optimizer, schedule, log, rank=0):
    """Progress restored from `resume_dir`, or a fresh start."""
    if not (resume_dir and has_train_state(resume_dir)):
        return None
    for model, folder in ((actor, resume_dir), (critic, f"{resume_dir}/critic")):
        if hasattr(model, "disable_adapter"):  # LoRA: only the adapters (and value head) were saved
            from peft import set_peft_model_state_dict
            from safetensors.torch import load_file
            set_peft_model_state_dict(model, load_file(f"{folder}/adapter_model.safetensors"))
        else:
            load_weights(model, folder)
    progress = load_train_state(resume_dir, {"ppo": optimizer}, {"ppo": schedule}, rank)
    log(f"resumed from {resume_dir} at iteration {progress['iteration']}")
    return progress


def train_ppo(models, tokenizer, prompt_ids, cfg, log=print, judge=None,
              prompt_texts=None, progress=True, resume_dir=None):
    """Run cfg.iterations of PPO. Returns (actor, critic, history, samples).

    models: (actor, reference, reward, critic) as load_ppo_models gives them (scores already
    normalised in the reward model's and critic's heads); reference None with LoRA. judge(prompt, text,
    ended) -> gold score, logged when given (built-in data only). With `resume_dir`, a resumable
    checkpoint is written every cfg.checkpoint_every iterations and a rerun continues from it.
    Stops with an error after cfg.max_bad_updates iterations in a row with no finite update.
    """
    from tqdm.auto import tqdm

    accelerator = make_accelerator(cfg.mixed_precision)
    world = accelerator.num_processes
    if world > 1 and len(prompt_ids) < cfg.rollout_batch * world:  # else ranks get unequal batches and hang
        raise ValueError(f"{len(prompt_ids)} prompts cannot give {accelerator.num_processes} process(es) "
                         f"{cfg.rollout_batch} prompts each (rollout_batch): lower rollout_batch, use "
                         "fewer processes, or give PPO more prompts (DataConfig.split)")
    actor, reference, reward_model, critic = models
    if cfg.gradient_checkpointing:
        for model in (actor, critic):
            enable_gradient_checkpointing(model)
    optimizer, schedule = make_optimizer(actor, critic, cfg)
    actor, critic, optimizer = accelerator.prepare(actor, TokenScorer(critic), optimizer)
    for frozen in (reference, reward_model):
        if frozen is not None:
            frozen.to(accelerator.device).eval().requires_grad_(False)
    torch.manual_seed(cfg.seed + accelerator.process_index)  # each process samples its own answers
    state = load_resume(resume_dir, accelerator.unwrap_model(actor), accelerator.unwrap_model(critic).model,
                        optimizer, schedule, log, accelerator.process_index) or \
        {"iteration": 0, "kl_coef": cfg.kl_coef, "bad_in_a_row": 0, "history": [], "samples": [], "sizes": {}}
    restore_scaler(accelerator, state)
    text_of = {tuple(ids): text for ids, text in zip(prompt_ids, prompt_texts or [])}
    for it in tqdm(range(state["iteration"], cfg.iterations), desc="ppo", disable=not progress,
                   initial=state["iteration"], total=cfg.iterations):
        world, rank = accelerator.num_processes, accelerator.process_index
        ids = prompt_batch(prompt_ids, cfg.rollout_batch * world, cfg.seed, it)[rank::world]
        rollout, stats = ppo_iteration((actor, reference, reward_model, critic), tokenizer, ids, cfg,
                                       state["kl_coef"], optimizer, accelerator, it,
                                       state["sizes"], log)
        schedule.step()
        record_iteration(state, rollout, stats, [text_of.get(tuple(i), "") for i in ids], tokenizer,
                         cfg, judge, log)
        state["scaler"] = scaler_state(accelerator)
        if resume_dir and cfg.checkpoint_every and (it + 1) % cfg.checkpoint_every == 0 and it + 1 < cfg.iterations:
            rng = gather_rng_states(accelerator)  # every process's generators, to rank 0
            if accelerator.is_main_process:
                save_resume(resume_dir, accelerator.unwrap_model(actor), accelerator.unwrap_model(critic).model,
                            tokenizer, optimizer, schedule, state, rng)
        faults.point("step")
    # keep_fp32_wrapper=False: the models handed back run in full precision, as they came in
    actor, critic = (accelerator.unwrap_model(m, keep_fp32_wrapper=False) for m in (actor, critic))
    return actor, critic.model, state["history"], state["samples"]


def record_iteration(state, rollout, stats, prompts, tokenizer, cfg, judge, log):
    """Gold score, adaptive KL, skipped-update bookkeeping, logging and samples of one iteration."""
    it = stats["iteration"]
    texts, ended = decode_responses(rollout.responses.cpu(), tokenizer)
    if judge is not None:
        stats["gold"] = sum(judge(p, t, e) for p, t, e in zip(prompts, texts, ended)) / len(texts)
    if stats["skipped_updates"]:
        why = (f"fp16 overflow or non-finite values; loss scale now {stats['loss_scale']:g}"
               if "loss_scale" in stats else "non-finite loss or gradient")
        log(f"iteration {it}: {stats['skipped_updates']} update(s) skipped ({why})")
    no_update = "policy_loss" not in stats  # every update of this iteration failed (an fp16 overflow aside)
    state["bad_in_a_row"] = state["bad_in_a_row"] + 1 if no_update else 0
    if state["bad_in_a_row"] >= cfg.max_bad_updates:
        raise FloatingPointError(f"{state['bad_in_a_row']} iterations in a row had only non-finite "
                                 "updates; lower the learning rates or check the reward model")
    if cfg.adaptive_kl:
        # stats["kl"] is the mean over every process's answers, stats["prompts"] how many there were
        state["kl_coef"] = ppo.update_kl_coef(state["kl_coef"], stats["kl"], cfg.target_kl, stats["prompts"],
                                              cfg.kl_horizon)
    state["history"].append(stats)
    if hasattr(log, "record"):
        log.record(stats)
    if (it - 1) % cfg.log_samples_every == 0 or it == cfg.iterations:
        state["samples"].append({"iteration": it, "prompt": prompts[0], "response": texts[0],
                                 "score": float(rollout.raw_scores[0])})
    state["iteration"] = it
