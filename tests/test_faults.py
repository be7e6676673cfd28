"""Fault injection: bad input, interruptions, numerical faults, memory pressure, determinism and
safety, each on the `ci` preset. Stages run as real processes (papermill), killed with SIGKILL.

`make faults` runs this file and prints the figures it records (tools/fault_report.py).
"""
import hashlib
import re
import json
import shutil
from functools import partial
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, OPTConfig, OPTForCausalLM

from conftest import ROOT, copy_project, run_stage_process
from rlhf import checkpoint, config, data
from rlhf.train import fit

RESULTS = []  # one dict per case: kind, case, ok


@pytest.fixture(scope="module", autouse=True)
def report():
    yield
    out = ROOT / "runs" / "faults.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(RESULTS, indent=1) + "\n")


def record(kind, case, ok, **extra):
    RESULTS.append({"kind": kind, "case": case, "ok": bool(ok), **extra})
    return ok


def tree_digest(folder: Path) -> str:
    """A hash of every file under `folder` (names and bytes): did anything change?"""
    digest = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        digest.update(str(path.relative_to(folder)).encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    """A scratch project with stages 0-2 done once, kept as a pristine model/ to copy from."""
    root = copy_project(tmp_path_factory.mktemp("faults"))
    result = run_stage_process(root, "0 1 2")
    assert result.returncode == 0, result.stderr[-3000:]
    shutil.copytree(root / "model", root / "model.pristine")
    return root


@pytest.fixture()
def fresh(project):
    """The scratch project with model/ reset to the pristine stages 0-2."""
    shutil.rmtree(project / "model", ignore_errors=True)
    shutil.copytree(project / "model.pristine", project / "model")
    for folder in ("baddata",):
        shutil.rmtree(project / folder, ignore_errors=True)
    return project


def write_data(project: Path, train_lines: list[str] | None = None, eval_lines=None) -> str:
    folder = project / "baddata"
    folder.mkdir(exist_ok=True)
    good_train = (project / "dataset" / "train.json").read_text().splitlines()
    good_eval = (project / "dataset" / "eval.json").read_text().splitlines()
    if train_lines is not False:
        (folder / "train.json").write_text("\n".join(train_lines or good_train) + "\n")
    if eval_lines is not False:
        (folder / "eval.json").write_text("\n".join(eval_lines or good_eval) + "\n")
    return "baddata"


# ----------------------------------------------------------------------------- bad input (real stage runs)

def bad_rows(project):
    return (project / "dataset" / "train.json").read_text().splitlines()


BAD_INPUTS = {
    # case: (stage to run, how to break the project, words the error must contain)
    "invalid JSON on line 3": ("1", lambda p: write_data(p, bad_rows(p)[:2] + ['{"prompt": '] + bad_rows(p)[3:]),
                               ["baddata/train.json", "line 3"]),
    "missing field": ("1", lambda p: write_data(p, bad_rows(p)[:4] + [json.dumps({"prompt": "Human: Hi Assistant:", "chosen": "a", "rejected": "b"})]),
                      ["line 5", "response"]),
    "non-string value": ("1", lambda p: write_data(p, bad_rows(p)[:1] + [json.dumps({"prompt": "Human: Hi Assistant:", "response": 3, "chosen": "a", "rejected": "b"})]),
                         ["line 2", "response"]),
    "prompt without Human/Assistant": ("2", lambda p: write_data(p, [json.dumps({"prompt": "Hi there", "response": "a", "chosen": "a", "rejected": "b"})]),
                                       ["line 1", "prompt"]),
    "dataset folder without eval.json": ("1", lambda p: write_data(p, None, False), ["eval.json"]),
    "every row too long": ("1", lambda p: write_data(p, [json.dumps({"prompt": "Human: " + "why " * 80 + "Assistant:", "response": "no " * 200, "chosen": "a", "rejected": "b"})] * 20),
                           ["too long", "max_length"]),
    "non-UTF-8 bytes": ("1", lambda p: (write_data(p), (p / "baddata" / "train.json").write_bytes(b'{"prompt": "Human: \xff Assistant:"}\n'), "baddata")[2],
                        ["train.json", "line 1", "UTF-8"]),
    "stage 2 without stage 1": ("2", lambda p: (shutil.rmtree(p / "model" / "actor"), "dataset")[1], ["actor", "1_actor.ipynb"]),
    "truncated safetensors": ("2", lambda p: (truncate(p / "model" / "actor" / "model.safetensors"), "dataset")[1],
                              ["truncated", "model.safetensors"]),
    "tokenizer of another model": ("1", lambda p: (swap_tokenizer(p), "dataset")[1], ["tokenizer", "embedding"]),
}


def truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def swap_tokenizer(project: Path) -> None:
    """Give model/base a tokenizer with more tokens than the model's embedding table."""
    from tokenizers import Tokenizer
    base = project / "model" / "base"
    tok = json.loads((base / "tokenizer.json").read_text())
    vocab = tok["model"]["vocab"]
    for i in range(600):
        vocab[f"extra{i}"] = len(vocab)
    (base / "tokenizer.json").write_text(json.dumps(tok))
    Tokenizer.from_file(str(base / "tokenizer.json"))  # still a valid tokenizer


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_stops_with_a_clear_error_and_touches_nothing(fresh, case):
    stage, breaker, words = BAD_INPUTS[case]
    data_dir = breaker(fresh)
    before = tree_digest(fresh / "model")
    result = run_stage_process(fresh, stage, data=data_dir)
    message = result.stderr + result.stdout
    clear = result.returncode != 0 and all(w.lower() in message.lower() for w in words)
    untouched = tree_digest(fresh / "model") == before
    record("bad input", case, clear and untouched, clear_error=clear, model_untouched=untouched)
    assert result.returncode != 0
    assert clear, f"error should mention {words}: {message[-2500:]}"
    assert untouched


@pytest.mark.parametrize("field, value", [("lr", -1e-3), ("batch_size", 0)])
def test_config_out_of_range_is_refused(field, value):
    with pytest.raises(config.ConfigError, match=field) as err:
        config.make_config("actor", "ci", **{field: value})
    record("bad input", f"config {field}={value}", True, message=str(err.value))


def test_clip_ratio_of_one_is_refused():
    with pytest.raises(config.ConfigError, match="clip_ratio"):
        config.make_config("ppo", "ci", clip_ratio=1.0)
    record("bad input", "config clip_ratio=1.0", True)


def test_prompt_that_tokenises_to_nothing(tiny_tokenizer):
    class Empty:  # a tokenizer that maps every text to no tokens at all
        bos_token_id, eos_token_id, pad_token_id = None, 2, 0

        def __call__(self, text, add_special_tokens=False):
            return type("Enc", (), {"input_ids": []})()

    rows = [{"prompt": "Human: Hi Assistant:", "response": "Hello.", "chosen": "a", "rejected": "b"}]
    with pytest.raises(data.DataError, match="row 0") as err:
        data.encode_sft(rows, Empty(), 64, 32)
    record("bad input", "prompt tokenises to nothing", True, message=str(err.value))


# ----------------------------------------------------------------------------- interruptions (SIGKILL)

@pytest.fixture(scope="module")
def uninterrupted(project):
    """metrics.json of uninterrupted runs: stages 1-2 from the pristine run, stage 3 run once here."""
    (project.parent / "uninterrupted").mkdir()
    work = copy_project(project.parent / "uninterrupted")
    shutil.copytree(project / "model.pristine", work / "model")
    result = run_stage_process(work, "3")
    assert result.returncode == 0, result.stderr[-3000:]
    read = lambda folder: json.loads((folder / "metrics.json").read_text())
    return {"actor": read(project / "model.pristine" / "actor"),
            "critic": read(project / "model.pristine" / "critic"), "rlhf": read(work / "model" / "rlhf")}


KILLS = [
    # (notebook, the stage's folder, where to kill)
    ("1", "actor", "step:3"),    # before the first periodic checkpoint (every 5 steps)
    ("1", "actor", "step:12"),   # after two periodic checkpoints
    ("1", "actor", "save:2"),    # in the middle of writing the second periodic checkpoint
    ("1", "actor", "save:6"),    # in the middle of writing the final model/actor
    ("2", "critic", "step:8"),
    ("3", "rlhf", "step:5"),     # PPO, after iteration 5 (periodic checkpoint every 2)
    ("3", "rlhf", "save:4"),     # PPO, mid-save of the final model/rlhf (after 3 periodic saves)
]


@pytest.mark.parametrize("notebook, stage, where", KILLS)
def test_killed_stage_resumes_to_the_same_result(fresh, uninterrupted, notebook, stage, where):
    previous = fresh / "model" / stage
    had_previous = previous.exists()
    before = tree_digest(previous) if had_previous else None
    killed = run_stage_process(fresh, notebook, env={"RLHF_FAULT": where})
    assert killed.returncode != 0, "the fault point was never reached"
    # the previous complete checkpoint is intact (or there was none)
    checkpoint.recover(previous)
    lost = had_previous and (not previous.exists() or tree_digest(previous) != before)
    resumed = run_stage_process(fresh, notebook)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    expected = uninterrupted[stage]
    got = json.loads((previous / "metrics.json").read_text())
    keys = ["train_loss", "eval_loss"] if stage == "actor" else \
        ["eval_accuracy", "eval_margin", "eval_loss"] if stage == "critic" else ["last"]
    same = all(_close(got[k], expected[k]) for k in keys)
    log = (fresh / "model" / "logs" / f"{stage}.log").read_text()
    record("interruption", f"{stage} killed at {where}", same and not lost, resumed="resumed from" in log,
           matched=same, checkpoint_lost=bool(lost))
    assert not lost
    assert same, {k: (got[k], expected[k]) for k in keys}


def _close(a, b):
    if isinstance(a, dict):
        return all(_close(a[k], b[k]) for k in a if not k.startswith("time_"))
    if isinstance(a, float):
        return abs(a - b) <= 1e-6 * max(1.0, abs(b))
    return a == b


# ----------------------------------------------------------------------------- numerical faults, memory

def tiny_lm(vocab=64):
    torch.manual_seed(0)
    return OPTForCausalLM(OPTConfig(vocab_size=vocab, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                    ffn_dim=32, word_embed_proj_dim=16, max_position_embeddings=32,
                                    pad_token_id=0, bos_token_id=1, eos_token_id=2))


def toy_items(n=32):
    g = torch.Generator().manual_seed(0)
    return [{"input_ids": torch.randint(3, 64, (8,), generator=g).tolist(), "labels": [-100, -100] +
             torch.randint(3, 64, (6,), generator=g).tolist()} for _ in range(n)]


def test_non_finite_loss_skips_the_step_and_never_reaches_weights():
    cfg = config.make_config("actor", "ci", batch_size=8, epochs=1, max_steps=4, checkpoint_every=0)
    calls = {"n": 0}

    def poisoned(model, batch):
        from rlhf.sft import sft_loss_fn
        loss, stats = sft_loss_fn(model, batch)
        calls["n"] += 1
        if calls["n"] in (2, 3):
            loss = loss * float("nan")
            stats = {"loss": loss.detach()}
        return loss, stats

    logs = []
    model, history = fit(tiny_lm(), toy_items(), partial(data.collate_sft, pad_id=0), poisoned, cfg,
                         log=logs.append, progress=False)
    skipped = [s["step"] for s in history["steps"] if s["skipped"]]
    finite = all(torch.isfinite(p).all() for p in model.parameters())
    record("numerical", "NaN loss on steps 2-3", skipped == [2, 3] and finite)
    assert skipped == [2, 3] and finite
    assert sum("skipped" in line for line in logs) == 2


def test_too_many_non_finite_steps_stop_the_stage():
    cfg = config.make_config("actor", "ci", batch_size=8, max_steps=4, max_bad_steps=2, checkpoint_every=0)
    nan_loss = lambda model, batch: (model(input_ids=batch["input_ids"]).logits.sum() * float("nan"), {"loss": float("nan")})
    with pytest.raises(FloatingPointError, match="non-finite steps in a row"):
        fit(tiny_lm(), toy_items(), partial(data.collate_sft, pad_id=0), nan_loss, cfg, log=lambda m: None,
            progress=False)
    record("numerical", "NaN on every step stops the stage", True)


def test_out_of_memory_halves_the_micro_batch_and_keeps_the_result():
    from rlhf.sft import sft_loss_fn
    cfg = config.make_config("actor", "ci", batch_size=8, max_steps=3, checkpoint_every=0)

    def tight(model, batch):
        if batch["input_ids"].shape[0] > 2:
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        return sft_loss_fn(model, batch)

    logs = []
    oom_model, _ = fit(tiny_lm(), toy_items(), partial(data.collate_sft, pad_id=0), tight, cfg,
                       log=logs.append, progress=False)
    ref_cfg = config.make_config("actor", "ci", batch_size=8, grad_accum=4, max_steps=3, checkpoint_every=0)
    ref_model, _ = fit(tiny_lm(), toy_items(), partial(data.collate_sft, pad_id=0), sft_loss_fn, ref_cfg,
                       log=lambda m: None, progress=False)
    same = all(torch.allclose(a, b, atol=1e-6) for a, b in zip(oom_model.parameters(), ref_model.parameters()))
    said = any("micro-batch halved to 4" in line for line in logs) and any("to 2" in line for line in logs)
    record("memory", "OOM halves the micro-batch, effective batch kept", same and said)
    assert said and same


def test_out_of_memory_at_micro_batch_one_says_what_to_do():
    cfg = config.make_config("actor", "ci", batch_size=2, max_steps=1, checkpoint_every=0)

    def never_fits(model, batch):
        raise torch.OutOfMemoryError("CUDA out of memory (simulated)")

    with pytest.raises(MemoryError, match="CPU"):
        fit(tiny_lm(), toy_items(4), partial(data.collate_sft, pad_id=0), never_fits, cfg,
            log=lambda m: None, progress=False)
    record("memory", "OOM at micro-batch 1: last resort named", True)


# ----------------------------------------------------------------------------- determinism, safety

def test_same_seed_same_metrics():
    from rlhf.sft import sft_loss_fn
    cfg = config.make_config("actor", "ci", batch_size=8, max_steps=4, checkpoint_every=0)
    runs = [fit(tiny_lm(), toy_items(), partial(data.collate_sft, pad_id=0), sft_loss_fn, cfg,
                log=lambda m: None, progress=False)[1]["steps"] for _ in range(2)]
    same = [s["loss"] for s in runs[0]] == [s["loss"] for s in runs[1]]
    record("determinism", "two runs, same seed", same)
    assert same


def test_checkpoints_hold_no_pickles_and_code_never_unpickles(project):
    pickles = [p for p in (project / "model.pristine").rglob("*") if p.suffix in (".bin", ".pt", ".pkl", ".pth")]
    source = "\n".join(p.read_text() for p in (ROOT / "rlhf").glob("*.py")) + (ROOT / "util.py").read_text()
    unpickling = [w for w in (r"torch\.load\(", r"pickle\.loads?\(", r"weights_only=False", r"(?<![\w.])eval\(",
                              r"(?<![\w.])exec\(") if re.search(w, source)]
    remote = config.BaseConfig().trust_remote_code
    ok = not pickles and not unpickling and remote is False
    record("safety", "safetensors only, nothing unpickled, trust_remote_code off", ok)
    assert not pickles and not unpickling and remote is False
