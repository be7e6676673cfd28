"""Shared fixtures. Everything here is built offline in well under a second."""
import pytest
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

TINY_TEXTS = [
    "Human: What is the capital of France? Assistant: The capital of France is Paris.",
    "Human: How do I boil an egg? Assistant: Put the egg in boiling water for eight minutes.",
    "Human: Can you help me write a poem? Assistant: Of course, tell me what it should be about.",
    "Human: Thanks a lot! Assistant: You are welcome, I am glad I could help.",
]


def make_tiny_tokenizer(texts=TINY_TEXTS, vocab_size: int = 320) -> PreTrainedTokenizerFast:
    """A byte-level BPE trained on `texts`, with distinct <pad>=0, <s>=1, </s>=2 ids."""
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<pad>", "<s>", "</s>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    bpe.train_from_iterator(texts, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=bpe, bos_token="<s>", eos_token="</s>",
                                   pad_token="<pad>")


@pytest.fixture(scope="session")
def tiny_tokenizer():
    tokenizer = make_tiny_tokenizer()
    ids = {tokenizer.pad_token_id, tokenizer.bos_token_id, tokenizer.eos_token_id}
    assert len(ids) == 3 and None not in ids
    return tokenizer
