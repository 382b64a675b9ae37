# Two entry points for a fresh machine (see README): `make demo` and `make test`.
# Each creates .venv (unless one is already active) and installs what it needs.
PYTHON ?= python3
# The CPU build of torch on our machines; elsewhere any torch >= 2.4 (e.g. TORCH_SPEC=torch for CUDA).
TORCH_SPEC ?= torch==2.13.0
OUT ?= demo_out

ifdef VIRTUAL_ENV
  VENV := $(VIRTUAL_ENV)
else
  VENV := .venv
endif
BIN := $(VENV)/bin
STAMP := $(VENV)/.avatar-installed

.PHONY: install demo test test-all bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --upgrade pip
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/python -m pip install "$(TORCH_SPEC)"
	$(BIN)/python -m pip install -e ".[test]"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/avatar demo -o $(OUT)

test: $(STAMP)
	$(BIN)/python -m pytest -q

test-all: $(STAMP)
	$(BIN)/python -m pytest -q -m ""

bench: $(STAMP)
	for b in bench/bench_*.py; do $(BIN)/python $$b || exit 1; done

clean:
	rm -rf $(OUT) .pytest_cache
