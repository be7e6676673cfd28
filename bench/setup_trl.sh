#!/usr/bin/env bash
# Builds bench/.venv-trl, the separate environment the benchmark runs TRL in.
#
#   trl 1.16.0 (current release): SFTTrainer, RewardTrainer
#   trl 1.12.0 (last release with PPO, trl.experimental.ppo.PPOTrainer): installed with --no-deps
#     into .venv-trl/trl-ppo and put first on PYTHONPATH only by the PPO measurement
# transformers, accelerate and datasets are pinned to the project's versions, so both sides run
# the very same model code and only the training loops differ.
set -euo pipefail
cd "$(dirname "$0")"
PYTHON="${PYTHON:-python3}"
VENV=.venv-trl
TORCH="${TORCH:-torch==2.13.0}"   # first and pinned: the local CPU build, not a multi-GB CUDA one
TRL="${TRL:-trl==1.16.0}"
TRL_PPO="${TRL_PPO:-trl==1.12.0}"
PINS="transformers==5.24.0 accelerate==1.15.0 datasets==5.2.0 peft==0.21.2"  # peft: the ppo_lora task

MARK="$VENV/.installed-2"  # bumped when the list of packages changes
if [ -f "$MARK" ]; then echo "$VENV is ready"; exit 0; fi
[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
"$VENV/bin/pip" install -q "$TORCH"
"$VENV/bin/pip" install -q "$TRL" $PINS psutil
"$VENV/bin/pip" install -q --no-deps --target "$VENV/trl-ppo" "$TRL_PPO"
"$VENV/bin/python" -c "import torch, transformers, trl; print('torch', torch.__version__, '| transformers', transformers.__version__, '| trl', trl.__version__)"
PYTHONPATH="$VENV/trl-ppo" "$VENV/bin/python" -c "import trl; from trl.experimental.ppo import PPOTrainer; print('trl (PPO)', trl.__version__)"
touch "$MARK"
