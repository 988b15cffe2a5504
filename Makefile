# sessionflow: `make demo` and `make test` set up everything they need on a fresh machine.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-dev
PYTEST_WORKERS ?= 2

.PHONY: help install demo test test-fast lint format typecheck bench fuzz clean

help:
	@echo "make demo       create the virtualenv, install, run the demo"
	@echo "make test       install the dev dependencies, lint, run every test"
	@echo "make bench      benchmarks against DuckDB and Polars baselines (see bench/)"
	@echo "make lint       ruff + mypy"

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(VENV)/.installed-local: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e '.[local]'
	@touch $@

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e '.[dev]'
	@touch $@

install: $(STAMP)

demo: $(VENV)/.installed-local
	$(BIN)/sessionflow demo --dir sessionflow-demo

lint: $(STAMP)
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench
	$(BIN)/mypy

format: $(STAMP)
	$(BIN)/ruff format src tests bench
	$(BIN)/ruff check --fix src tests bench

test: $(STAMP) lint
	$(BIN)/pytest -n $(PYTEST_WORKERS) --durations=15

test-fast: $(STAMP)
	$(BIN)/pytest -n $(PYTEST_WORKERS) -m "not slow and not aws and not spark"

bench: $(STAMP)
	$(BIN)/python bench/bench_run.py --events 1000000

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis sessionflow-demo bench/out
