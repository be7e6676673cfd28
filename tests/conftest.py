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


# ----------------------------------------------------------------------------- running the notebooks
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = ["0_download", "1_actor", "2_critic", "3_rlhf", "4_test"]


def copy_project(dest: Path) -> Path:
    """A scratch copy of what the notebooks need, so tests never touch the user's model/."""
    for name in ["util.py", "rlhf", "dataset", "tools", "notebooks", *[f"{n}.ipynb" for n in NOTEBOOKS]]:
        src = ROOT / name
        if src.is_dir():
            shutil.copytree(src, dest / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy(src, dest / name)
    return dest


def run_stage_process(project: Path, stages: str, preset: str = "ci", data: str = "dataset",
                      env: dict | None = None, timeout: int = 300):
    """Run notebooks (e.g. "1" or "2 3") as a real subprocess; returns CompletedProcess."""
    import os
    import subprocess

    cmd = [sys.executable, str(project / "tools" / "run_pipeline.py"), "--preset", preset,
           "--data", data, "--only", *stages.split()]
    return subprocess.run(cmd, cwd=project, env={**os.environ, **(env or {})}, capture_output=True,
                          text=True, timeout=timeout)
