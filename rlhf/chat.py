"""The chat template: the training format as messages, and rows rendered with a hub model's own
template (an instruction-tuned model's).

A row's prompt is a dialogue in the training format, "Human: … Assistant: … Human: … Assistant:"
(rlhf/sources.py maps every source onto it); `prompt_messages` reads it as chat messages and
`render_prompt` writes them back. With the built-in template (CHAT_TEMPLATE, or a tokenizer with
none) rlhf/data.py tokenises that text as it is. A tokenizer that came with its own template
gets the dialogue as messages instead, rendered by `apply_chat_template`: the prompt with the
generation prompt appended, the answer as the text the template puts after it (its end-of-turn
marker included), then EOS. Every stage encodes through rlhf/data.py, so SFT,
the reward model, the PPO rollouts and the evaluation all see the model's own format.
"""
from __future__ import annotations

import re

# The training format as a Jinja chat template (every checkpoint's tokenizer carries it):
# [{"role": "user", "content": "What colour is a banana?"}] with add_generation_prompt renders
# "<bos>Human: What colour is a banana? Assistant:", the prompt of a row; a final assistant
# message renders as " Assistant: <answer><eos>", the SFT sequence. Earlier assistant turns get
# no EOS, as in a multi-turn prompt of the data.
CHAT_TEMPLATE = (
    "{{- bos_token if bos_token else '' -}}"
    "{%- for message in messages -%}"
    "{%- if message['role'] == 'user' -%}"
    "{{- ('' if loop.first else ' ') + 'Human: ' + message['content'] | trim -}}"
    "{%- elif message['role'] == 'assistant' -%}"
    "{{- ' Assistant: ' + message['content'] | trim -}}"
    "{%- if loop.last and eos_token -%}{{- eos_token -}}{%- endif -%}"
    "{%- else -%}"
    "{{- raise_exception('only user and assistant messages: the training data has no other role') -}}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- ' Assistant:' -}}{%- endif -%}"
)
_PROBE = [{"role": "user", "content": "?"}]  # one user turn: what answer_text renders around


def prompt_messages(prompt: str) -> list[dict]:
    """The chat messages of a "Human: ... Assistant: ... Human: ... Assistant:" prompt, without the
    final empty assistant turn (the one the model answers)."""
    parts = re.split(r"(?:^|\s)(Human|Assistant):", prompt.strip())
    if parts[0].strip() or len(parts) < 3:
        raise ValueError("it does not start with 'Human:'")
    roles = {"Human": "user", "Assistant": "assistant"}
    messages = [{"role": roles[who], "content": text.strip()} for who, text in zip(parts[1::2], parts[2::2])]
    if messages[-1] != {"role": "assistant", "content": ""}:
        raise ValueError("it does not end with 'Assistant:'")
    return messages[:-1]


def render_prompt(messages: list[dict]) -> str:
    """Messages in the training format, one space between turns: what CHAT_TEMPLATE renders with
    add_generation_prompt (less the BOS)."""
    names = {"user": "Human:", "assistant": "Assistant:"}
    return " ".join(f"{names[m['role']]} {m['content']}" for m in messages) + " Assistant:"


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
                         "generation prompt followed by the answer; set it to rlhf.chat.CHAT_TEMPLATE")
    return full[len(prompt):].rstrip()


def response_ids(tokenizer, answer: str) -> list[int]:
    """The answer's ids as the template renders them, ending with EOS (added when the template's
    end-of-turn marker is another token), so the model learns to stop where generation stops."""
    ids = tokenizer(answer_text(tokenizer, answer), add_special_tokens=False).input_ids
    return ids if ids and ids[-1] == tokenizer.eos_token_id else ids + [tokenizer.eos_token_id]
