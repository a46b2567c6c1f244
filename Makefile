# Two commands for a fresh machine: `make demo` and `make test`.
TORCH_VERSION ?= 2.13.0
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.veil-installed

.PHONY: demo test lint install clean

$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --upgrade pip
	# torch first, pinned, so that nothing later swaps in another build
	$(BIN)/python -m pip install "torch==$(TORCH_VERSION)"
	$(BIN)/python -m pip install -e ".[dev]" "torch==$(TORCH_VERSION)"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/veil demo

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks

test: lint
	# pytest's exit code 5 means no test was collected; anything else non-zero fails
	$(BIN)/python -m pytest -q; rc=$$?; if [ $$rc -eq 5 ]; then exit 0; fi; exit $$rc

clean:
	rm -rf $(VENV) build *.egg-info src/*.egg-info
