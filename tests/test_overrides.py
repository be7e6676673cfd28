"""rlhf/overrides.py: every config field settable as stage.field=value or --stage.field, typed,
with unknown or ill-typed fields a clear error before anything runs."""
import argparse
from dataclasses import fields

import pytest

from rlhf.config import STAGES, ConfigError
from rlhf.overrides import (add_config_flags, check_overrides, field_help, flags_to_overrides,
                            parse_overrides, stage_overrides)


def test_values_take_the_declared_type():
    parsed = parse_overrides("ppo.lora_rank=8 actor.epochs=1 actor.lr=3e-4 data.split=5,3,2 "
                             "ppo.adaptive_kl=true base.model_name=facebook/opt-350m")
    assert parsed == {"ppo": {"lora_rank": 8, "adaptive_kl": True}, "actor": {"epochs": 1, "lr": 3e-4},
                      "data": {"split": (5, 3, 2)}, "base": {"model_name": "facebook/opt-350m"}}
    assert stage_overrides("critic.init_from=actor", "critic") == {"init_from": "actor"}
    assert stage_overrides("", "critic") == {}


@pytest.mark.parametrize("text, named", [
    ("ppo.lora_rnak=8", "no field 'lora_rnak'"),
    ("pop.lora_rank=8", "unknown stage 'pop'"),
    ("ppo.lora_rank=eight", "ppo.lora_rank takes int"),
    ("ppo.adaptive_kl=maybe", "ppo.adaptive_kl takes bool"),
    ("lora_rank=8", "expected stage.field=value"),
])
def test_unknown_or_ill_typed_fields_are_named(text, named):
    with pytest.raises(ConfigError, match=named):
        parse_overrides(text)


def test_out_of_range_values_fail_before_anything_runs():
    with pytest.raises(ConfigError, match="PPOConfig.lora_rank must be >= 0"):
        check_overrides("ppo.lora_rank=-1", "ci")
    assert check_overrides("ppo.lora_rank=-1", "auto")  # the preset decides ranges; typed now


def test_every_field_has_a_flag_with_its_documented_help():
    parser = argparse.ArgumentParser()
    add_config_flags(parser)
    help_text = parser.format_help()
    for stage, cls in STAGES.items():
        helps = field_help(cls)
        for f in fields(cls):
            assert f"--{stage}.{f.name}" in help_text
            assert helps.get(f.name), f"{cls.__name__}.{f.name} has no comment to use as help"
    args = parser.parse_args(["--ppo.lora_rank", "8", "--actor.epochs", "1"])
    assert sorted(flags_to_overrides(args)) == ["actor.epochs=1", "ppo.lora_rank=8"]


def test_scripts_take_settings_and_stop_on_a_bad_one_before_anything_runs(tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    sys.path.insert(0, str(root / "tools"))
    from run_stage import stage_code

    code = stage_code("3", "ci", "dataset", overrides="ppo.lora_rank=8")
    assert code.index("SET = 'ppo.lora_rank=8'") > code.index('SET = ""')  # after the parameters cell
    for script, args in (("run_pipeline.py", ["--set", "ppo.lora_rnak=8"]),
                         ("run_stage.py", ["3", "--ppo.lora_rank", "eight"])):
        result = subprocess.run([sys.executable, str(root / "tools" / script), "--preset", "ci", *args],
                                cwd=tmp_path, capture_output=True, text=True, timeout=120)
        assert result.returncode == 2 and ("lora_rnak" in result.stderr or "ppo.lora_rank takes int" in result.stderr)
        assert "==" not in result.stdout and not (tmp_path / "model").exists()
