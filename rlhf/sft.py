"""Stage 1: supervised fine-tuning of the actor on the demonstrations (`response`)."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def sft_loss(logits, labels):
    """Mean next-token cross-entropy over the labelled (response + EOS) tokens only.

    logits (B, T, V) predict token t+1 at position t; labels (B, T) hold -100 on the prompt and
    on padding, so those positions add nothing to the loss or to its denominator.
    """
    shift_logits = logits[:, :-1].float()  # (B, T-1, V)
    shift_labels = labels[:, 1:]           # (B, T-1)
    return F.cross_entropy(shift_logits.reshape(-1, shift_logits.shape[-1]),
                           shift_labels.reshape(-1), ignore_index=-100)


def sft_loss_fn(model, batch):
    """loss_fn for rlhf.train.fit: (loss, stats)."""
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    loss = sft_loss(logits, batch["labels"])
    return loss, {"loss": loss.detach()}


@torch.no_grad()
def evaluate_sft(model, examples, collate, batch_size: int = 32):
    """Token-weighted eval loss and perplexity over `examples`."""
    device = next(model.parameters()).device
    total, tokens = 0.0, 0
    for start in range(0, len(examples), batch_size):
        batch = {k: v.to(device) for k, v in collate(examples[start:start + batch_size]).items()}
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        n = int((batch["labels"][:, 1:] != -100).sum())
        total += float(sft_loss(logits, batch["labels"])) * n
        tokens += n
    loss = total / max(tokens, 1)
    return {"eval_loss": loss, "perplexity": math.exp(min(loss, 50.0))}
