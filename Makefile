# A fresh machine has Python, git and make: everything else is installed here, inside the checkout.
SHELL := /bin/bash
PYTHON ?= python3
TOOLS := .tools
UV := $(TOOLS)/uv/bin/uv
UV_VERSION := 0.13.9
VENV := .venv
RUN := $(UV) run --frozen

.PHONY: help setup azurite lint typecheck test test-fast demo bench bench-quick emulator-config clean

help:
	@echo "make demo   - install what is needed, then run the whole pipeline against the local sandbox"
	@echo "make test   - install what is needed, then run ruff, mypy and the whole test suite"

$(UV):
	$(PYTHON) -m venv $(TOOLS)/uv
	$(TOOLS)/uv/bin/pip install --quiet --disable-pip-version-check "uv==$(UV_VERSION)"

$(VENV)/.synced: $(UV) uv.lock pyproject.toml libs/common/pyproject.toml services/*/pyproject.toml sandbox/pyproject.toml
	$(UV) sync --frozen --python $(PYTHON)
	@touch $@

setup: $(VENV)/.synced

# Azurite (npm) for the blob checkpoint tests; the test fixture starts it on a free loopback port.
azurite:
	bash scripts/azurite.sh install

lint: setup
	$(RUN) ruff check .
	$(RUN) ruff format --check .

typecheck: setup
	$(RUN) mypy

test: lint typecheck azurite
	$(RUN) pytest

test-fast: setup
	$(RUN) pytest -x -q

demo: setup
	$(RUN) tibridge demo $(DEMO_ARGS)

# Every scenario against a fresh sandbox each, into bench/results/ (see bench/README.md); BENCH_ARGS adds
# e.g. --timeout 3600 or --note "what else ran on the machine".
bench: setup
	$(RUN) python -m bench --plan full $(BENCH_ARGS)

bench-quick: setup
	$(RUN) python -m bench --plan quick $(BENCH_ARGS)

emulator-config: setup
	$(RUN) tibridge topology emulator-config > servicebus/config.json

clean:
	rm -rf $(VENV) $(TOOLS) .mypy_cache .ruff_cache .pytest_cache
