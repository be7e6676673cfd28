"""Sampling from a causal LM on left-padded prompts, and reading the responses back."""
from __future__ import annotations

import torch


def position_ids_from_mask(attention_mask):
    """Positions that ignore left padding: 0 at the first real token.  # (B, T)"""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


@torch.no_grad()
def generate(model, input_ids, attention_mask, tokenizer, max_new_tokens: int,
             do_sample: bool = True, temperature: float = 1.0):
    """Sample (or greedy-decode) continuations of left-padded prompts.

    input_ids, attention_mask: (B, P). Returns the response tokens (B, R), R <= max_new_tokens,
    exactly as generated (pads after EOS). Sampling is pure: top_k 0, top_p 1.
    """
    kwargs = dict(do_sample=True, top_k=0, top_p=1.0, temperature=temperature) if do_sample \
        else dict(do_sample=False)
    out = model.generate(input_ids=input_ids, attention_mask=attention_mask,
                         max_new_tokens=max_new_tokens, pad_token_id=tokenizer.pad_token_id,
                         eos_token_id=tokenizer.eos_token_id, **kwargs)
    return out[:, input_ids.shape[1]:]  # (B, R)


def decode_responses(responses, tokenizer):
    """Text of each response up to its first EOS, and whether it had one."""
    texts, ended = [], []
    eos = tokenizer.eos_token_id
    for row in responses.tolist():
        has_eos = eos in row
        row = row[:row.index(eos)] if has_eos else row
        row = [t for t in row if t != tokenizer.pad_token_id]
        texts.append(tokenizer.decode(row, skip_special_tokens=True).strip())
        ended.append(has_eos)
    return texts, ended


def complete(model, tokenizer, prompts, max_prompt_length: int, max_new_tokens: int,
             do_sample: bool = False, temperature: float = 1.0, batch_size: int = 32):
    """Answer each prompt text: (texts, ended, sequences), where a sequence is the prompt ids plus
    the response ids up to and including the first EOS (what the reward model scores)."""
    from .data import collate_prompts, encode_prompts

    device = next(model.parameters()).device
    model.eval()
    texts, ended, sequences = [], [], []
    for start in range(0, len(prompts), batch_size):
        prompt_ids = encode_prompts([{"prompt": p} for p in prompts[start:start + batch_size]],
                                    tokenizer, max_prompt_length)
        batch = collate_prompts(prompt_ids, tokenizer.pad_token_id)
        responses = generate(model, batch["input_ids"].to(device), batch["attention_mask"].to(device),
                             tokenizer, max_new_tokens, do_sample, temperature).cpu()
        chunk_texts, chunk_ended = decode_responses(responses, tokenizer)
        texts += chunk_texts
        ended += chunk_ended
        for ids, row, has_eos in zip(prompt_ids, responses.tolist(), chunk_ended):
            row = row[:row.index(tokenizer.eos_token_id) + 1] if has_eos else row
            sequences.append(ids + [t for t in row if t != tokenizer.pad_token_id])
    return texts, ended, sequences


def chat(model, tokenizer, question, max_new_tokens: int = 48, do_sample: bool = False,
         temperature: float = 1.0) -> str:
    """Ask `model` a question and return its answer. `question` is a string or chat messages
    ([{"role": "user", "content": ...}, ...]), formatted by the tokenizer's chat template: the
    training format (rlhf.data.CHAT_TEMPLATE), as `transformers.pipeline` formats messages too."""
    messages = [{"role": "user", "content": question}] if isinstance(question, str) else question
    ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True,
                                        return_dict=True)["input_ids"]
    device = next(model.parameters()).device
    model.eval()
    input_ids = torch.tensor([ids], device=device)                          # (1, P)
    responses = generate(model, input_ids, torch.ones_like(input_ids), tokenizer, max_new_tokens,
                         do_sample, temperature)                            # (1, R)
    return decode_responses(responses.cpu(), tokenizer)[0][0]
