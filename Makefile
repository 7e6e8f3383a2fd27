# mlcycle: `make run` and `make test` work on a fresh clone; both set up .venv first.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
INSTALLED := $(VENV)/.installed
PYTEST_ARGS ?=

.DEFAULT_GOAL := help
.PHONY: help install browser run repro serve monitor deploy worker test test-e2e test-all test-fast lint format mlflow-ui prefect-ui docs docs-serve clean bench soak

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-12s %s\n", $$1, $$2}'

$(INSTALLED): pyproject.toml constraints.txt
	@echo "Setting up $(VENV) with the pinned dependencies (about 2 minutes the first time)..."
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -qq --upgrade pip
	$(BIN)/python -m pip install -qq -c constraints.txt -e ".[dev]"
	@touch $@
	@echo "Installed. Activate with: source $(VENV)/bin/activate"

install: $(INSTALLED) ## create .venv and install mlcycle with its pinned dependencies

run: install ## run the training pipeline (Prefect flow over the DVC stages) on the default data
	$(BIN)/mlcycle run

repro: install ## run the same stages with plain DVC
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/dvc repro

serve: install ## serve the champion model at http://127.0.0.1:8000 (follows the alias)
	$(BIN)/mlcycle serve

monitor: install ## compare live traffic (the prediction log) with the champion's training data
	$(BIN)/mlcycle monitor

# Deployments live on a Prefect server: `make prefect-ui` starts one at this address
# (`make prefect-ui PREFECT_PORT=4300`, then the same PREFECT_PORT for deploy and worker).
PREFECT_PORT ?= 4200
PREFECT_SERVER ?= http://127.0.0.1:$(PREFECT_PORT)/api

deploy: install ## register the Prefect deployments (prefect.yaml) on the server of make prefect-ui
	PREFECT_API_URL=$${PREFECT_API_URL:-$(PREFECT_SERVER)} $(BIN)/mlcycle deployments apply

worker: install ## start a Prefect worker that runs the deployments' flow runs in this checkout
	PREFECT_API_URL=$${PREFECT_API_URL:-$(PREFECT_SERVER)} $(BIN)/mlcycle worker

# Debian packages some targets need: chromium for the serving page's browser test, wrk for the
# serving benchmark. Installed when missing and this runs as root with apt-get; otherwise the
# test that needs chromium is skipped (saying so) and the benchmark stops with a message.
define apt_install
	@command -v $(1) >/dev/null || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    echo "Installing Debian's $(2)..."; \
	    (apt-get install -y -qq $(2) >/dev/null 2>&1 || \
	     (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(2) >/dev/null)); \
	  else echo "$(1) not found and cannot be installed here (needs root and apt-get)"; fi; }
endef

browser: ## install Debian's chromium (the serving page test drives it with Playwright)
	$(call apt_install,chromium,chromium)

# The suite on TEST_WORKERS processes (pytest-xdist): each module stays on one worker (its
# module fixtures are made once), slow modules first (tests/conftest.py; --no-loadscope-reorder
# keeps that order, xdist would sort modules by their number of tests). TEST_WORKERS=0: one
# process. (Not --dist loadgroup: pytest-xdist 3.8's groups do nothing under pytest 9.2.)
TEST_WORKERS ?= 2

XDIST := -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder

# Two tiers: `make test` (every real service, under 10 minutes on 2 cores) and `make test-e2e`
# (the tests marked e2e: the fault try-outs of tests/faults/ and the whole-lifecycle scenarios,
# runs that train again, wait on the clock or are killed mid-way). CI (.ci/run) runs both.
test: install browser ## run every test but the e2e ones (under 10 min on 2 cores)
	$(BIN)/python -m pytest $(XDIST) -m "not e2e" $(PYTEST_ARGS)

test-e2e: install browser ## run the e2e tests only: tests/faults/ and whole-lifecycle scenarios (CI runs them)
	$(BIN)/python -m pytest $(XDIST) -m e2e $(PYTEST_ARGS)

test-all: install browser ## run every test in one session (make test + make test-e2e)
	$(BIN)/python -m pytest $(XDIST) $(PYTEST_ARGS)

test-fast: install ## skip the slow tests (real services, full pipeline runs)
	$(BIN)/python -m pytest $(XDIST) -m "not slow" $(PYTEST_ARGS)

lint: install ## check formatting, lint rules and the import layers (pyproject.toml)
	$(BIN)/ruff format --check .
	$(BIN)/ruff check .
	$(BIN)/lint-imports

format: install ## apply formatting and safe lint fixes
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

mlflow-ui: install ## browse runs and models at http://127.0.0.1:5000
	$(BIN)/mlflow ui --backend-store-uri sqlite:///mlflow.db --default-artifact-root ./mlartifacts

# Telemetry off (no network: the server would log an error per try); leases on disk, so a
# restarted server forgets no training slot; the classic UI at the root (the V2 UI fetches a
# config from amplitude.com, analytics or not). The API URLs are the server's own: its UI asks
# PREFECT_UI_API_URL, which otherwise follows a PREFECT_API_URL exported here or says port 4200.
prefect-ui: install ## start a Prefect server with its UI at http://127.0.0.1:4200 (or PREFECT_PORT=...)
	PREFECT_SERVER_ANALYTICS_ENABLED=false \
	PREFECT_SERVER_CONCURRENCY_LEASE_STORAGE=prefect.server.concurrency.lease_storage.filesystem \
	PREFECT_SERVER_UI_V2_ENABLED=false \
	PREFECT_SERVER_API_PORT=$(PREFECT_PORT) \
	PREFECT_API_URL=$(PREFECT_SERVER) \
	PREFECT_UI_API_URL=$(PREFECT_SERVER) \
	$(BIN)/prefect server start --port $(PREFECT_PORT)

# The documentation site (mkdocs.yml, docs/): strict, so a broken link or a page missing from
# the nav fails the build. NO_MKDOCS_2_WARNING quiets mkdocs-material's notice about its future.
MKDOCS := NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs
DOCS_PORT ?= 8001

docs: install ## build the documentation site into site/ (open site/index.html)
	$(MKDOCS) build --strict --site-dir site

docs-serve: install ## serve the documentation at http://127.0.0.1:8001, rebuilt on every edit
	$(MKDOCS) serve --strict --dev-addr 127.0.0.1:$(DOCS_PORT)

clean: ## remove pipeline outputs and local tracking stores (keeps .venv and the DVC cache)
	rm -rf data/raw data/processed artifacts reports mlflow.db mlartifacts

# The test suite runs the soak at its own pace (bench/soak.py --quick: one short episode).
soak: install ## the loop unattended for 24 minutes: drift episodes retrained once, nothing lost
	$(BIN)/python bench/soak.py $(SOAK_ARGS)  # e.g. SOAK_ARGS="--minutes 12" (one episode)

bench: install ## every benchmark (bench/suite.py): training speed-up, pipeline, zoo, data, serving, scale
	$(call apt_install,wrk,wrk)
	$(BIN)/python bench/suite.py $(BENCH_ARGS)  # e.g. BENCH_ARGS="--quick --only training"
