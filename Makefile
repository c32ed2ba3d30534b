# mailfleet — one entry point for every chore. `make demo` and `make test` work on a fresh
# machine with Python 3.11 and pip: both install into .venv first.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

.PHONY: install test unit lint crds docs demo bench chart manifests images clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

lint: install
	$(BIN)/ruff check .
	$(BIN)/mypy
	$(BIN)/lint-imports

test: install lint
	$(PY) -m pytest -q

unit: install
	$(PY) -m pytest -q tests/unit

crds: install
	$(BIN)/mailfleet crds --output-dir crds

docs: install
	$(BIN)/mailfleet docs > docs/api-reference.md

demo: install
	$(PY) -m mailfleet_sandbox.demo

bench: install
	$(PY) bench/apiserver.py
	$(PY) bench/sender_throughput.py

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
