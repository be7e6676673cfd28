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


def labelled_logits(model, batch):
    """The logits of the positions that predict a label, and those labels: (N, V), (N,).

    Same loss as `sft_loss`, less work: the LM head (V columns, the biggest matmul of a small
    model) runs only where a label follows, not on the prompt or the padding.
    """
    targets = batch["labels"][:, 1:]                  # (B, T-1) position t predicts token t+1
    keep = F.pad(targets != -100, (0, 1))              # (B, T) bool, the last position predicts nothing
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                   logits_to_keep=keep, use_cache=False).logits   # (N, V), N = keep.sum()
    return logits, targets[keep[:, :-1]]               # (N, V), (N,)


def sft_loss_fn(model, batch):
    """loss_fn for rlhf.train.fit: (loss, stats). Equals sft_loss(full logits, labels)."""
    logits, targets = labelled_logits(model, batch)
    loss = F.cross_entropy(logits.float(), targets)
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
