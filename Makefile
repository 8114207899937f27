# harmony — every target sets up .venv itself if needed (idempotent), so `make test` works on a fresh machine.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
HARMONY := $(VENV)/bin/harmony
IHARMONY4 ?= data/iHarmony4
RPHARMONY ?= data/RPHarmony
ROOT ?=
EXP ?= semi_supervised_parametric

.PHONY: help install quickstart test test-all lint format reproduce-table1 reproduce-table2 fit benchmark benchmark-real clean

help:  ## Show this help
	@grep -E '^[a-zA-Z0-9_-]+:.*?## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*?## "}; {printf "  \033[36m%-18s\033[0m %s\n", $$1, $$2}'

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	touch $@

install: $(VENV)/.installed  ## Create .venv and install harmony with its dev tools

quickstart: install  ## Train a small SemiSupervisedParametric offline on synthetic data (CPU, ~10 min) and score it
	$(HARMONY) quickstart

test: install  ## Run the default (fast, CPU, offline) test suite
	$(PY) -m pytest -q

test-all: install  ## Run every test, slow ones included
	$(PY) -m pytest -q -m ""

lint: install  ## Lint with ruff
	$(VENV)/bin/ruff check harmony tests benchmarks

format: install  ## Format with ruff
	$(VENV)/bin/ruff format harmony tests benchmarks

fit: install  ## Train an experiment: make fit EXP=semi_supervised_parametric
	$(HARMONY) fit --config experiments/$(EXP).yaml

reproduce-table1: install  ## Evaluate every available row on the iHarmony4 test split: make reproduce-table1 IHARMONY4=path
	$(PY) -m harmony.commands.reproduce_table1 --data-root $(IHARMONY4) --output-dir results

reproduce-table2: install  ## R2R's Table 2: every available row on the RPHarmony test split: make reproduce-table2 RPHARMONY=path
	$(PY) -m harmony.commands.reproduce_table1 --dataset rpharmony --data-root $(RPHARMONY) --output-dir results

benchmark: install  ## Run the benchmarks in benchmarks/ (scoring throughput, parametric model speed, start-up and 4K harmonize)
	$(PY) benchmarks/score_throughput.py
	$(PY) benchmarks/parametric_speed.py
	$(PY) benchmarks/startup.py

benchmark-real: install  ## Score training-free methods (and checkpoints) at full resolution: make benchmark-real ROOT=path
	@test -n "$(ROOT)" || { echo "make benchmark-real needs ROOT=<iHarmony4-layout root>" >&2; exit 2; }
	$(PY) benchmarks/real_composites.py --data-root $(ROOT)

clean:  ## Remove caches and outputs (keeps .venv, data and checkpoints)
	rm -rf .pytest_cache .ruff_cache lightning_logs outputs results
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
