"""Every config field from outside: `stage.field=value` overrides, and command-line flags.

    make run SET="ppo.lora_rank=8 actor.epochs=1 data.split=5,3,2"

`parse_overrides` turns such text into {stage: {field: value}}, each value converted to the
type the dataclass declares; an unknown stage, an unknown field or a value of the wrong type is
a ConfigError naming it, raised before anything runs. `add_config_flags` generates one argparse
flag per field (`--ppo.lora_rank 8`), with the comment written next to the field as its help,
and `flags_to_overrides` turns the parsed flags back into the same text.
"""
from __future__ import annotations

import argparse
import ast
import inspect
import re
import shlex
from dataclasses import MISSING, fields

from .config import STAGES, ConfigError, make_config

_TRUE, _FALSE = {"true", "1", "yes", "on"}, {"false", "0", "no", "off"}


def field_help(cls) -> dict[str, str]:
    """{field: the comment written after it in the dataclass source}: the documented help."""
    try:
        source = inspect.getsource(cls)
    except (OSError, TypeError):
        return {}
    found = re.findall(r"^\s+(\w+):[^=\n]+=.*?#\s*(.+)$", source, flags=re.MULTILINE)
    return {name: text.strip() for name, text in found}


def convert(stage: str, name: str, text: str, default):
    """`text` as the type of `default` (bool, int, float, str, tuple of numbers)."""
    where = f"{stage}.{name}"
    kind = type(default)
    try:
        if kind is bool:
            word = text.strip().lower()
            if word not in _TRUE | _FALSE:
                raise ValueError
            return word in _TRUE
        if kind is int:
            return int(text)
        if kind is float:
            return float(text)
        if kind is tuple:
            parts = [p for p in text.strip("()[] ").split(",") if p.strip()]
            return tuple(ast.literal_eval(p.strip()) for p in parts)
        return text
    except (ValueError, SyntaxError):
        raise ConfigError(f"{where} takes {kind.__name__} (default {default!r}), got {text!r}") from None


def _default(cls, name):
    for f in fields(cls):
        if f.name == name:
            return f.default if f.default is not MISSING else f.default_factory()
    return None


def parse_overrides(text) -> dict[str, dict]:
    """{stage: {field: typed value}} from "stage.field=value ..." (a string or a list of items)."""
    items = shlex.split(text) if isinstance(text, str) else [str(t) for t in (text or [])]
    result: dict[str, dict] = {}
    for item in items:
        key, sep, value = item.partition("=")
        stage, dot, name = key.strip().partition(".")
        if not sep or not dot:
            raise ConfigError(f"override {item!r}: expected stage.field=value, e.g. ppo.lora_rank=8")
        if stage not in STAGES:
            raise ConfigError(f"override {item!r}: unknown stage {stage!r}; stages are {sorted(STAGES)}")
        cls = STAGES[stage]
        if name not in {f.name for f in fields(cls)}:
            raise ConfigError(f"override {item!r}: {cls.__name__} has no field {name!r}; its fields are "
                              f"{[f.name for f in fields(cls)]}")
        result.setdefault(stage, {})[name] = convert(stage, name, value, _default(cls, name))
    return result


def stage_overrides(text, stage: str) -> dict:
    """The typed overrides of one stage (an empty dict when there are none)."""
    return parse_overrides(text).get(stage, {})


def check_overrides(text, preset: str | None = None) -> dict[str, dict]:
    """Parse, and with a concrete preset also build every stage's config, so an out-of-range value
    fails now (ConfigError naming the field), not halfway through the pipeline."""
    parsed = parse_overrides(text)
    if preset and preset != "auto":
        for stage, values in parsed.items():
            make_config(stage, preset, **values)
    return parsed


def add_config_flags(parser: argparse.ArgumentParser) -> None:
    """One flag per config field, `--stage.field VALUE`, its help the field's comment."""
    for stage, cls in STAGES.items():
        group = parser.add_argument_group(f"{stage} ({cls.__name__})", (cls.__doc__ or "").strip())
        helps = field_help(cls)
        for f in fields(cls):
            default = _default(cls, f.name)
            group.add_argument(f"--{stage}.{f.name}", dest=f"set:{stage}.{f.name}", default=None,
                               metavar=type(default).__name__.upper(),
                               help=f"{helps.get(f.name, '')} (default {default!r})".replace("%", "%%"))


def flags_to_overrides(args: argparse.Namespace) -> list[str]:
    """The config flags that were given, as stage.field=value items."""
    return [f"{key[4:]}={value}" for key, value in vars(args).items()
            if key.startswith("set:") and value is not None]
