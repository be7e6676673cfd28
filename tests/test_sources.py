"""rlhf/sources.py: every kind of DATA through `datasets`, the rm-static and hh-rlhf layouts,
column options, eval splits, and errors that name the source, split, row and field. Offline:
the fixtures are written here (tools/make_fixtures.py) from the built-in data."""
import gzip
import json
import sys
from pathlib import Path

import pytest

from rlhf import chat, sources
from rlhf.config import make_config
from rlhf.data import DataError, encode_sft

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))
from make_fixtures import write_fixtures  # noqa: E402


@pytest.fixture(scope="module")
def fixtures(tmp_path_factory):
    out = tmp_path_factory.mktemp("fixtures")
    return {"good": write_fixtures(out / "good", rows=40, eval_rows=8),
            "bad": write_fixtures(out / "bad", rows=40, eval_rows=8, bad=True)}


@pytest.fixture(autouse=True)
def datasets_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "cache"))


def data_cfg(data_dir, **kw):
    return make_config("data", "ci", data_dir=str(data_dir), **kw)


def test_rm_static_jsonl_gz_maps_as_is_with_one_space(fixtures, tiny_tokenizer):
    train, evals = sources.load_data(data_cfg(fixtures["good"]["rm-static"]))
    builtin_train, _ = sources.load_data(data_cfg(ROOT / "dataset"))
    assert (len(train), len(evals)) == (40, 8)  # the test split is the eval
    assert train[0] == builtin_train[0]        # rm-static's "\n\nHuman:" and leading space undone
    assert not train[0]["chosen"].startswith(" ")
    ids = encode_sft(train[:1], tiny_tokenizer, 96, 48)[0][0]["input_ids"]
    assert "  " not in tiny_tokenizer.decode(ids)  # one separator, never two


def test_hh_rlhf_parquet_splits_the_transcript_at_the_last_assistant_turn(fixtures):
    train, evals = sources.load_data(data_cfg(fixtures["good"]["hh-rlhf"]))
    builtin_train, _ = sources.load_data(data_cfg(ROOT / "dataset"))
    assert (len(train), len(evals)) == (40, 8)
    first = builtin_train[0]
    assert train[0] == {**first, "response": first["chosen"]}  # hh-rlhf has no demonstration: chosen


def test_multi_turn_transcript_keeps_the_earlier_turns_in_the_prompt():
    text = "\n\nHuman: hi\n\nAssistant: hello\n\nHuman: 2+2?\n\nAssistant: 4"
    prompt, answer = sources.split_transcript(text)
    assert prompt == "Human: hi\n\nAssistant: hello\n\nHuman: 2+2?\n\nAssistant:" and answer == "4"
    assert sources.canonical_prompt(prompt) == "Human: hi Assistant: hello Human: 2+2? Assistant:"
    assert chat.prompt_messages(prompt) == [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"},
                                            {"role": "user", "content": "2+2?"}]


@pytest.mark.parametrize("layout, field", [("rm-static", "rejected"), ("hh-rlhf", "chosen")])
def test_a_malformed_row_names_the_source_split_row_and_field(fixtures, layout, field):
    folder = fixtures["bad"][layout]
    with pytest.raises(DataError) as err:
        sources.load_data(data_cfg(folder))
    message = str(err.value)
    assert str(folder) in message and "[train]" in message and "row 3" in message and repr(field) in message


def test_single_file_and_save_to_disk_and_column_options(tmp_path):
    import datasets

    rows = [{"question": f"What is {i} plus 1?", "good": f" {i + 1}.", "bad": "No idea."} for i in range(20)]
    path = tmp_path / "pairs.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = data_cfg(path, prompt_key="question", chosen_key="good", rejected_key="bad")
    train, evals = sources.load_data(cfg)
    assert (len(train), len(evals)) == (18, 2)  # no test split: 10% held out, seeded
    assert sources.load_data(cfg) == (train, evals)
    assert train[0]["prompt"].startswith("Human: What is") and train[0]["prompt"].endswith("Assistant:")
    assert {r["response"] for r in train} == {r["chosen"] for r in train}
    datasets.Dataset.from_list(rows).save_to_disk(str(tmp_path / "saved"))
    assert sources.load_data(data_cfg(tmp_path / "saved", prompt_key="question", chosen_key="good",
                                      rejected_key="bad")) == (train, evals)
    with pytest.raises(DataError, match="cannot tell the layout.*question"):
        sources.load_data(data_cfg(path))


def test_invalid_json_names_the_file(tmp_path):
    path = tmp_path / "broken.jsonl.gz"
    with gzip.open(path, "wt") as handle:
        handle.write('{"prompt": "Human: a Assistant:", "chosen": "x", "rejected": "y"}\n{"prompt": \n')
    with pytest.raises(DataError, match="broken.jsonl.gz: cannot read it"):
        sources.load_data(data_cfg(path))


def test_hub_id_offline_is_a_clear_error_in_seconds(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(DataError, match="Dahoas/rm-static: not a local file or folder, and the Hub is unreachable"):
        sources.load_data(data_cfg("Dahoas/rm-static"))


def test_hub_id_online_goes_through_load_dataset(monkeypatch, tmp_path):
    import datasets

    monkeypatch.setattr(sources, "hub_reachable", lambda timeout_s=3.0: (True, "stub"))
    rows = {"prompt": ["\n\nHuman: hi\n\nAssistant:"] * 4, "response": [" hello"] * 4,
            "chosen": [" hello"] * 4, "rejected": [" go away"] * 4}
    fake = datasets.DatasetDict(train=datasets.Dataset.from_dict(rows), test=datasets.Dataset.from_dict(rows))
    calls = []
    monkeypatch.setattr(datasets, "load_dataset", lambda name, **kw: calls.append(name) or fake)
    train, evals = sources.load_data(data_cfg("Dahoas/rm-static"))
    assert calls == ["Dahoas/rm-static"] and len(train) == len(evals) == 4
    assert train[0] == {"prompt": "Human: hi Assistant:", "response": "hello", "chosen": "hello",
                        "rejected": "go away"}

    def missing(name, **kw):
        raise FileNotFoundError(f"Dataset '{name}' doesn't exist on the Hub")
    monkeypatch.setattr(datasets, "load_dataset", missing)
    with pytest.raises(DataError, match="Dahoas/rm-statc: the Hub dataset could not be loaded.*doesn't exist"):
        sources.load_data(data_cfg("Dahoas/rm-statc"))
