"""Stage 2: the reward model, a scalar head on a transformer, trained on preference pairs.

It is an `AutoModelForSequenceClassification` with num_labels=1. We run the head on every
position and read the score at the last real token ourselves, so the same code gives the PPO
critic its per-token values and the reward model its one score per sequence.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .data import pad_right
from .generation import position_ids_from_mask
from .ppo import full_precision


class TokenScorer(torch.nn.Module):
    """A sequence-classification model whose forward returns its head's value at every position.

    PPO's critic needs all positions; wrapping it in one module gives DistributedDataParallel a
    single forward to hook, so the gradients of the backbone and the head are both averaged.
    """

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, input_ids, attention_mask):
        # with LoRA (a peft model) the transformer and head sit one level down, adapters injected
        model = self.model.get_base_model() if hasattr(self.model, "get_base_model") else self.model
        hidden = model.base_model(input_ids=input_ids, attention_mask=attention_mask,
                                  position_ids=position_ids_from_mask(attention_mask),
                                  use_cache=False).last_hidden_state          # (B, T, H)
        return linear_head(hidden, model.score.weight, model.score.bias).squeeze(-1)  # (B, T)


@full_precision
def linear_head(hidden, weight, bias=None):
    """The scalar head, hidden @ weight.T + bias, in float32 under any autocast.  (B, T, 1)

    Under bf16 autocast a linear layer rounds its output to bf16: a score of -6 would land on a
    grid of 1/32, values and rewards with it. Here the hidden states and the head's weights are
    cast to float32 first (a peft wrapper of the head hands over its active copy's weights).
    """
    return F.linear(hidden, weight, bias)                                   # (B, T, 1)


def fold_score_stats(model, mean: float, std: float):
    """Normalise the reward model's score in its head, once: (s - mean) / std.

    With s = w.h + b the head becomes (w / std).h + (b - mean) / std (a head without a bias gets
    one). PPO does this to its reward model and to its critic, so the critic's first values are in
    the units of the score it learns from: an offset c in V would shift the advantage of token t by
    -c * lambda^(L-1-t), a bias for short answers. Returns the model, changed in place.
    """
    head = model.score
    folded = torch.nn.Linear(head.in_features, head.out_features, bias=True,
                             device=head.weight.device, dtype=head.weight.dtype)
    bias = torch.zeros_like(folded.bias) if head.bias is None else head.bias
    with torch.no_grad():
        folded.weight.copy_(head.weight / std)                              # (1, H)
        folded.bias.copy_((bias - mean) / std)                              # (1,)
    model.score = folded
    return model


def token_scores(model, input_ids, attention_mask):
    """The scalar head applied at every position.  (B, T)"""
    scorer = model if isinstance(getattr(model, "module", model), TokenScorer) else TokenScorer(model)
    return scorer(input_ids, attention_mask)  # (B, T)


def last_token_index(attention_mask):
    """Index of the last real token of each row, for left or right padding.  (B,)"""
    positions = torch.arange(attention_mask.shape[1], device=attention_mask.device)
    return (attention_mask.long() * positions).argmax(-1)


def sequence_scores(model, input_ids, attention_mask):
    """One reward per sequence, read at its last real token (its EOS).  (B,)"""
    scores = token_scores(model, input_ids, attention_mask)          # (B, T)
    index = last_token_index(attention_mask)                          # (B,)
    return scores.gather(1, index[:, None]).squeeze(1)               # (B,)


@full_precision
def pairwise_loss(chosen_scores, rejected_scores):
    """Bradley-Terry loss of a reward model: mean[-log sigmoid(s_chosen - s_rejected)].

    Returns (loss, accuracy, mean margin). Accuracy counts ties as wrong (s_c > s_r strictly);
    logsigmoid keeps the loss finite for any margin. Computed in float32 under any autocast.
    """
    margins = chosen_scores - rejected_scores                             # (B,)
    loss = -F.logsigmoid(margins).mean()                                  # ()
    accuracy = (margins > 0).float().mean().detach()                      # ()
    return loss, accuracy, margins.mean().detach()


def reward_loss_fn(model, batch):
    """loss_fn for rlhf.train.fit: chosen rows first, rejected rows second, one forward pass.

    Calls the model itself (so it also works wrapped in DistributedDataParallel): Hugging Face
    pools the head at the last non-pad token, the same position `sequence_scores` reads.
    """
    mask = batch["attention_mask"]
    scores = model(input_ids=batch["input_ids"], attention_mask=mask,
                   position_ids=position_ids_from_mask(mask)).logits.squeeze(-1).float()  # (2B,)
    chosen, rejected = scores.chunk(2)
    loss, accuracy, margin = pairwise_loss(chosen, rejected)
    return loss, {"loss": loss.detach(), "accuracy": accuracy, "margin": margin}


@torch.no_grad()
def score_pairs(model, pairs, collate, batch_size: int = 32):
    """Scores of chosen and rejected for every pair: two lists of floats."""
    device = next(model.parameters()).device
    chosen, rejected = [], []
    for start in range(0, len(pairs), batch_size):
        batch = {k: v.to(device) for k, v in collate(pairs[start:start + batch_size]).items()}
        scores = sequence_scores(model, batch["input_ids"], batch["attention_mask"])
        c, r = scores.chunk(2)
        chosen += c.tolist()
        rejected += r.tolist()
    return chosen, rejected


def evaluate_reward(model, pairs, collate, batch_size: int = 32):
    """Held-out pairwise accuracy (ties count as wrong), mean margin and loss."""
    chosen, rejected = score_pairs(model, pairs, collate, batch_size)
    c, r = torch.tensor(chosen), torch.tensor(rejected)
    loss, accuracy, margin = pairwise_loss(c, r)
    return {"eval_accuracy": float(accuracy), "eval_margin": float(margin), "eval_loss": float(loss)}


@torch.no_grad()
def score_texts(model, sequences, pad_id, batch_size: int = 32):
    """Reward of each token sequence (lists of ids ending in EOS).  -> list of floats"""
    device = next(model.parameters()).device
    out = []
    for start in range(0, len(sequences), batch_size):
        ids, mask = pad_right(sequences[start:start + batch_size], pad_id)
        out += sequence_scores(model, ids.to(device), mask.to(device)).tolist()
    return out
