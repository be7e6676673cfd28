"""Base models: the offline decision, the fallback, each architecture, checkpoints, the reward
read at the last real token, and the SFT loss mask."""
import json
import sys
import time
from pathlib import Path

import pytest
import torch
from transformers import (AutoModelForCausalLM, AutoModelForSequenceClassification, GPT2Config,
                          LlamaConfig, OPTConfig)

from rlhf import checkpoint, models, reward, sft
from rlhf.config import make_config
from rlhf.data import collate_sft, encode_sft, pad_right
from rlhf.hub import hub_reachable

ROWS = [{"prompt": "Human: What is the capital of France? Assistant:",
         "response": "The capital of France is Paris.", "chosen": "Paris.", "rejected": "Rome."}]


def tiny_config(arch: str, vocab: int):
    common = dict(vocab_size=vocab, pad_token_id=0, bos_token_id=1, eos_token_id=2)
    if arch == "opt":
        return OPTConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, ffn_dim=64,
                         word_embed_proj_dim=32, max_position_embeddings=64, **common)
    if arch == "gpt2":
        return GPT2Config(n_embd=32, n_layer=2, n_head=2, n_positions=64, **common)
    return LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                       num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=64, **common)


def test_offline_decision_is_fast(monkeypatch):
    monkeypatch.setenv("HF_ENDPOINT", "https://hub.invalid")
    start = time.time()
    ok, reason = hub_reachable(timeout_s=2.0)
    assert not ok and "hub.invalid" in reason
    assert time.time() - start < 5.0


def test_get_base_falls_back_offline_within_seconds(monkeypatch):
    monkeypatch.setenv("HF_ENDPOINT", "https://hub.invalid")
    cfg = make_config("base", "ci", use_hub=True, hub_timeout_s=2.0)
    start = time.time()
    said = []
    model, tokenizer, source = models.get_base(cfg, [r["prompt"] + " " + r["response"] for r in ROWS] * 10,
                                               log=said.append, fallback=True)  # PRESET "auto"
    assert time.time() - start < 5.0
    assert source.startswith("fallback") and "falling back" in said[0] and "offline" in said[0]
    assert len({tokenizer.pad_token_id, tokenizer.bos_token_id, tokenizer.eos_token_id}) == 3
    assert model.get_input_embeddings().weight.shape[0] == len(tokenizer)


def test_a_model_asked_for_by_name_that_fails_is_an_error_naming_it_and_why(monkeypatch):
    from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError

    cfg = make_config("base", "ci", use_hub=True, model_name="facebook/opt-350mm", hub_timeout_s=1.0)
    monkeypatch.setattr(models, "hub_reachable", lambda timeout_s: (False, "hub.invalid did not answer"))
    with pytest.raises(models.ModelLoadError, match="'facebook/opt-350mm': offline: hub.invalid"):
        models.get_base(cfg, ["Human: a Assistant: b"], log=lambda m: None)
    monkeypatch.setattr(models, "hub_reachable", lambda timeout_s: (True, "stub"))
    import httpx

    reply = lambda status: httpx.Response(status, request=httpx.Request("GET", "https://huggingface.co/x"))
    for error, reason in ((RepositoryNotFoundError("Repository Not Found", response=reply(404)), "not found on the Hub"),
                          (GatedRepoError("Access restricted", response=reply(403)), "no access")):
        def fail(cfg, error=error):
            raise OSError("facebook/opt-350mm is not a local folder") from error
        monkeypatch.setattr(models, "load_hub_base", fail)
        with pytest.raises(models.ModelLoadError, match=f"'facebook/opt-350mm': {reason}"):
            models.get_base(cfg, ["Human: a Assistant: b"], log=lambda m: None)


def test_a_local_model_folder_loads_without_the_hub(tmp_path, tiny_tokenizer, monkeypatch):
    model = models.build_fallback_model(tiny_tokenizer, make_config("base", "ci"))
    model.save_pretrained(tmp_path)
    tiny_tokenizer.save_pretrained(tmp_path)
    monkeypatch.setattr(models, "hub_reachable", lambda timeout_s: (False, "offline"))
    cfg = make_config("base", "ci", use_hub=True, model_name=str(tmp_path))
    _, tokenizer, source = models.get_base(cfg, [], log=lambda m: None)
    assert source == f"local:{tmp_path}" and tokenizer.chat_template


def test_auto_preset_without_gpu_is_tiny(tmp_path):
    preset, reason = models.resolve_preset("auto", base_dir=tmp_path, decide_anew=True)
    assert preset == ("tiny" if not torch.cuda.is_available() else preset)
    (tmp_path / "metrics.json").write_text(json.dumps({"preset": "ci"}))
    assert models.resolve_preset("auto", base_dir=tmp_path)[0] == "ci"
    assert models.resolve_preset("tiny", base_dir=tmp_path) == ("tiny", "asked for")


def test_ensure_pad_token_adds_distinct_pad(tiny_tokenizer):
    import copy
    tok = copy.deepcopy(tiny_tokenizer)
    tok.pad_token = tok.eos_token  # what GPT-2 users often do
    model = AutoModelForCausalLM.from_config(tiny_config("gpt2", len(tok)))
    assert models.ensure_pad_token(tok, model)
    assert tok.pad_token_id != tok.eos_token_id
    assert model.get_input_embeddings().weight.shape[0] >= len(tok)
    assert model.config.pad_token_id == tok.pad_token_id


@pytest.mark.parametrize("arch", ["opt", "gpt2", "llama"])
def test_each_architecture_saves_loads_and_scores(arch, tiny_tokenizer, tmp_path):
    torch.manual_seed(0)
    config = tiny_config(arch, len(tiny_tokenizer))
    lm = AutoModelForCausalLM.from_config(config)
    checkpoint.save_checkpoint(tmp_path / "actor", lm, tiny_tokenizer, configs=[make_config("actor", "ci")],
                               metrics={"x": 1})
    assert (tmp_path / "actor" / "model.safetensors").exists()
    assert not list(tmp_path.glob(".actor.*"))  # no temporary folder left behind
    again = AutoModelForCausalLM.from_pretrained(tmp_path / "actor").eval()
    ids = torch.tensor([[1, 5, 6, 7, 2]])
    assert torch.allclose(lm.eval()(ids).logits, again(ids).logits, atol=1e-5)
    rm = AutoModelForSequenceClassification.from_pretrained(tmp_path / "actor", num_labels=1).eval()
    scores = reward.sequence_scores(rm, ids, torch.ones_like(ids))
    assert scores.shape == (1,)
    assert json.loads((tmp_path / "actor" / "metrics.json").read_text()) == {"x": 1}


@pytest.mark.parametrize("arch", ["opt", "gpt2", "llama"])
def test_reward_read_at_last_real_token_ignores_pads(arch, tiny_tokenizer):
    torch.manual_seed(0)
    config = tiny_config(arch, len(tiny_tokenizer))
    config.num_labels = 1
    rm = AutoModelForSequenceClassification.from_config(config).eval()
    seqs = [[1, 5, 6, 7, 2], [1, 8, 2]]
    ids, mask = pad_right(seqs, 0)
    batched = reward.sequence_scores(rm, ids, mask)
    for i, seq in enumerate(seqs):
        alone = reward.sequence_scores(rm, torch.tensor([seq]), torch.ones(1, len(seq), dtype=torch.long))
        assert torch.allclose(batched[i], alone[0], atol=1e-5)
        padded = torch.tensor([seq + [0] * 4])
        pmask = torch.tensor([[1] * len(seq) + [0] * 4])
        assert torch.allclose(reward.sequence_scores(rm, padded, pmask), alone, atol=1e-5)
        # and it is the head's value at the EOS, not at any other position
        per_token = reward.token_scores(rm, torch.tensor([seq]), torch.ones(1, len(seq), dtype=torch.long))
        assert torch.allclose(alone, per_token[:, -1])


def test_sft_loss_ignores_prompt_and_pad(tiny_tokenizer):
    torch.manual_seed(0)
    lm = AutoModelForCausalLM.from_config(tiny_config("opt", len(tiny_tokenizer))).eval()
    examples, _ = encode_sft(ROWS, tiny_tokenizer, max_length=64, max_prompt_length=32)
    batch = collate_sft(examples, tiny_tokenizer.pad_token_id)
    logits = lm(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    loss = sft.sft_loss(logits, batch["labels"])
    # hand computation over labelled positions only
    logp = torch.log_softmax(logits[0, :-1].float(), -1)
    labels = batch["labels"][0, 1:]
    keep = labels != -100
    expected = -logp[keep].gather(1, labels[keep][:, None]).mean()
    assert torch.allclose(loss, expected, atol=1e-5)
    assert keep.sum() < labels.numel()  # the prompt really was masked
    # changing prompt-token logits does not change the loss
    n_prompt = int((batch["labels"][0] == -100).sum())
    edited = logits.clone()
    edited[0, : n_prompt - 1] += torch.randn_like(edited[0, : n_prompt - 1]) * 5
    assert torch.allclose(sft.sft_loss(edited, batch["labels"]), loss, atol=1e-5)


@pytest.mark.parametrize("arch", ["opt", "gpt2", "llama"])
def test_sft_loss_fn_runs_the_lm_head_on_labelled_positions_only(tiny_tokenizer, arch):
    """sft_loss_fn (LM head on labelled positions) gives sft_loss's value and gradients."""
    torch.manual_seed(0)
    lm = AutoModelForCausalLM.from_config(tiny_config(arch, len(tiny_tokenizer))).eval()
    examples, _ = encode_sft(ROWS, tiny_tokenizer, max_length=64, max_prompt_length=32)
    batch = collate_sft(examples, tiny_tokenizer.pad_token_id)
    logits, targets = sft.labelled_logits(lm, batch)
    assert logits.shape == (int((batch["labels"][:, 1:] != -100).sum()), len(tiny_tokenizer))
    assert logits.shape[0] < batch["labels"].numel() - len(ROWS)  # the prompt and padding were skipped
    fast, _ = sft.sft_loss_fn(lm, batch)
    fast_grad = torch.autograd.grad(fast, lm.get_input_embeddings().weight)[0]
    full = sft.sft_loss(lm(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits,
                        batch["labels"])
    full_grad = torch.autograd.grad(full, lm.get_input_embeddings().weight)[0]
    torch.testing.assert_close(fast, full, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(fast_grad, full_grad, atol=1e-6, rtol=1e-4)


def test_interrupted_swap_recovers_previous_checkpoint(tmp_path, tiny_tokenizer):
    out = tmp_path / "critic"
    checkpoint.save_checkpoint(out, tokenizer=tiny_tokenizer, metrics={"v": 1})
    old = tmp_path / ".critic.old"
    out.rename(old)  # a crash between the two renames of a later save
    (tmp_path / ".critic.tmp").mkdir()  # and a half-written new folder
    checkpoint.recover(out)
    assert json.loads((out / "metrics.json").read_text()) == {"v": 1}
    assert not old.exists() and not (tmp_path / ".critic.tmp").exists()


def test_missing_checkpoint_names_the_notebook(tmp_path):
    with pytest.raises(FileNotFoundError, match="1_actor.ipynb"):
        checkpoint.require_checkpoint(tmp_path / "actor", "actor")


@pytest.mark.parametrize("bf16_cpu, expected", [(True, "bf16"), (False, "no")])
def test_auto_precision_on_a_cpu_follows_its_bf16_support(monkeypatch, bf16_cpu, expected):
    from rlhf import runtime

    monkeypatch.setattr(runtime.torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(runtime, "cpu_has_bf16", lambda: bf16_cpu)
    assert runtime.resolve_mixed_precision("auto") == expected
    assert runtime.resolve_mixed_precision("no") == "no"  # an explicit choice is kept


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="a glibc setting")
@pytest.mark.parametrize("keep", [False, True])
def test_freed_cpu_memory_stays_for_reuse_only_when_asked(keep):
    """keep_freed_cpu_memory: a freed 200 MB tensor stays in the process (no fresh pages for the
    next one); by default glibc hands it back at once."""
    import subprocess
    code = (
        "import re, torch\n"
        "from rlhf.runtime import keep_freed_cpu_memory\n"
        "rss = lambda: int(re.search(r'VmRSS:\\s+(\\d+)', open('/proc/self/status').read()).group(1)) // 1024\n"
        f"assert keep_freed_cpu_memory() if {keep} else True\n"
        "base = rss(); x = torch.ones(50_000_000); del x\n"
        "print(rss() - base)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=Path(__file__).resolve().parents[1])
    kept_mib = int(out.stdout.split()[-1])
    assert (kept_mib > 150) == keep, kept_mib
