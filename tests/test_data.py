"""rlhf.data: every bad input is refused with a message that says where, and the encodings and
batches have the layout the training stages rely on."""
import json
from collections import Counter

import pytest
import torch

from rlhf.data import (IGNORE_INDEX, DataError, collate_pairs, collate_prompts, collate_sft,
                       encode_pairs, encode_prompts, encode_sft, format_summary,
                       load_dataset_dir, load_rows, pad_left, pad_right, split_rows)


def row(prompt="Human: What is the capital of France? Assistant:",
        response="The capital of France is Paris.", chosen="Paris.", rejected="I won't say.",
        **extra):
    return dict(prompt=prompt, response=response, chosen=chosen, rejected=rejected, **extra)


def write(tmp_path, lines, name="train.json"):
    """Write JSON-encoded rows (dicts) or raw lines (str / bytes) as one file, one per line."""
    parts = [x if isinstance(x, bytes) else (x if isinstance(x, str) else json.dumps(x)).encode()
             for x in lines]
    path = tmp_path / name
    path.write_bytes(b"\n".join(parts) + b"\n")
    return path


def assert_data_error(path, *fragments, kind="train"):
    with pytest.raises(DataError) as info:
        load_rows(path, kind=kind)
    message = str(info.value)
    for fragment in (str(path),) + fragments:
        assert fragment in message, f"{fragment!r} not in {message!r}"
    return message


# ---------------------------------------------------------------------------- bad input

def test_invalid_json_names_line_and_parser_message(tmp_path):
    path = write(tmp_path, [row(), '{"prompt": "Human: hi Assistant:", ', row()])
    assert_data_error(path, "line 2", "invalid JSON", "Expecting")


def test_line_that_is_not_an_object(tmp_path):
    path = write(tmp_path, [row(), row(), '["a", "b"]'])
    assert_data_error(path, "line 3", "object", "list")


def test_missing_field(tmp_path):
    incomplete = row()
    del incomplete["chosen"]
    path = write(tmp_path, [row(), incomplete])
    assert_data_error(path, "line 2", "missing", "'chosen'")


def test_non_string_value(tmp_path):
    path = write(tmp_path, [row(rejected=3)])
    assert_data_error(path, "line 1", "'rejected'", "string", "int")


def test_whitespace_only_prompt(tmp_path):
    path = write(tmp_path, [row(), row(prompt="   \t ")])
    assert_data_error(path, "line 2", "'prompt'", "empty")


@pytest.mark.parametrize("content", [b"", b"\n  \n\n"])
def test_empty_file(tmp_path, content):
    path = tmp_path / "train.json"
    path.write_bytes(content)
    assert_data_error(path, "no rows")


def test_empty_json_array(tmp_path):
    path = tmp_path / "train.json"
    path.write_text("[]")
    assert_data_error(path, "no rows")


@pytest.mark.parametrize("prompt", ["What is the capital of France?",
                                    "Human: What is the capital of France?",
                                    "Assistant: hi Human: there"])
def test_prompt_without_human_assistant_form(tmp_path, prompt):
    path = write(tmp_path, [row(), row(), row(), row(prompt=prompt)])
    assert_data_error(path, "line 4", "'prompt'", "Human:", "Assistant:")


def test_prompt_form_tolerates_surrounding_whitespace(tmp_path):
    path = write(tmp_path, [row(prompt="\n\nHuman: hi\n\nAssistant: \n")])
    assert len(load_rows(path)) == 1


def test_non_utf8_bytes_name_their_line(tmp_path):
    bad = json.dumps(row()).encode().replace(b"Paris", b"Par\xffis")
    path = write(tmp_path, [row(), "", bad])
    assert_data_error(path, "line 3", "UTF-8")


def test_missing_file(tmp_path):
    assert_data_error(tmp_path / "nope.json", "no such file")


def test_dataset_dir_missing_eval(tmp_path):
    write(tmp_path, [row()], name="train.json")
    with pytest.raises(DataError) as info:
        load_dataset_dir(tmp_path)
    assert str(tmp_path) in str(info.value) and "eval.json" in str(info.value)
    assert "train.json" not in str(info.value)


def test_dataset_dir_missing_both(tmp_path):
    with pytest.raises(DataError, match="train.json and eval.json"):
        load_dataset_dir(tmp_path)


@pytest.mark.parametrize("field", ["response", "chosen", "rejected"])
def test_train_rows_need_every_text(tmp_path, field):
    path = write(tmp_path, [row(**{field: " "})])
    assert_data_error(path, "line 1", repr(field), "empty")


def test_eval_rows_may_lack_rejected_but_not_chosen(tmp_path):
    path = write(tmp_path, [row(rejected="")], name="eval.json")
    assert load_rows(path, kind="eval")[0]["rejected"] == ""
    path = write(tmp_path, [row(rejected=""), row(chosen="")], name="eval.json")
    assert_data_error(path, "line 2", "'chosen'", kind="eval")


def test_error_in_json_array_names_element(tmp_path):
    path = tmp_path / "train.json"
    path.write_text(json.dumps([row(), row(), row(response=None)], indent=2))
    assert_data_error(path, "element [2]", "'response'")


def test_invalid_json_array_names_line(tmp_path):
    path = tmp_path / "train.json"
    path.write_text("[\n" + json.dumps(row()) + ",\n" + json.dumps(row())[:-1] + "\n]")
    assert_data_error(path, "line 4", "invalid JSON")


# ---------------------------------------------------------------------------- good input

def test_blank_lines_skipped_and_extra_keys_dropped(tmp_path):
    path = write(tmp_path, ["", row(id=7), "   ", row(response="Lyon?")])
    rows = load_rows(path)
    assert rows == [row(), row(response="Lyon?")]


def test_array_file_reads_like_jsonl(tmp_path):
    (tmp_path / "train.json").write_text(json.dumps([row(), row(chosen="Paris!")]))
    write(tmp_path, [row(rejected=""), row(), row()], name="eval.json")
    train, evals = load_dataset_dir(tmp_path, max_eval_rows=2)
    assert train == [row(), row(chosen="Paris!")]
    assert evals == [row(rejected=""), row()]


def test_no_partial_result_when_a_late_row_is_bad(tmp_path):
    write(tmp_path, [row()] * 5 + [row(chosen=None)])
    write(tmp_path, [row()], name="eval.json")
    with pytest.raises(DataError, match="line 6"):
        load_dataset_dir(tmp_path)


# ---------------------------------------------------------------------------- split

def test_split_is_deterministic_partition_in_proportion():
    rows = [dict(id=i) for i in range(100)]
    parts = split_rows(rows, (2, 4, 4), seed=42)
    assert parts == split_rows(rows, (2, 4, 4), seed=42)
    assert [len(parts[k]) for k in ("actor", "critic", "rlhf")] == [20, 40, 40]
    ids = [r["id"] for part in parts.values() for r in part]
    assert sorted(ids) == list(range(100))                       # every row exactly once
    assert ids != list(range(100))                               # shuffled
    assert split_rows(rows, (2, 4, 4), seed=7) != parts          # the seed matters


def test_split_uneven_sizes_and_zero_share():
    rows = list(range(11))
    parts = split_rows(rows, (0, 1, 2), seed=0)
    assert parts["actor"] == []
    assert len(parts["critic"]) + len(parts["rlhf"]) == 11
    assert abs(len(parts["critic"]) - 11 / 3) < 1
    assert Counter(x for p in parts.values() for x in p) == Counter(rows)


def test_split_rejects_bad_shares():
    with pytest.raises(ValueError):
        split_rows([1, 2], (0, 0, 0))


# ---------------------------------------------------------------------------- encoding

def test_sft_labels_mask_prompt_and_pads_and_learn_eos(tiny_tokenizer):
    tok = tiny_tokenizer
    rows = [row(), row(prompt="Human: Thanks! Assistant:", response="You are welcome.")]
    examples, summary = encode_sft(rows, tok, max_length=64, max_prompt_length=32)
    prompt_ids = tok(rows[0]["prompt"], add_special_tokens=False).input_ids
    response_ids = tok(" " + rows[0]["response"], add_special_tokens=False).input_ids
    first = examples[0]
    assert first["input_ids"] == [tok.bos_token_id] + prompt_ids + response_ids + [tok.eos_token_id]
    assert first["labels"] == [IGNORE_INDEX] * (1 + len(prompt_ids)) + response_ids + [tok.eos_token_id]
    assert summary.kept == 2 and summary.truncated_prompts == summary.truncated_responses == 0

    batch = collate_sft(examples, tok.pad_token_id)
    ids, mask, labels = batch["input_ids"], batch["attention_mask"], batch["labels"]
    assert ids.shape == mask.shape == labels.shape == (2, max(len(e["input_ids"]) for e in examples))
    assert (labels[mask == 0] == IGNORE_INDEX).all()             # pads are not learned
    assert (ids[mask == 0] == tok.pad_token_id).all()
    for b, example in enumerate(examples):
        eos_at = len(example["input_ids"]) - 1
        assert ids[b, eos_at] == tok.eos_token_id
        assert mask[b, eos_at] == 1 and labels[b, eos_at] == tok.eos_token_id
        assert ids[b, 0] == tok.bos_token_id and labels[b, 0] == IGNORE_INDEX


def test_long_prompt_is_cut_from_the_left(tiny_tokenizer):
    tok = tiny_tokenizer
    long_prompt = "Human: " + "Can you help me write a poem? " * 10 + "Assistant:"
    examples, summary = encode_sft([row(prompt=long_prompt), row(prompt="Human: Hi! Assistant:")],
                                   tok, max_length=40, max_prompt_length=12)
    ids = examples[0]["input_ids"]
    full = tok(long_prompt, add_special_tokens=False).input_ids
    n_prompt = sum(label == IGNORE_INDEX for label in examples[0]["labels"])
    assert n_prompt == 12 and ids[0] == tok.bos_token_id
    assert ids[1:n_prompt] == full[-11:]                          # the last 11 prompt tokens
    assert tok.decode(ids[1:n_prompt]).endswith("? Assistant:")   # the end of the prompt survives
    assert "Human" not in tok.decode(ids[:n_prompt])              # its start does not
    assert summary.truncated_prompts == 1 and summary.truncated_responses == 0
    assert "1 prompts were cut" in format_summary(summary)
    assert encode_prompts([row(prompt=long_prompt)], tok, 12)[0] == ids[:n_prompt]


def test_long_response_is_cut_on_the_right_without_eos(tiny_tokenizer):
    tok = tiny_tokenizer
    long = "Put the egg in boiling water for eight minutes. " * 5
    examples, summary = encode_sft([row(response=long)], tok, max_length=20, max_prompt_length=10)
    ids = examples[0]["input_ids"]
    assert len(ids) == 20 and tok.eos_token_id not in ids
    assert ids[10:] == tok(" " + long, add_special_tokens=False).input_ids[:10]
    assert summary.truncated_responses == 1 and summary.max_tokens == 20


def test_every_row_too_long_raises(tiny_tokenizer):
    with pytest.raises(DataError, match="every row is too long for max_length=6"):
        encode_sft([row(), row()], tiny_tokenizer, max_length=6, max_prompt_length=6)
    with pytest.raises(DataError, match="every row is too long for max_length=6"):
        encode_pairs([row()], tiny_tokenizer, max_length=6, max_prompt_length=6)


def test_prompt_that_tokenises_to_nothing_names_the_row(tiny_tokenizer):
    class Silent:
        """Wraps the real tokenizer but tokenises the second row's prompt to nothing."""
        pad_token_id, bos_token_id = tiny_tokenizer.pad_token_id, tiny_tokenizer.bos_token_id
        eos_token_id = tiny_tokenizer.eos_token_id

        def __call__(self, text, **kwargs):
            out = tiny_tokenizer(text, **kwargs)
            if text.startswith("Human: silent"):
                out["input_ids"] = []
            return out

    rows = [row(), row(prompt="Human: silent Assistant:")]
    with pytest.raises(DataError, match="row 1"):
        encode_sft(rows, Silent(), max_length=64, max_prompt_length=32)


def test_pad_equal_to_eos_is_refused(tiny_tokenizer):
    class SamePad:
        pad_token_id = eos_token_id = tiny_tokenizer.eos_token_id
        bos_token_id = tiny_tokenizer.bos_token_id

    with pytest.raises(ValueError, match="pad token"):
        encode_prompts([row()], SamePad(), 32)


def test_pairs_skip_rows_without_rejected_and_collate_chosen_first(tiny_tokenizer):
    tok = tiny_tokenizer
    rows = [row(chosen="Paris.", rejected="No."), row(rejected=""),
            row(chosen="It is Paris, of course.", rejected="Lyon.")]
    pairs, summary = encode_pairs(rows, tok, max_length=64, max_prompt_length=32)
    assert len(pairs) == 2 and summary.skipped == 1 and summary.kept == 2
    for pair in pairs:
        assert pair["chosen_ids"][-1] == pair["rejected_ids"][-1] == tok.eos_token_id
    batch = collate_pairs(pairs, tok.pad_token_id)
    ids, mask = batch["input_ids"], batch["attention_mask"]
    expected = [p["chosen_ids"] for p in pairs] + [p["rejected_ids"] for p in pairs]
    assert ids.shape[0] == 4
    for b, seq in enumerate(expected):
        assert ids[b, : len(seq)].tolist() == seq and mask[b].sum() == len(seq)
    assert "Paris" in tok.decode(ids[0][mask[0] == 1]) and "No." in tok.decode(ids[2][mask[2] == 1])


# ---------------------------------------------------------------------------- padding

def test_pad_right_and_left():
    seqs = [[5, 6, 7], [8]]
    ids, mask = pad_right(seqs, 0)
    assert ids.tolist() == [[5, 6, 7], [8, 0, 0]] and mask.tolist() == [[1, 1, 1], [1, 0, 0]]
    ids, mask = pad_left(seqs, 0)
    assert ids.tolist() == [[5, 6, 7], [0, 0, 8]] and mask.tolist() == [[1, 1, 1], [0, 0, 1]]
    assert ids.dtype == mask.dtype == torch.long


def test_collate_prompts_pads_on_the_left(tiny_tokenizer):
    tok = tiny_tokenizer
    prompts = encode_prompts([row(), row(prompt="Human: Thanks! Assistant:")], tok, 32)
    batch = collate_prompts(prompts, tok.pad_token_id)
    ids, mask = batch["input_ids"], batch["attention_mask"]
    short = 1 if len(prompts[1]) < len(prompts[0]) else 0
    n_pad = ids.shape[1] - len(prompts[short])
    assert n_pad > 0
    assert (ids[short, :n_pad] == tok.pad_token_id).all() and (mask[short, :n_pad] == 0).all()
    assert ids[short, n_pad:].tolist() == prompts[short] and ids[short, n_pad] == tok.bos_token_id
    assert mask[:, -1].tolist() == [1, 1]                         # every prompt ends in the last column
