# The one command surface: install, run, test, lint, bench. Every target creates what it is missing
# (the project's .venv, vLLM's separate .venv-engine, the tiny model) and reuses what exists.
SHELL := /bin/bash
PYTHON ?= python3.11
VENV := .venv
ENGINE_VENV := .venv-engine
BIN := $(VENV)/bin
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1

.PHONY: install run test lint bench model system-deps clean help

help:
	@echo "make run    - the whole stack: vLLM engine, control plane, sidecar, dashboard"
	@echo "make test   - the test suite (real vLLM, PostgreSQL, Redis, Prometheus, Chromium)"
	@echo "make lint   - ruff + mypy --strict"
	@echo "make bench  - a short benchmark run (see docs/benchmarks.md)"

install: $(VENV)/.installed $(ENGINE_VENV)/.installed model

$(VENV)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q -e '.[dev]' 2>&1 | grep -v '^WARNING: Location' || true
	$(BIN)/python -c "import gpuledger, sidecar, control_plane, dashboard, serving"
	touch $@

$(ENGINE_VENV)/.installed: scripts/install_engine.sh
	PYTHON=$(PYTHON) bash scripts/install_engine.sh $(ENGINE_VENV)
	touch $@

model: $(VENV)/.installed $(ENGINE_VENV)/.installed
	@$(BIN)/gpuledger engine build-model >/dev/null

system-deps:
	bash scripts/install_system_deps.sh

run: install
	$(BIN)/gpuledger stack

test: install system-deps
	$(BIN)/pytest

lint: $(VENV)/.installed
	$(BIN)/ruff check .
	$(BIN)/mypy

# LiteLLM (the proxy we compare against) lives in its own .venv-litellm; see bench/README.md.
bench: install
	bash bench/install_litellm.sh
	$(BIN)/python -m bench.runner --quick

clean:
	rm -rf $(VENV) $(ENGINE_VENV) .cache data test-artifacts
