# mitoseg: `make demo` then `make test` on a fresh machine.
PYTHON ?= python3
VENV ?= .venv
# The CPU build of PyTorch; override for GPUs, e.g. `make install TORCH="torch==2.13.0 --index-url ..."`.
TORCH ?= torch==2.13.0
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
LUCCHI ?= ../shared/data/lucchi_pp
# Volume size (Gvox) of the decoder and metric benchmarks; BENCHMARKS.md lists the larger runs.
BENCH_GVOX ?= 0.05
# pytest-xdist workers of `make test` / `make test-all`, one test file each at a time
# (TEST_WORKERS=0: one process).
TEST_WORKERS ?= 2
PYTEST := $(BIN)/python -m pytest -n $(TEST_WORKERS) --dist loadfile

.PHONY: help install demo test test-all lint bench bench-accuracy bench-ablation clean

help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-10s %s\n", $$1, $$2}'

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet $(TORCH)
	$(BIN)/python -m pip install --quiet -e '.[dev,napari,bioimage]'
	touch $(STAMP)

install: $(STAMP)  ## create .venv and install torch (CPU) and mitoseg with its test tools

demo: install  ## train briefly on synthetic data, tile-predict, evaluate, print the scores
	$(BIN)/mitoseg-train experiment=demo hydra.run.dir=outputs/demo overwrite=true

test: install  ## the default test suite (no `slow` tests), on TEST_WORKERS processes
	$(PYTEST)

test-all: install  ## every test, the slow ones too
	$(PYTEST) -m ""

lint: install  ## ruff check and format check
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks

bench: install  ## benchmarks (see BENCHMARKS.md)
	$(BIN)/python benchmarks/postprocess_speed.py
	$(BIN)/python benchmarks/convert_memory.py --data $(LUCCHI)
	$(BIN)/python benchmarks/decode_speed.py --sizes $(BENCH_GVOX) --baseline-max-gvox $(BENCH_GVOX)
	$(BIN)/python benchmarks/metrics_speed.py --sizes $(BENCH_GVOX) --baseline-max-gvox $(BENCH_GVOX)
	$(BIN)/python benchmarks/predict_scale.py --sizes $(BENCH_GVOX) --monai-max-gvox $(BENCH_GVOX) --nets conv lucchipp_cpu --repeats 1
	$(BIN)/python benchmarks/testtime_memory.py --sizes 0.01 $(BENCH_GVOX)
	$(BIN)/python benchmarks/blockwise_scale.py --sizes $(BENCH_GVOX) --stages decode evaluate
	$(BIN)/python benchmarks/step_time.py --compile

bench-accuracy: install  ## Lucchi++: lucchipp_cpu vs plain MONAI, 60 min each, then studies (~2.5 h)
	$(BIN)/python benchmarks/lucchipp_budget.py --root $(LUCCHI) --minutes 60
	$(BIN)/python benchmarks/lucchipp_studies.py .bench/lucchipp_budget/ours --root $(LUCCHI)

bench-ablation: install  ## Lucchi++ training levers: one multirun, 7 min per arm, validation only (~3 h)
	$(BIN)/python benchmarks/lucchipp_ablation.py --root $(LUCCHI) --minutes 7

clean:  ## remove outputs and caches (not the venv)
	rm -rf outputs multirun data_cache .pytest_cache .ruff_cache
