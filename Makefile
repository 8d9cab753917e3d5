# A fresh machine has Python, git and make: everything else is installed here, inside the checkout.
SHELL := /bin/bash
PYTHON ?= python3
TOOLS := .tools
UV := $(TOOLS)/uv/bin/uv
UV_VERSION := 0.13.9
VENV := .venv
RUN := $(UV) run --frozen

# LOG_LEVEL: checkov warns about every dependsOn it cannot resolve in a template it does not deploy.
CHECKOV := LOG_LEVEL=ERROR $(UV) run --frozen --project deploy/checkov checkov
RENDERED := .tools/rendered

.PHONY: help setup azurite lint typecheck checkov images images-if-possible test test-fast reliability demo bench bench-quick \
	emulator-config azure-template clean

help:
	@echo "make demo   - install what is needed, then run the whole pipeline against the local sandbox"
	@echo "make test   - install what is needed, then run ruff, mypy, checkov, build the images and run every test"
	@echo "make reliability - the reliability suite at full size; figures in tests/reliability/results.md"
	@echo "make images - build the five images with docker, or podman (installed and set up here when root)"

$(UV):
	$(PYTHON) -m venv $(TOOLS)/uv
	$(TOOLS)/uv/bin/pip install --quiet --disable-pip-version-check "uv==$(UV_VERSION)"

# Bytecode compiled ahead, as the images do (UV_COMPILE_BYTECODE): a process starts in half the time, also where
# PYTHONDONTWRITEBYTECODE keeps Python from caching it on first import. The project's own sources are compiled on
# every setup (unchanged files cost nothing); a stale file is still read from its source.
$(VENV)/.synced: $(UV) uv.lock pyproject.toml libs/common/pyproject.toml services/*/pyproject.toml sandbox/pyproject.toml
	$(UV) sync --frozen --compile-bytecode --python $(PYTHON)
	@touch $@

setup: $(VENV)/.synced
	@$(VENV)/bin/python -m compileall -q libs/common/src services/*/src sandbox/src src bench

# Azurite (npm) for the blob checkpoint tests; the test fixture starts it on a free loopback port.
azurite:
	bash scripts/azurite.sh install

lint: setup
	$(RUN) ruff check .
	$(RUN) ruff format --check .

typecheck: setup
	$(RUN) mypy

# checkov over the Dockerfiles, the rendered Kubernetes manifests (base and local overlay) and the ARM
# template; each skipped check is justified in a comment beside its skip. Its own environment (its pins
# would downgrade the services' dependencies in the workspace's).
checkov: setup
	$(UV) sync --frozen --quiet --project deploy/checkov
	@if command -v kubectl >/dev/null; then \
		mkdir -p $(RENDERED) && kubectl kustomize k8s/base > $(RENDERED)/base.yaml \
		&& kubectl kustomize k8s/local > $(RENDERED)/local.yaml; \
	else echo "checkov: kubectl is not installed, so the Kubernetes manifests cannot be rendered and are not checked"; fi
	$(CHECKOV) --quiet --compact --skip-download --framework dockerfile arm kubernetes \
		-f services/collector/Dockerfile -f services/scorer/Dockerfile -f services/publisher/Dockerfile \
		-f sandbox/Dockerfile -f tests/sbdouble/Dockerfile -f deploy/azure/main.json \
		$(if $(shell command -v kubectl),-f $(RENDERED)/base.yaml -f $(RENDERED)/local.yaml)

# The images (tibridge-<name>:local) with whichever engine answers; see scripts/containers.sh.
images:
	bash scripts/containers.sh images

# In `make test`: a machine that can run no container engine says why, and the container tests skip.
images-if-possible:
	bash scripts/containers.sh images --if-possible

# Two pytest workers: most tests wait on sockets and subprocesses, so two keep both cores busy.
PYTEST_WORKERS ?= 2

test: lint typecheck azurite checkov images-if-possible
	$(RUN) pytest -n $(PYTEST_WORKERS)

test-fast: setup
	$(RUN) pytest -x -q

# The reliability suite at full size (tens of thousands of indicators, every fault on every API, several kills
# per service, the hostile corpus in every mode); writes its figures to tests/reliability/results.md.
# `make test` runs the same tests at their fast size.
reliability: setup azurite
	TIBRIDGE_RELIABILITY=full $(RUN) pytest tests/reliability -q -p no:cacheprovider --timeout=3600

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
	cp servicebus/config.json k8s/local/servicebus-config.json

azure-template: setup
	$(RUN) python -m tibridge.deploy > deploy/azure/main.json

clean:
	rm -rf $(VENV) $(TOOLS) .mypy_cache .ruff_cache .pytest_cache
