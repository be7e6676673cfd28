"""Preference data from wherever it lives, mapped onto the project's four fields.

`DataConfig.data_dir` may name
  - a folder holding train.json and eval.json (the project's own format, read by rlhf/data.py),
  - a local JSON / JSON Lines (also .gz) / parquet / arrow / CSV file or folder of such files,
  - a folder written by `Dataset.save_to_disk` / `DatasetDict.save_to_disk`,
  - a Hugging Face Hub dataset id such as "Dahoas/rm-static" or "Anthropic/hh-rlhf",
and everything but the first goes through `datasets.load_dataset` (or `load_from_disk`).

Each row is then mapped onto prompt / response / chosen / rejected (`DataConfig.layout`):
  - "rm-static" (Dahoas/rm-static, DeepSpeed-Chat): the columns prompt, response, chosen,
    rejected as they are ("\\n\\nHuman: ... \\n\\nAssistant:" prompts, answers with a leading
    space); `response` falls back to `chosen` when the source has none;
  - "hh-rlhf" (Anthropic/hh-rlhf): chosen and rejected are whole transcripts; the prompt is
    everything up to the final "Assistant:" and the answers are what follows it;
  - "columns": any other layout, through DataConfig.prompt_key, chosen_key, rejected_key and
    response_key; a prompt not already in "Human: ... Assistant:" form is wrapped in it;
  - "auto" picks rm-static when there is a prompt column, hh-rlhf when there is none.
Leading and trailing whitespace of the answers is dropped: rlhf/data.py puts exactly one space
between prompt and answer, so rm-static's leading space does not become two; the turns of a
prompt are joined by single spaces, as the chat template (rlhf/chat.py) renders them.

A "test" (or "validation", "eval") split becomes the eval rows when the source has one;
otherwise the last DataConfig.eval_fraction of a seeded shuffle is held out. Every row is checked
as rlhf/data.py checks a file, and a fault raises DataError naming the source, the split, the
row and the field. A Hub id is only tried when `hub_reachable` answers within seconds.
"""
from __future__ import annotations

import random
import re
from pathlib import Path

from .chat import prompt_messages, render_prompt
from .data import DataError, _check_row, load_dataset_dir
from .hub import hub_reachable

EVAL_SPLITS = ("test", "validation", "valid", "eval")
LAYOUTS = ("auto", "rm-static", "hh-rlhf", "columns")
_LAST_ASSISTANT = re.compile(r"(?s)^(.*\bAssistant:)(.*)$")  # greedy: the final "Assistant:"


def builtin_folder(data_dir) -> bool:
    """The project's own format: a folder with train.json and eval.json (one of them is enough to
    be read as such, so that a missing one is named rather than replaced by a held-out split)."""
    folder = Path(data_dir)
    return (folder / "train.json").is_file() or (folder / "eval.json").is_file()


def _builder(path: Path) -> str:
    """The `datasets` packaged builder for a data file, from its extension (.gz ignored)."""
    suffixes = [s for s in path.suffixes if s != ".gz"]
    ext = suffixes[-1] if suffixes else ""
    builders = {".json": "json", ".jsonl": "json", ".ndjson": "json", ".parquet": "parquet",
                ".arrow": "arrow", ".csv": "csv"}
    if ext not in builders:
        raise DataError(f"{path}: cannot tell the format from {ext or 'no extension'!r}; use "
                        f"one of {sorted(builders)} (optionally .gz)")
    return builders[ext]


def open_source(data_dir: str, hub_timeout_s: float = 3.0):
    """A `datasets.DatasetDict` for a local file, folder, save_to_disk folder or Hub id."""
    import datasets

    path = Path(data_dir).expanduser()
    try:
        if path.is_dir() and ((path / "dataset_dict.json").is_file() or (path / "state.json").is_file()):
            loaded = datasets.load_from_disk(str(path))
            return loaded if isinstance(loaded, datasets.DatasetDict) else datasets.DatasetDict(train=loaded)
        if path.is_file():
            return datasets.load_dataset(_builder(path), data_files={"train": str(path)})
        if path.is_dir():
            return datasets.load_dataset(str(path))
    except DataError:
        raise
    except Exception as err:  # datasets/pyarrow report unreadable files in many error types
        raise DataError(f"{path}: cannot read it as a dataset: {type(err).__name__}: {err}") from None
    return open_hub(data_dir, hub_timeout_s)


def open_hub(dataset_id: str, hub_timeout_s: float = 3.0):
    """A Hub dataset, or DataError naming the id and why not (not a local path, offline, no access)."""
    import datasets

    if not re.fullmatch(r"[\w.-]+(/[\w.-]+)?", dataset_id):
        raise DataError(f"{dataset_id}: no such file or folder, and not a Hub dataset id")
    ok, reason = hub_reachable(hub_timeout_s)
    if not ok:
        raise DataError(f"{dataset_id}: not a local file or folder, and the Hub is unreachable "
                        f"({reason}); download it where there is internet or give a local path")
    try:
        return datasets.load_dataset(dataset_id)
    except Exception as err:  # DatasetNotFoundError, gated repos, network drops
        raise DataError(f"{dataset_id}: the Hub dataset could not be loaded "
                        f"({type(err).__name__}: {err})") from None


def detect_layout(columns, cfg) -> str:
    """The layout to map `columns` with: cfg.layout, or for "auto" the one the columns show."""
    if cfg.layout != "auto":
        return cfg.layout
    if (cfg.prompt_key, cfg.chosen_key, cfg.rejected_key, cfg.response_key) != ("prompt", "chosen", "rejected", "response"):
        return "columns"
    if {"prompt", "chosen", "rejected"} <= set(columns):
        return "rm-static"
    if {"chosen", "rejected"} <= set(columns):
        return "hh-rlhf"
    raise DataError(f"cannot tell the layout from the columns {sorted(columns)}: name them with "
                    "data.prompt_key, data.chosen_key, data.rejected_key (and data.response_key), "
                    "e.g. SET=\"data.prompt_key=question data.chosen_key=good data.rejected_key=bad\"")


def as_prompt(text: str) -> str:
    """The prompt in the training format: kept if it is a "Human: ... Assistant:" dialogue already,
    else wrapped as one user turn."""
    stripped = text.strip()
    if stripped.startswith("Human:") and stripped.endswith("Assistant:"):
        return stripped
    return f"Human: {stripped} Assistant:"


def canonical_prompt(text: str) -> str:
    """A dialogue prompt with its turns joined by single spaces ("\n\nHuman: a\n\nAssistant:"
    becomes "Human: a Assistant:"); a prompt that is no dialogue is returned stripped, for the row
    check to name."""
    try:
        return render_prompt(prompt_messages(text))
    except ValueError:
        return text.strip()


def split_transcript(text: str) -> tuple[str, str]:
    """(prompt up to and including the final "Assistant:", the final answer), from an hh-rlhf
    transcript "\\n\\nHuman: ... \\n\\nAssistant: ... \\n\\nHuman: ... \\n\\nAssistant: answer"."""
    match = _LAST_ASSISTANT.match(text)
    if not match:
        raise ValueError("it has no 'Assistant:' turn")
    return match.group(1).strip(), match.group(2).strip()


def _text(row: dict, key: str, where: str):
    if key not in row:
        raise DataError(f"{where}: missing field {key!r}")
    value = row[key]
    if not isinstance(value, str):
        raise DataError(f"{where}: field {key!r} must be a string, got {type(value).__name__}")
    return value


def map_row(row: dict, layout: str, cfg, where: str, kind: str) -> dict:
    """One source row as the four FIELDS, checked as rlhf/data.py checks a file's row."""
    if layout == "hh-rlhf":
        chosen, rejected = _text(row, cfg.chosen_key, where), _text(row, cfg.rejected_key, where)
        parts = {}
        for name, transcript in (("chosen", chosen), ("rejected", rejected)):
            try:
                parts[name] = split_transcript(transcript)
            except ValueError as err:
                raise DataError(f"{where}: field {name!r} is not an hh-rlhf transcript: {err}") from None
        if parts["chosen"][0] != parts["rejected"][0] and rejected.strip():
            raise DataError(f"{where}: fields 'chosen' and 'rejected' do not share the prompt before "
                            "their final 'Assistant:' turn")
        prompt, mapped = parts["chosen"][0], {"chosen": parts["chosen"][1], "rejected": parts["rejected"][1]}
        mapped["response"] = mapped["chosen"]
    else:
        prompt = _text(row, cfg.prompt_key, where)
        mapped = {"chosen": _text(row, cfg.chosen_key, where), "rejected": _text(row, cfg.rejected_key, where)}
        has_response = cfg.response_key and cfg.response_key in row and row[cfg.response_key] is not None
        mapped["response"] = _text(row, cfg.response_key, where) if has_response else mapped["chosen"]
        prompt = as_prompt(prompt) if layout == "columns" else prompt
    mapped = {name: text.strip() for name, text in mapped.items()}
    return _check_row(where, {"prompt": canonical_prompt(prompt), **mapped}, kind)


def map_split(dataset, layout: str, cfg, where: str, kind: str, limit: int = 0) -> list[dict]:
    """Every row of one split mapped and checked (the first `limit` only, when > 0)."""
    n = len(dataset) if not limit else min(limit, len(dataset))
    rows = [map_row(dataset[i], layout, cfg, f"{where}, row {i + 1}", kind) for i in range(n)]
    if not rows:
        raise DataError(f"{where}: the split holds no rows")
    return rows


def hold_out(rows: list, fraction: float, seed: int) -> tuple[list, list]:
    """(train, eval): the last `fraction` of a seeded shuffle is eval, at least one row each."""
    if len(rows) < 2:
        raise DataError(f"{len(rows)} row(s): too few to hold out eval rows; give a test split")
    order = list(range(len(rows)))
    random.Random(seed).shuffle(order)
    n_eval = min(max(1, round(len(rows) * fraction)), len(rows) - 1)
    return [rows[i] for i in order[:-n_eval]], [rows[i] for i in order[-n_eval:]]


def load_data(cfg) -> tuple[list[dict], list[dict]]:
    """(train rows, eval rows) of DataConfig `cfg` from any source this module reads.

    Eval rows are not cut to cfg.max_eval_rows here (the notebooks do it), as load_dataset_dir.
    """
    if cfg.layout not in LAYOUTS:
        raise DataError(f"DataConfig.layout must be one of {LAYOUTS}, got {cfg.layout!r}")
    if builtin_folder(cfg.data_dir) and cfg.layout in ("auto", "rm-static"):
        train, evals = load_dataset_dir(cfg.data_dir)
        strip = lambda row: {k: (v.strip() if k != "prompt" else v) for k, v in row.items()}
        return [strip(r) for r in train], [strip(r) for r in evals]
    splits = open_source(cfg.data_dir, getattr(cfg, "hub_timeout_s", 3.0))
    train_name = "train" if "train" in splits else next(iter(splits))
    eval_name = next((s for s in EVAL_SPLITS if s in splits and s != train_name), None)
    layout = detect_layout(splits[train_name].column_names, cfg)
    where = lambda split: f"{cfg.data_dir} [{split}]"
    train = map_split(splits[train_name], layout, cfg, where(train_name), "train", cfg.max_train_rows)
    if eval_name is None:
        return hold_out(train, cfg.eval_fraction, cfg.seed)
    return train, map_split(splits[eval_name], layout, cfg, where(eval_name), "eval")

