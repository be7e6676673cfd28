"""Model cards for the checkpoint folders, and the one optional push to the Hugging Face Hub.

`save_checkpoint` writes README.md into every model folder it saves (model/base, actor, critic,
rlhf): the base model, the data, the stage config, the metrics, and how to load the folder with
`transformers.pipeline`. `push_to_hub(folder, repo_id)` uploads a folder, or says why it did not
(no repo id, offline, not logged in) and returns None.
"""
from __future__ import annotations

import json
import numbers
from dataclasses import is_dataclass
from pathlib import Path

from .config import config_to_dict
from .hub import hub_reachable

ABOUT = {
    "base": ("the base model", "text-generation",
             "The starting point: a hub model, or (offline) a small OPT with random weights and a "
             "byte-level BPE trained on the data."),
    "actor": ("the SFT model (actor)", "text-generation",
              "Supervised fine-tuning on the `response` demonstrations (stage 1)."),
    "critic": ("the reward model (critic)", "text-classification",
               "A reward model trained on `chosen` / `rejected` pairs with the pairwise loss "
               "-log sigmoid(r_chosen - r_rejected) (stage 2); its score is read at the last token."),
    "rlhf": ("the RLHF policy", "text-generation",
             "The SFT model after PPO against the reward model, with a per-token KL penalty to the "
             "SFT model (stage 3)."),
}


def _scalars(metrics: dict, prefix: str = "") -> list[tuple[str, object]]:
    """The numbers and strings of `metrics`, one level of nesting flattened ("last.kl")."""
    rows = []
    for key, value in (metrics or {}).items():
        if isinstance(value, dict) and not prefix:
            rows += _scalars(value, f"{key}.")
        elif isinstance(value, (numbers.Number, str)) and not isinstance(value, bool):
            rows.append((prefix + key, value))
    return rows


def _base_of(folder: Path, configs) -> str:
    """The base model: BaseConfig.model_name in stage 0, else what model/base recorded."""
    base = next((c for c in configs if type(c).__name__ == "BaseConfig"), None)
    record = folder.parent / "base" / "metrics.json"
    if base is None and record.is_file():
        return json.loads(record.read_text()).get("source", "unknown")
    return f"hub:{base.model_name}" if base is not None and base.use_hub else "fallback:tiny-opt"


def usage(stage: str, repo: str) -> str:
    """How to load the folder (or Hub repo) `repo` with a pipeline."""
    if ABOUT[stage][1] == "text-classification":
        return (f'from transformers import pipeline\n\nscorer = pipeline("text-classification", model="{repo}", '
                'function_to_apply="none")\n'
                'text = "Human: What colour is a banana? Assistant: A banana is yellow."\n'
                "print(scorer(text + scorer.tokenizer.eos_token)[0][\"score\"])  # higher = preferred")
    return (f'from transformers import pipeline\n\ngenerator = pipeline("text-generation", model="{repo}")\n'
            'messages = [{"role": "user", "content": "What colour is a banana?"}]\n'
            'out = generator(messages, max_new_tokens=48, do_sample=False)\n'
            'print(out[0]["generated_text"][-1]["content"])')


def model_card(folder, stage: str, configs=(), metrics=None, repo: str | None = None) -> str:
    """The README.md text of checkpoint `folder` written by `stage`."""
    folder = Path(folder)
    title, task, about = ABOUT[stage]
    base = _base_of(folder, configs)
    data = next((c.data_dir for c in configs if type(c).__name__ == "DataConfig"), "unknown")
    front = ["---", "library_name: transformers", f"pipeline_tag: {task}", "tags: [rlhf, ppo, simple-rlhf-tiny]"]
    if base.startswith("hub:"):
        front.append(f"base_model: {base[4:]}")
    if "/" in data and not Path(data).exists():
        front.append(f"datasets: [{data}]")
    lines = front + ["---", "", f"# {folder.name}: {title}", "", about, "",
                     f"- base model: `{base}`", f"- data: `{data}`",
                     "- made by Simple RLHF Tiny (the five notebooks, `0_download` … `4_test`)", "",
                     "## Stage config", ""]
    for config in configs:
        values = config_to_dict(config) if is_dataclass(config) else {"class": type(config).__name__, **vars(config)}
        lines += [f"**{values.pop('class')}**", "", "| field | value |", "|---|---|"]
        lines += [f"| {k} | `{v!r}` |" for k, v in values.items()] + [""]
    scalars = _scalars(metrics)
    if scalars:
        lines += ["## Metrics", "", "| metric | value |", "|---|---|"]
        lines += [f"| {k} | {v:.4g} |" if isinstance(v, float) else f"| {k} | {v} |" for k, v in scalars]
        lines += ["", "All metrics, with the training history, are in `metrics.json`.", ""]
    lines += ["## How to use", "", "```python", usage(stage, repo or str(folder)), "```", "",
              "The tokenizer's chat template renders messages in the training format "
              '("Human: … Assistant: …"), so the pipeline builds the prompts the model was trained on.', ""]
    return "\n".join(lines)


def write_card(folder, stage: str, configs=(), metrics=None, out=None) -> Path | None:
    """README.md into `folder` (the checkpoint being written) for a model stage; None for others."""
    if stage not in ABOUT:
        return None
    path = Path(folder) / "README.md"
    path.write_text(model_card(out or folder, stage, configs, metrics))
    return path


def push_to_hub(folder, repo_id: str, private: bool = True, log=print, timeout_s: float = 3.0):
    """Upload checkpoint `folder` to the Hub repo `repo_id` (created if missing); returns its URL,
    or None after saying why nothing was pushed (no repo id, offline, not logged in)."""
    if not repo_id:
        log("push_to_hub: skipped (no repo id; set HUB_REPO, e.g. 'your-name/simple-rlhf-tiny')")
        return None
    ok, reason = hub_reachable(timeout_s)
    if not ok:
        log(f"push_to_hub: skipped, the Hub is unreachable ({reason}); {folder} stays local")
        return None
    from huggingface_hub import HfApi, get_token

    if get_token() is None:
        log("push_to_hub: skipped, not logged in (run `hf auth login` or set HF_TOKEN)")
        return None
    api = HfApi()
    api.create_repo(repo_id, private=private, exist_ok=True)
    (Path(folder) / "README.md").write_text(model_card(folder, _stage_of(folder), *_saved(folder), repo=repo_id))
    api.upload_folder(folder_path=str(folder), repo_id=repo_id,
                      commit_message="Upload from Simple RLHF Tiny")
    url = f"https://huggingface.co/{repo_id}"
    log(f"push_to_hub: {folder} -> {url}")
    return url


def _stage_of(folder) -> str:
    name = Path(folder).name
    return name if name in ABOUT else "rlhf"


def _saved(folder):
    """(configs, metrics) as saved in the folder, for re-rendering the card with the repo id."""
    from types import SimpleNamespace

    folder = Path(folder)
    saved = json.loads((folder / "stage_config.json").read_text()) if (folder / "stage_config.json").is_file() else {}
    metrics = json.loads((folder / "metrics.json").read_text()) if (folder / "metrics.json").is_file() else {}
    configs = [type(name, (SimpleNamespace,), {})(**{k: v for k, v in values.items() if k != "class"})
               for name, values in saved.items()]
    return configs, metrics
