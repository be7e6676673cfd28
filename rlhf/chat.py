"""Rows rendered with a hub model's own chat template (an instruction-tuned model's).

A row's prompt is a dialogue in the training format, "Human: … Assistant: … Human: … Assistant:"
(rlhf/sources.py maps every source onto it). With the built-in template (rlhf.data.CHAT_TEMPLATE,
or a tokenizer with none) rlhf/data.py tokenises that text as it is. A tokenizer that came with
its own template gets the dialogue as messages instead, rendered by `apply_chat_template`: the
prompt with the generation prompt appended, the answer as the text the template puts after it
(its end-of-turn marker included), then EOS. Every stage encodes through rlhf/data.py, so SFT,
the reward model, the PPO rollouts and the evaluation all see the model's own format.
"""
from __future__ import annotations

from .data import CHAT_TEMPLATE
from .sources import prompt_messages

_PROBE = [{"role": "user", "content": "?"}]


def uses_builtin_template(tokenizer) -> bool:
    """True when the tokenizer renders the training format: the built-in template, or none."""
    return getattr(tokenizer, "chat_template", None) in (None, "", CHAT_TEMPLATE)


def prompt_ids(tokenizer, prompt: str) -> list[int]:
    """The ids of a "Human: … Assistant:" prompt rendered by the tokenizer's own template, with the
    generation prompt (the template adds its own BOS or system header, if any)."""
    text = tokenizer.apply_chat_template(prompt_messages(prompt), add_generation_prompt=True, tokenize=False)
    return tokenizer(text, add_special_tokens=False).input_ids


def answer_text(tokenizer, answer: str) -> str:
    """What the template writes after its generation prompt for an assistant turn `answer`."""
    prompt = tokenizer.apply_chat_template(_PROBE, add_generation_prompt=True, tokenize=False)
    full = tokenizer.apply_chat_template(_PROBE + [{"role": "assistant", "content": answer}], tokenize=False)
    if not full.startswith(prompt):
        raise ValueError("the tokenizer's chat template does not render an assistant turn as its "
                         "generation prompt followed by the answer; set it to rlhf.data.CHAT_TEMPLATE")
    return full[len(prompt):].rstrip()


def response_ids(tokenizer, answer: str) -> list[int]:
    """The answer's ids as the template renders them, ending with EOS (added when the template's
    end-of-turn marker is another token), so the model learns to stop where generation stops."""
    ids = tokenizer(answer_text(tokenizer, answer), add_special_tokens=False).input_ids
    return ids if ids and ids[-1] == tokenizer.eos_token_id else ids + [tokenizer.eos_token_id]
