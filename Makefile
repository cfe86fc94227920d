# Two commands do all set-up: `make run` and `make test`. Both create .venv if missing.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# Pinned so pip takes the local CPU build; a bare `torch` would pull a multi-GB CUDA build.
TORCH := torch==2.13.0

.PHONY: install run test test-slow lint bench clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q $(TORCH)
	$(BIN)/python -m pip install -q -e ".[dev,notebooks,sweep,trackers]"
	$(BIN)/python -m ipykernel install --prefix $(VENV) --name python3 >/dev/null
	touch $(STAMP)

install: $(STAMP)

run: $(STAMP)
	$(BIN)/grokinterp run

lint: $(STAMP)
	$(BIN)/ruff check grokinterp tests benchmarks
	$(BIN)/ruff format --check grokinterp tests benchmarks
	$(BIN)/lint-imports

test: lint
	$(BIN)/python -m pytest -q

test-slow: $(STAMP)
	$(BIN)/python -m pytest -q -m slow

bench: $(STAMP)
	$(BIN)/python benchmarks/run_all.py

clean:
	rm -rf $(VENV) .pytest_cache
