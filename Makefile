# `make dev` runs the product, `make test` runs the tests; both install what is missing first.
SHELL := /bin/bash
VENV := .venv
PYTHON ?= python3
BIN := $(VENV)/bin
PY_STAMP := $(VENV)/.installed
NODE_STAMP := node_modules/.installed

.PHONY: dev test lint check contracts network bench docs deps system-deps clean

dev: deps
	$(BIN)/quorum-signer dev

test: deps
	$(BIN)/pytest $(PYTEST_ARGS)

lint: deps
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	node scripts/compile-contracts.mjs --check

# Recompile contracts/*.sol into contracts/build/ (commit the result; CI checks it matches).
contracts: deps
	node scripts/compile-contracts.mjs

check: lint test

# Every benchmark of bench/ with short settings (a few minutes), then one table of figures and
# ratios against their in-run baselines (bench/README.md). BENCH_ARGS=--full: their own defaults.
bench: deps
	$(BIN)/python bench/run.py $(BENCH_ARGS)

# Regenerate docs/configuration.md's table of QSIGNER_ variables from proxy/settings.py.
docs: deps
	$(BIN)/python scripts/configuration_table.py

# Keys, genesis and configs of the 4-node GoQuorum network that docker-compose.yml runs, in
# ./network (private keys and secrets: it ignores itself in git). NETWORK_ARGS=--force replaces it.
network: deps
	$(BIN)/quorum-signer network generate network $(NETWORK_ARGS)

deps: system-deps $(PY_STAMP) $(NODE_STAMP)

system-deps:
	@scripts/install-system-deps

$(PY_STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --upgrade pip
	@# setuptools tells of every editable install in a framed notice (information, not a
	@# deprecation): that one message is filtered, any other warning still shows.
	PYTHONWARNINGS='ignore:Editable installation' \
	    $(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[dev,test]'
	@touch $@

$(NODE_STAMP): package.json package-lock.json
	npm ci --no-audit --no-fund --loglevel=error
	@touch $@

clean:
	rm -rf $(VENV) node_modules .pytest_cache .mypy_cache .ruff_cache
