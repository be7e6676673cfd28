"""One prompt format everywhere: the chat template every checkpoint's tokenizer carries renders
exactly the token ids the data code trains and evaluates on, and `util.chat` asks through it.
(tests/test_pipeline.py checks that `transformers.pipeline` with chat messages and `util.chat`
give the same greedy answers on the eval prompts of a trained checkpoint.)"""
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, OPTConfig, pipeline

from conftest import ROOT, make_tiny_tokenizer
from rlhf.chat import CHAT_TEMPLATE
from rlhf.data import build_sequence, encode_prompts, load_dataset_dir, prompt_to_ids
from rlhf.generation import chat, complete
from rlhf.models import load_tokenizer, train_tokenizer, with_chat_template


def question(prompt: str) -> str:
    return prompt[len("Human: "):-len(" Assistant:")]


@pytest.fixture(scope="module")
def data_tokenizer():
    """The offline fallback's tokenizer (notebook 0), trained on the built-in data."""
    train, evals = load_dataset_dir(ROOT / "dataset")
    texts = [r["prompt"] + " " + r[k] for r in train[:1500] for k in ("response", "chosen", "rejected")]
    return with_chat_template(train_tokenizer(texts, 512)), evals


def test_the_template_renders_the_training_format_for_every_eval_row(data_tokenizer):
    tokenizer, evals = data_tokenizer
    for row in evals:
        user = [{"role": "user", "content": question(row["prompt"])}]
        prompt_ids, _ = prompt_to_ids(tokenizer, row["prompt"], 256)
        rendered = tokenizer.apply_chat_template(user, add_generation_prompt=True, tokenize=True, return_dict=True)
        assert rendered["input_ids"] == prompt_ids                  # what generation starts from
        full = user + [{"role": "assistant", "content": row["chosen"]}]
        sequence, _, _ = build_sequence(tokenizer, prompt_ids, row["chosen"], 512)
        assert tokenizer.apply_chat_template(full, tokenize=True, return_dict=True)["input_ids"] == sequence  # SFT, RM


def test_the_template_as_text():
    tokenizer = with_chat_template(make_tiny_tokenizer())
    turns = [{"role": "user", "content": " Hi "}, {"role": "assistant", "content": "Hello."},
             {"role": "user", "content": "Thanks a lot!"}]
    assert tokenizer.apply_chat_template(turns, add_generation_prompt=True, tokenize=False) == \
        "<s>Human: Hi Assistant: Hello. Human: Thanks a lot! Assistant:"  # a multi-turn prompt of the data
    assert tokenizer.apply_chat_template(turns[:2], tokenize=False) == "<s>Human: Hi Assistant: Hello.</s>"
    with pytest.raises(Exception, match="only user and assistant"):
        tokenizer.apply_chat_template([{"role": "system", "content": "Be nice."}], tokenize=False)


def test_loaded_tokenizers_get_the_template(tmp_path):
    make_tiny_tokenizer().save_pretrained(tmp_path)  # an older checkpoint, saved without one
    assert AutoTokenizer.from_pretrained(tmp_path).chat_template is None
    assert load_tokenizer(tmp_path).chat_template == CHAT_TEMPLATE


def test_chat_asks_in_the_training_format(tmp_path):
    """util.chat, the data path (encode_prompts + generate, as evaluation does) and pipeline on a
    saved checkpoint give the same greedy answers; a random model, so the answers are arbitrary."""
    tokenizer = with_chat_template(make_tiny_tokenizer())
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(OPTConfig(
        vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2, num_attention_heads=2, ffn_dim=64,
        word_embed_proj_dim=32, max_position_embeddings=64, pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)).eval()
    model.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    generator = pipeline("text-generation", model=str(tmp_path))
    for q in ["What is the capital of France?", "How do I boil an egg?"]:
        answer = chat(model, tokenizer, q, max_new_tokens=8)
        texts, _, _ = complete(model, tokenizer, [f"Human: {q} Assistant:"], 256, 8)
        assert answer == texts[0]
        out = generator([{"role": "user", "content": q}], max_new_tokens=8, do_sample=False)
        assert out[0]["generated_text"][-1]["content"].strip() == answer
