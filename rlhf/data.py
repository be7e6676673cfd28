"""Reading, validating, splitting, encoding and collating the RLHF data.

A data file is JSON Lines (one object a line) or one JSON array of objects. Each row has
`prompt` ("Human: ... Assistant:"), `response` (the SFT target) and a preference pair `chosen` /
`rejected`; extra keys are dropped. Every row is checked before any is returned, and each
problem raises `DataError` naming the file, the line (or array element) and the field.

A token sequence is `[bos] + prompt_ids + response_ids + [eos]`, where the response is tokenised
as " " + text. Prompts too long are cut from the LEFT (the "Assistant:" end is what the model
must continue from); responses too long are cut from the right and then lose their EOS.
rlhf.chat.CHAT_TEMPLATE renders chat messages in exactly this format, so
`tokenizer.apply_chat_template` (and `transformers.pipeline` with messages) gives the ids the
models were trained on.
"""
from __future__ import annotations

import codecs
import json
import random
from dataclasses import dataclass
from pathlib import Path

import torch

from . import chat

FIELDS = ("prompt", "response", "chosen", "rejected")
# Fields that must hold text (not just whitespace). In eval data `rejected` may be empty:
# such a row has a prompt and a response but no preference pair.
NON_EMPTY = {"train": FIELDS, "eval": ("prompt", "response", "chosen")}
IGNORE_INDEX = -100  # label of positions the loss skips (torch cross_entropy's default)


class DataError(ValueError):
    """The data is unusable; the message names the file, the line and the field."""


# ---------------------------------------------------------------------------- reading files

def _read_text(path: Path) -> str:
    """The file as text; non-UTF-8 bytes raise DataError naming their line."""
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    raw = path.read_bytes()
    if raw.startswith(codecs.BOM_UTF8):
        raw = raw[len(codecs.BOM_UTF8):]
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as err:
        line = raw[:err.start].count(b"\n") + 1
        raise DataError(f"{path}, line {line}: not UTF-8 (byte {raw[err.start]:#04x} "
                        f"at byte offset {err.start})") from None


def _parse(path: Path, text: str) -> list[tuple[str, object]]:
    """(where, value) for each record: JSON Lines, or one JSON array if the text starts with '['."""
    if text.lstrip().startswith("["):
        try:
            items = json.loads(text)
        except json.JSONDecodeError as err:
            raise DataError(f"{path}, line {err.lineno}: invalid JSON (read as one array): "
                            f"{err.msg} at column {err.colno}") from None
        return [(f"{path}, element [{i}]", item) for i, item in enumerate(items)]
    records = []
    for number, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue  # blank lines are allowed anywhere
        try:
            records.append((f"{path}, line {number}", json.loads(line)))
        except json.JSONDecodeError as err:
            raise DataError(f"{path}, line {number}: invalid JSON: {err.msg} "
                            f"at column {err.colno}") from None
    return records


def _check_row(where: str, row: object, kind: str) -> dict:
    """The row's four fields, after checking type, presence, emptiness and the prompt's form."""
    if not isinstance(row, dict):
        raise DataError(f"{where}: expected a JSON object, got {type(row).__name__}")
    for name in FIELDS:
        if name not in row:
            raise DataError(f"{where}: missing field {name!r}")
        if not isinstance(row[name], str):
            raise DataError(f"{where}: field {name!r} must be a string, "
                            f"got {type(row[name]).__name__}")
        if name in NON_EMPTY[kind] and not row[name].strip():
            raise DataError(f"{where}: field {name!r} is empty ({kind} rows need it)")
    prompt = row["prompt"].strip()
    if not (prompt.startswith("Human:") and prompt.endswith("Assistant:")):
        raise DataError(f"{where}: field 'prompt' must start with 'Human:' and end with "
                        f"'Assistant:', got {_clip(row['prompt'])!r}")
    return {name: row[name] for name in FIELDS}


def _clip(text: str, n: int = 60) -> str:
    return text if len(text) <= n else text[:n] + "..."


def load_rows(path, kind: str = "train") -> list[dict]:
    """All rows of one data file, each a dict of the four FIELDS; raises DataError on any fault.

    kind: "train" (every field non-empty) or "eval" (`rejected` may be empty: no pair).
    """
    if kind not in NON_EMPTY:
        raise ValueError(f"kind must be one of {sorted(NON_EMPTY)}, got {kind!r}")
    path = Path(path)
    records = _parse(path, _read_text(path))
    if not records:
        raise DataError(f"{path}: the file holds no rows (empty or blank lines only)")
    return [_check_row(where, row, kind) for where, row in records]


def load_dataset_dir(data_dir, max_eval_rows: int = 0) -> tuple[list[dict], list[dict]]:
    """(train rows, eval rows) from data_dir/train.json and data_dir/eval.json.

    max_eval_rows > 0 keeps only the first that many eval rows (all are still validated).
    """
    folder = Path(data_dir)
    missing = [name for name in ("train.json", "eval.json") if not (folder / name).is_file()]
    if missing:
        raise DataError(f"{folder}: dataset folder is missing {' and '.join(missing)}")
    train = load_rows(folder / "train.json", kind="train")
    evals = load_rows(folder / "eval.json", kind="eval")
    return train, (evals[:max_eval_rows] if max_eval_rows > 0 else evals)


def split_rows(rows: list, split=(2, 4, 4), seed: int = 42) -> dict[str, list]:
    """Shuffle with `seed`, then cut into actor / critic / rlhf parts in the ratio `split`.

    Part k ends at floor(n * (s_0 + ... + s_k) / sum(s)), so the parts cover every row once and
    a share of 0 gives an empty part.
    """
    if len(split) != 3 or any(s < 0 for s in split) or sum(split) <= 0:
        raise ValueError(f"split must be three non-negative shares, got {split!r}")
    order = list(range(len(rows)))
    random.Random(seed).shuffle(order)
    total, cumulative, bounds = sum(split), 0, [0]
    for share in split:
        cumulative += share
        bounds.append(int(len(rows) * cumulative / total))
    bounds[-1] = len(rows)  # guard against float round-off with fractional shares
    parts = [[rows[i] for i in order[a:b]] for a, b in zip(bounds, bounds[1:])]
    return dict(zip(("actor", "critic", "rlhf"), parts))


# ---------------------------------------------------------------------------- encoding

@dataclass
class EncodeSummary:
    """What encoding did to the rows; `format_summary` prints it."""
    what: str                     # "SFT examples" or "preference pairs"
    rows: int                     # rows given
    max_length: int               # the limits they were encoded under
    max_prompt_length: int
    kept: int = 0                 # examples (or pairs) produced
    skipped: int = 0              # rows dropped: no pair, or no response token fits
    truncated_prompts: int = 0    # rows whose prompt was cut from the left
    truncated_responses: int = 0  # responses cut on the right (these lose their EOS)
    truncated_rows: int = 0       # rows that lost anything to truncation
    mean_tokens: float = 0.0      # mean length of the sequences kept
    max_tokens: int = 0           # longest sequence kept


def format_summary(s: EncodeSummary) -> str:
    return (f"{s.kept} {s.what} from {s.rows} rows ({s.skipped} skipped). "
            f"{s.truncated_prompts} prompts were cut from the left to {s.max_prompt_length} "
            f"tokens and {s.truncated_responses} responses cut on the right to fit "
            f"{s.max_length} tokens. Sequence length: mean {s.mean_tokens:.1f}, "
            f"max {s.max_tokens} tokens.")


def _special_ids(tokenizer) -> tuple[list[int], int]:
    """([bos] or [], eos); raises unless there is an EOS and a pad token distinct from it."""
    eos, pad = tokenizer.eos_token_id, tokenizer.pad_token_id
    if eos is None:
        raise ValueError("the tokenizer has no EOS token; responses could never end")
    if pad is None or pad == eos:
        raise ValueError(f"the tokenizer's pad token id ({pad}) must exist and differ from EOS "
                         f"({eos}); call rlhf.models.ensure_pad_token(tokenizer, model) first")
    bos = tokenizer.bos_token_id
    return ([] if bos is None else [bos]), eos


def prompt_to_ids(tokenizer, prompt: str, max_prompt_length: int, where: str = "prompt"):
    """(bos + prompt ids, was_truncated); only the prompt's last tokens are kept if it is too long."""
    bos, _ = _special_ids(tokenizer)
    if chat.uses_builtin_template(tokenizer):
        ids = tokenizer(prompt, add_special_tokens=False).input_ids
    else:  # a hub model's own chat template (rlhf/chat.py): it places any BOS itself
        bos, ids = [], chat.prompt_ids(tokenizer, prompt)
    if not ids:
        raise DataError(f"{where}: the prompt tokenises to no tokens: {_clip(prompt)!r}")
    room = max_prompt_length - len(bos)
    if room < 1:
        raise ValueError(f"max_prompt_length={max_prompt_length} leaves no room after the BOS")
    return bos + ids[-room:], len(ids) > room


def build_sequence(tokenizer, prompt_ids: list[int], response_text: str, max_length: int):
    """(prompt_ids + response ids + [eos], n_response, was_truncated), at most max_length long.

    The response is tokenised as " " + response_text; if it must be cut, the EOS goes too.
    n_response counts the response tokens kept, EOS included.
    """
    _, eos = _special_ids(tokenizer)
    if chat.uses_builtin_template(tokenizer):
        response = tokenizer(" " + response_text, add_special_tokens=False).input_ids + [eos]
    else:  # the answer as a hub model's own chat template renders it, then EOS (rlhf/chat.py)
        response = chat.response_ids(tokenizer, response_text)
    kept = response[:max(max_length - len(prompt_ids), 0)]
    return prompt_ids + kept, len(kept), len(kept) < len(response)


def _finish(summary: EncodeSummary, seqs: list[list[int]], could_keep: bool) -> EncodeSummary:
    """Fill in the length statistics; raise if rows were given but none fit."""
    if could_keep and summary.kept == 0:
        raise DataError(f"every row is too long for max_length={summary.max_length}: no "
                        f"response token fits after a prompt of up to "
                        f"max_prompt_length={summary.max_prompt_length} tokens")
    if summary.rows - summary.skipped > 1 and summary.truncated_rows >= summary.rows - summary.skipped:
        raise DataError(f"every one of the {summary.rows} rows is too long for "
                        f"max_length={summary.max_length} / max_prompt_length="
                        f"{summary.max_prompt_length} tokens: raise DataConfig.max_length or "
                        "shorten the data")
    lengths = [len(s) for s in seqs] or [0]
    summary.mean_tokens, summary.max_tokens = sum(lengths) / len(lengths), max(lengths)
    return summary


def encode_sft(rows, tokenizer, max_length: int, max_prompt_length: int):
    """(examples, summary); each example is dict(input_ids, labels), labels -100 on bos+prompt.

    The response tokens and the EOS keep their ids as labels, so the model also learns to stop.
    """
    summary = EncodeSummary("SFT examples", len(rows), max_length, max_prompt_length)
    examples = []
    for i, row in enumerate(rows):
        prompt_ids, cut = prompt_to_ids(tokenizer, row["prompt"], max_prompt_length, f"row {i}")
        ids, n_response, cut_response = build_sequence(tokenizer, prompt_ids, row["response"],
                                                       max_length)
        summary.truncated_prompts += cut
        summary.truncated_responses += cut_response
        summary.truncated_rows += bool(cut or cut_response)
        if n_response == 0:
            summary.skipped += 1  # nothing left to learn from
            continue
        labels = [IGNORE_INDEX] * len(prompt_ids) + ids[len(prompt_ids):]
        examples.append(dict(input_ids=ids, labels=labels))
    summary.kept = len(examples)
    return examples, _finish(summary, [e["input_ids"] for e in examples], bool(rows))


def encode_pairs(rows, tokenizer, max_length: int, max_prompt_length: int):
    """(pairs, summary); each pair is dict(chosen_ids, rejected_ids), built like SFT sequences.

    Rows with an empty `rejected` (allowed in eval data) have no pair and are skipped.
    """
    summary = EncodeSummary("preference pairs", len(rows), max_length, max_prompt_length)
    pairs = []
    for i, row in enumerate(rows):
        if not row["rejected"].strip():
            summary.skipped += 1
            continue
        prompt_ids, cut = prompt_to_ids(tokenizer, row["prompt"], max_prompt_length, f"row {i}")
        chosen, n_c, cut_c = build_sequence(tokenizer, prompt_ids, row["chosen"], max_length)
        rejected, n_r, cut_r = build_sequence(tokenizer, prompt_ids, row["rejected"], max_length)
        summary.truncated_prompts += cut
        summary.truncated_responses += cut_c + cut_r
        summary.truncated_rows += bool(cut or cut_c or cut_r)
        if n_c == 0 or n_r == 0:
            summary.skipped += 1
            continue
        pairs.append(dict(chosen_ids=chosen, rejected_ids=rejected))
    summary.kept = len(pairs)
    seqs = [p["chosen_ids"] for p in pairs] + [p["rejected_ids"] for p in pairs]
    return pairs, _finish(summary, seqs, any(r["rejected"].strip() for r in rows))


def encode_prompts(rows, tokenizer, max_prompt_length: int) -> list[list[int]]:
    """bos + prompt ids of each row, cut from the left to max_prompt_length: the input of generation."""
    return [prompt_to_ids(tokenizer, row["prompt"], max_prompt_length, f"row {i}")[0]
            for i, row in enumerate(rows)]


# ---------------------------------------------------------------------------- collating

def _pad(seqs, value: int, left: bool):
    """(ids, attention_mask), both (B, T) long, T the longest sequence; pads on one side."""
    if not seqs:
        raise ValueError("cannot pad an empty batch")
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), value, dtype=torch.long)      # (B, T)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)           # (B, T)
    for row, seq in enumerate(seqs):
        start = width - len(seq) if left else 0
        ids[row, start:start + len(seq)] = torch.tensor(seq, dtype=torch.long)
        mask[row, start:start + len(seq)] = 1
    return ids, mask


def pad_right(seqs, pad_id: int):
    """(ids, attention_mask) (B, T) with pads after each sequence: for training and scoring."""
    return _pad(seqs, pad_id, left=False)


def pad_left(seqs, pad_id: int):
    """(ids, attention_mask) (B, T) with pads before each sequence: for generation."""
    return _pad(seqs, pad_id, left=True)


def collate_sft(examples, pad_id: int) -> dict:
    """Right-padded SFT batch: input_ids, attention_mask, labels, all (B, T); labels -100 on pads."""
    ids, mask = pad_right([e["input_ids"] for e in examples], pad_id)
    labels, _ = pad_right([e["labels"] for e in examples], IGNORE_INDEX)
    return dict(input_ids=ids, attention_mask=mask, labels=labels)


def collate_pairs(pairs, pad_id: int) -> dict:
    """One right-padded batch of 2B rows: the B chosen first, then the B rejected in the same
    order, so row i and row B + i are a pair and the reward model scores all in one pass."""
    seqs = [p["chosen_ids"] for p in pairs] + [p["rejected_ids"] for p in pairs]
    ids, mask = pad_right(seqs, pad_id)  # (2B, T)
    return dict(input_ids=ids, attention_mask=mask)


def collate_prompts(prompt_ids_list, pad_id: int, device=None) -> dict:
    """Left-padded prompts (B, P), so every prompt ends at the last column and generation
    continues all of them from the same position; on `device` when given."""
    ids, mask = pad_left(prompt_ids_list, pad_id)
    return dict(input_ids=ids.to(device), attention_mask=mask.to(device)) if device is not None \
        else dict(input_ids=ids, attention_mask=mask)


def token_table(tokens, width: int = 10, **rows) -> str:
    """Tokens and, under each, its value in every row (labels, position ids, ...), in aligned
    columns, `width` tokens a block:  token_table(["<s>", "Hi"], label=[-100, 7])."""
    lines = []
    names = ["token", *rows]
    for start in range(0, len(tokens), width):
        cells = [[repr(t) for t in tokens[start:start + width]]]
        cells += [[str(v) for v in values[start:start + width]] for values in rows.values()]
        widths = [max(len(column[i]) for column in cells) for i in range(len(cells[0]))]
        pad = max(map(len, names))
        for name, column in zip(names, cells):
            lines.append(f"{name:<{pad}}  " + " ".join(f"{c:>{w}}" for c, w in zip(column, widths)))
        lines.append("")
    return "\n".join(lines).rstrip("\n")

