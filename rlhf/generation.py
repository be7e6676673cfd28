"""Sampling from a causal LM on left-padded prompts, and reading the responses back."""
from __future__ import annotations

import torch
from transformers import GenerationConfig

from .data import collate_prompts, encode_prompts

# Every logits processor and warper of transformers' generate, switched off. generate() fills each
# field of a passed GenerationConfig that is None from the model's own generation_config (a Hub
# model ships repetition_penalty, top_k, top_p, min_p, ...), so none may be left unset.
NO_PROCESSORS = dict(
    top_k=0, top_p=1.0, min_p=0.0, typical_p=1.0, epsilon_cutoff=0.0, eta_cutoff=0.0,
    repetition_penalty=1.0, encoder_repetition_penalty=1.0, no_repeat_ngram_size=0,
    encoder_no_repeat_ngram_size=0, min_length=0, suppress_tokens=[],
    begin_suppress_tokens=[], guidance_scale=1.0, renormalize_logits=False, remove_invalid_values=False,
    num_beams=1, num_return_sequences=1)
# the processors that only None switches off: a model that sets one cannot sample from pi / T
NONE_ONLY = ("bad_words_ids", "sequence_bias", "forced_bos_token_id", "forced_eos_token_id",
             "exponential_decay_length_penalty", "watermarking_config", "top_h")


def position_ids_from_mask(attention_mask):
    """Positions that ignore left padding: 0 at the first real token.  # (B, T)"""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


@torch.no_grad()
def generate(model, input_ids, attention_mask, tokenizer, max_new_tokens: int,
             do_sample: bool = True, temperature: float = 1.0):
    """Sample (or greedy-decode) continuations of left-padded prompts.

    input_ids, attention_mask: (B, P). Returns the response tokens (B, R), R <= max_new_tokens,
    exactly as generated (pads after EOS). Sampling is pure, from softmax(logits / T): none of the
    model's own generation settings apply (`sampling_config`).
    """
    config = sampling_config(model, tokenizer, max_new_tokens, do_sample, temperature)
    out = model.generate(input_ids=input_ids, attention_mask=attention_mask, generation_config=config)
    return out[:, input_ids.shape[1]:]  # (B, R)


def sampling_config(model, tokenizer, max_new_tokens: int, do_sample: bool, temperature: float):
    """The project's GenerationConfig: sample from exactly pi / T (or take the argmax), every
    processor off (NO_PROCESSORS), whatever the model's generation_config says. Raises if that
    config sets a processor that no value but None switches off (NONE_ONLY)."""
    own = model.generation_config
    set_by_model = [name for name in NONE_ONLY if getattr(own, name, None) is not None]
    if set_by_model:
        raise ValueError(f"the model's generation_config sets {set_by_model}: sampling would not be from "
                         "the policy; set them to None in model.generation_config")
    return GenerationConfig(do_sample=do_sample, temperature=temperature if do_sample else 1.0,
                            max_new_tokens=max_new_tokens, pad_token_id=tokenizer.pad_token_id,
                            eos_token_id=tokenizer.eos_token_id, **NO_PROCESSORS,
                            # 0 overrides a model's min_new_tokens; None (off too) where it sets none, since
                            # transformers warns on every call that a non-None one clashes with min_length
                            min_new_tokens=0 if own.min_new_tokens else None)


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
    training format (rlhf.chat.CHAT_TEMPLATE), as `transformers.pipeline` formats messages too."""
    messages = [{"role": "user", "content": question}] if isinstance(question, str) else question
    ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True,
                                        return_dict=True)["input_ids"]
    device = next(model.parameters()).device
    model.eval()
    input_ids = torch.tensor([ids], device=device)                          # (1, P)
    responses = generate(model, input_ids, torch.ones_like(input_ids), tokenizer, max_new_tokens,
                         do_sample, temperature)                            # (1, R)
    return decode_responses(responses.cpu(), tokenizer)[0][0]
