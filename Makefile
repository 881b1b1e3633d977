# The two commands a newcomer types: `make demo` and `make test`. Both create or reuse .venv.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-$(shell cat pyproject.toml | cksum | cut -d' ' -f1)

.PHONY: install deps demo test dev lint unit integration e2e chaos histories replay clean

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	@rm -f $(VENV)/.installed-* && touch $@

install: $(STAMP)  ## create .venv and install changeguard with its dev tools

demo: install  ## run the demo scenario on a fresh embedded Temporal dev server
	$(BIN)/changeguard demo

test: install deps  ## run the whole test suite (unit on time-skipping, integration on the dev server)
	$(BIN)/pytest

deps:  ## system packages the tests use: Prometheus, Alertmanager, PostgreSQL, Chromium (Debian; root once)
	@bash infra/install-test-deps.sh

unit: install
	$(BIN)/pytest tests/unit

integration: install deps
	$(BIN)/pytest tests/integration

e2e: install deps  ## the Web UI in headless Chromium
	$(BIN)/pytest tests/e2e

chaos: install deps  ## the long chaos campaign: 500 changes under random faults (SEED=n replays one, CHANGES=n)
	TESTCONTAINERS_RYUK_DISABLED=true $(BIN)/python -m tests.chaos.campaign \
		--changes $(or $(CHANGES),500) $(if $(SEED),--seed $(SEED))

dev: install  ## dev server + Web UI (http://localhost:8233) + worker + demo fleet, until Ctrl-C
	$(BIN)/changeguard dev

lint: install  ## ruff (lint + format check) and strict mypy
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

histories: install  ## capture one real run per workflow branch into tests/replay/histories
	$(BIN)/python -m tests.replay.capture

replay: install  ## replay every committed history against the current workflow code
	$(BIN)/changeguard replay --dir tests/replay/histories

clean:
	rm -rf $(VENV) .changeguard .pytest_cache .mypy_cache .ruff_cache
