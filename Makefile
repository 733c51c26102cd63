# Two commands for a fresh clone: `make run` (demo stack) and `make test` (the whole suite).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
DATA_DIR ?= .ftq-data
PORT ?= 8000
# The suite on one pytest process per core, at most four (each runs its own stacks of API, workers and trainers).
# A module's tests stay on one process (loadscope), so a scenario its module-scoped fixture trains runs once: split
# across processes, each ran it again (the multi-GPU scenario took 112 s and then 86 s more on 2 cores).
# PYTEST_WORKERS= (empty) runs it in one process.
PYTEST_WORKERS ?= --numprocesses=auto --maxprocesses=4 --dist=loadscope

.PHONY: install run test lint browser

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# torch==2.13.0 is pinned in the worker extra: on the dev/CI machines pip takes the local CPU wheel.
	$(BIN)/pip install -q -e '.[worker,dev]'
	touch $@

install: $(BIN)/.installed

run: install
	HF_HUB_OFFLINE=1 $(BIN)/ftq up --data-dir $(DATA_DIR) --port $(PORT) --demo

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

# The browser tests drive Debian's Chromium; install it when missing (needs root, as on the dev and CI machines).
browser:
	@command -v chromium >/dev/null 2>&1 || { export DEBIAN_FRONTEND=noninteractive; \
	  apt-get install -y -q chromium >/dev/null 2>&1 || { apt-get update -q >/dev/null && apt-get install -y -q chromium >/dev/null; }; }

test: lint browser
	HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 WANDB_MODE=offline $(BIN)/pytest $(PYTEST_WORKERS) --durations=15
