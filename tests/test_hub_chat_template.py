"""A tokenizer that comes with its own chat template (an instruction-tuned hub model) keeps it,
and every stage's encoding (rlhf/data.py through rlhf/chat.py) renders the rows with it."""
import copy

from rlhf import chat
from rlhf.chat import CHAT_TEMPLATE
from rlhf.data import encode_pairs, encode_prompts, encode_sft
from rlhf.models import with_chat_template

# a ChatML-like template, as Qwen or SmolLM instruct models carry, with its own end-of-turn text
CHATML = ("{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}</s>\n{% endfor %}"
          "{% if add_generation_prompt %}<|assistant|>\n{% endif %}")
ROW = {"prompt": "Human: What is 2 plus 3? Assistant: 5. Human: And 2 plus 4? Assistant:",
       "response": "2 plus 4 is 6.", "chosen": "2 plus 4 is 6.", "rejected": "No idea."}


def hub_like(tokenizer):
    tokenizer = copy.deepcopy(tokenizer)
    tokenizer.chat_template = CHATML
    return tokenizer


def test_a_hub_template_is_kept_and_a_missing_one_becomes_the_training_format(tiny_tokenizer):
    assert with_chat_template(hub_like(tiny_tokenizer)).chat_template == CHATML
    bare = copy.deepcopy(tiny_tokenizer)
    bare.chat_template = None
    assert with_chat_template(bare).chat_template == CHAT_TEMPLATE and chat.uses_builtin_template(bare)


def test_every_encoding_renders_the_rows_with_the_models_own_template(tiny_tokenizer):
    tokenizer = hub_like(tiny_tokenizer)
    messages = [{"role": "user", "content": "What is 2 plus 3?"}, {"role": "assistant", "content": "5."},
                {"role": "user", "content": "And 2 plus 4?"}]
    prompt_text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    full_text = tokenizer.apply_chat_template(messages + [{"role": "assistant", "content": ROW["response"]}],
                                              tokenize=False).rstrip()
    assert prompt_text.endswith("<|assistant|>\n") and "Human:" not in prompt_text
    prompt_ids = encode_prompts([ROW], tokenizer, 200)[0]  # what PPO and the evaluation generate from
    assert tokenizer.decode(prompt_ids) == prompt_text
    example = encode_sft([ROW], tokenizer, 400, 200)[0][0]
    assert tokenizer.decode(example["input_ids"]) == full_text  # the template's own "</s>" is the EOS
    assert example["input_ids"][-1] == tokenizer.eos_token_id
    assert example["labels"][:len(prompt_ids)] == [-100] * len(prompt_ids)
    pair = encode_pairs([ROW], tokenizer, 400, 200)[0][0]
    assert tokenizer.decode(pair["rejected_ids"]).endswith("<|assistant|>\nNo idea.</s>")


def test_the_builtin_template_path_is_unchanged(tiny_tokenizer):
    tokenizer = with_chat_template(copy.deepcopy(tiny_tokenizer))
    ids = encode_sft([ROW], tokenizer, 400, 200)[0][0]["input_ids"]
    assert tokenizer.decode(ids) == "<s>" + ROW["prompt"] + " " + ROW["response"] + "</s>"
