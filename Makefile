# skysync: the two quickstart commands (`make run`, `make test`) work on a fresh machine: they
# build .venv from this project's own files first.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test test-fast lint bench clean venv compose-test promtool

venv: $(STAMP)

$(STAMP): pyproject.toml setup.py
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

## run: the daemon on the embedded default (SQLite, serverless broker, built-in SkyHub emulator)
run: $(STAMP)
	$(BIN)/skysync run --demo

## test: the whole suite, on SQLite and on PostgreSQL (PostgreSQL and Redis must be reachable);
## promtool first, for the alerting rules' tests, and Debian's chromium and chromium-driver for
## the console's browser tests, each installed when missing (.ci/install-promtool,
## .ci/ensure-browser: as root, or with sudo)
test: $(STAMP) promtool
	bash .ci/ensure-browser
	$(BIN)/python -m pytest $(PYTEST_ARGS)

## promtool: install Debian's prometheus package when promtool is not on PATH (root or sudo;
## no Prometheus server left running): .ci/install-promtool
promtool:
	@bash .ci/install-promtool

## test-fast: the developer's loop (under a minute): the same suite without the tiers marked
## slow, celery, compose and browser (pyproject.toml); both databases and the emulator still
## (promtool too: a no-op once it is there)
FAST_TIERS := not slow and not celery and not compose and not browser
test-fast: $(STAMP) promtool
	$(BIN)/python -m pytest -m "$(FAST_TIERS)" $(PYTEST_ARGS)

## lint: ruff (the rules, then the format), then mypy --strict over skysync/ (its settings:
## [tool.ruff] and [tool.mypy] in pyproject.toml)
LINTED := skysync tests bench migrations .ci setup.py
lint: $(STAMP)
	$(BIN)/ruff check $(LINTED)
	$(BIN)/ruff format --check $(LINTED)
	$(BIN)/mypy

## bench: relay throughput through a real Celery worker, limiter accuracy, backlog drain, freshness,
## reconciliation, several accounts through two workers
## with the fast lane on and off, reconciliation, the console's pages on a 1,000,000-row outbox
## (needs PostgreSQL, Redis)
bench: $(STAMP)
	$(BIN)/python -m bench.relay_throughput
	$(BIN)/python -m bench.relay_throughput --rows 600 --batch-size 100
	$(BIN)/python -m bench.relay_throughput --shape mixed
	$(BIN)/python -m bench.relay_throughput --shape fashion
	$(BIN)/python -m bench.relay_throughput --shape fashion --made-outside
	$(BIN)/python -m bench.limiter_accuracy
	$(BIN)/python -m bench.backlog
	$(BIN)/python -m bench.freshness
	$(BIN)/python -m bench.reconcile
	$(BIN)/python -m bench.accounts
	$(BIN)/python -m bench.console

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .hypothesis

## compose-test: the production path for real (Docker engine, the image from the Dockerfile,
## `docker-compose up`, rows end to end, operations); needs root. Called by .ci/run.
compose-test: $(STAMP)
	$(BIN)/python .ci/compose_test.py
