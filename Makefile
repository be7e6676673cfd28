# Two commands on a fresh machine:  make run   (train everything)   and   make test
PYTHON ?= python3
VENV   ?= .venv
PRESET ?= auto
# MODEL: a hub id instead of the preset's base model (notebook 0), e.g. facebook/opt-350m
MODEL  ?=
DATA   ?= dataset
# A CPU machine gets the CPU build of this torch (a GPU machine the CUDA one); a torch that is
# already in the environment (Colab's, say) is kept.
TORCH  ?= torch==2.13.0
BIN     = $(VENV)/bin

.PHONY: run test faults bench notebooks dataset clean

$(BIN)/.installed: requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/pip install -q "$(TORCH)"
	$(BIN)/pip install -q -r requirements.txt
	touch $@

run: $(BIN)/.installed
	$(BIN)/python tools/run_pipeline.py --preset $(PRESET) --data $(DATA) --model "$(strip $(MODEL))"

test: $(BIN)/.installed
	$(BIN)/python -m pytest -q tests

faults: $(BIN)/.installed
	$(BIN)/python -m pytest -q tests/test_faults.py; status=$$?; $(BIN)/python tools/fault_report.py; exit $$status

# the comparison with TRL (bench/README.md): each side's defaults, then both bf16, then both fp32
BENCH_ARGS ?= --precision default bf16 fp32
bench: $(BIN)/.installed
	bash bench/setup_trl.sh
	$(BIN)/python bench/run.py $(BENCH_ARGS)

notebooks: $(BIN)/.installed
	$(BIN)/python tools/build_notebooks.py

dataset:
	$(PYTHON) dataset/make_dataset.py

clean:
	rm -rf model tokenizer runs
