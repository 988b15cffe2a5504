# sessionflow: `make demo` and `make test` set up everything they need on a fresh machine.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-dev
PYTEST_WORKERS ?= 2

NODE_STAMP := node_modules/.installed
# checkov, the template's security scan, in a virtualenv of its own (its pins clash with dev's: see
# the `scan` extra in pyproject.toml, which says what to install).
SCAN_VENV  := .venv-scan
SCAN_STAMP := $(SCAN_VENV)/.installed
CHECKOV    := $(SCAN_VENV)/bin/checkov
# Offline, credential-free packaging: the framework must never phone home or need an account.
SLS_OFFLINE := AWS_ACCESS_KEY_ID=testing AWS_SECRET_ACCESS_KEY=testing AWS_SESSION_TOKEN=testing \
	AWS_REGION=us-east-1 SLS_TELEMETRY_DISABLED=1 SLS_NOTIFICATIONS_MODE=off

.PHONY: help install demo test test-fast test-spark java-check chromium-check lint format bench fuzz clean deploy-deps \
	lambda-package deploy-package deploy-check scan-deps

help:
	@echo "make demo       create the virtualenv, install, run the demo"
	@echo "make test       install the dev dependencies, lint, run every test"
	@echo "make bench      benchmarks against DuckDB and Polars baselines (see bench/)"
	@echo "make lint       ruff + mypy"
	@echo "make fuzz       a long fuzz run of parse, validate and clean"
	@echo "make deploy-package  build the Lambda artifact, serverless package, cfn-lint, checkov"

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

# What setup.py compiles: a change to any of these is rebuilt by the next make.
BUILD_INPUTS := pyproject.toml setup.py src/sessionflow/core/_native.pyx src/sessionflow/core/_native.pxd \
	src/sessionflow/core/_state.pyx src/sessionflow/core/_state.pxd src/sessionflow/runtimes/local/_blocks.pyx \
	src/sessionflow/core/refine.py src/sessionflow/core/cleaning.py src/sessionflow/core/pipeline.py \
	src/sessionflow/core/rules.py src/sessionflow/core/rules.pxd

$(VENV)/.installed-local: $(BUILD_INPUTS) | $(BIN)/python
	$(BIN)/pip install --quiet -e '.[local]'
	@touch $@

$(STAMP): $(BUILD_INPUTS) | $(BIN)/python
	$(BIN)/pip install --quiet -e '.[dev]'
	@touch $@

install: $(STAMP)

# Serverless Framework v3 (pinned in package-lock.json) for `serverless package` and its checks.
$(NODE_STAMP): package.json package-lock.json
	npm ci --ignore-scripts --no-audit --no-fund --prefer-offline
	@touch $@

deploy-deps: $(NODE_STAMP)

$(SCAN_STAMP): pyproject.toml
	test -x $(SCAN_VENV)/bin/python || $(PYTHON) -m venv $(SCAN_VENV)
	$(SCAN_VENV)/bin/pip install --quiet $$($(SCAN_VENV)/bin/python -c "import tomllib; \
		print(' '.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['optional-dependencies']['scan']))")
	@touch $@

scan-deps: $(SCAN_STAMP)

lambda-package: $(STAMP)
	$(BIN)/python deploy/build_lambda_package.py

deploy-package: lambda-package $(NODE_STAMP) $(SCAN_STAMP)
	$(SLS_OFFLINE) npx --no -- serverless package --stage dev --region us-east-1 --package build/serverless
	$(BIN)/cfn-lint build/serverless/cloudformation-template-create-stack.json \
		build/serverless/cloudformation-template-update-stack.json
	$(CHECKOV) --quiet --compact --skip-download --framework cloudformation \
		-f build/serverless/cloudformation-template-update-stack.json

deploy-check: $(STAMP) $(NODE_STAMP) $(SCAN_STAMP)
	$(BIN)/pytest tests/deploy -q

demo: $(VENV)/.installed-local
	$(BIN)/sessionflow demo --dir sessionflow-demo --force

lint: $(STAMP)
	$(BIN)/ruff check src tests bench setup.py
	$(BIN)/ruff format --check src tests bench setup.py
	$(BIN)/mypy

format: $(STAMP)
	$(BIN)/ruff format src tests bench
	$(BIN)/ruff check --fix src tests bench

# The Spark backfill tests need Java 17; Debian's package when the machine has none.
java-check:
	@command -v java >/dev/null 2>&1 || (apt-get update -qq && apt-get install -y -qq openjdk-17-jre-headless)

# The report's test renders it in headless Chromium: Debian's package when the machine has none
# (Playwright drives it; its own browser downloads are never used).
CHROMIUM ?= /usr/bin/chromium
chromium-check:
	@test -x $(CHROMIUM) || (apt-get update -qq && apt-get install -y -qq chromium)

# --dist loadgroup keeps the Spark tests in one worker, so they share one JVM.
test: $(STAMP) $(NODE_STAMP) $(SCAN_STAMP) java-check chromium-check lint
	$(BIN)/pytest -n $(PYTEST_WORKERS) --dist loadgroup --durations=15

test-fast: $(STAMP)
	$(BIN)/pytest -n $(PYTEST_WORKERS) -m "not slow and not aws and not spark"

test-spark: $(STAMP) java-check
	$(BIN)/pytest -m spark tests/backfill

bench: $(STAMP)
	$(BIN)/python bench/bench_run.py --events 1000000 --all --json bench/out/results.json
	$(BIN)/python bench/bench_late.py --events 1000000 --json bench/out/late.json
	$(BIN)/python bench/bench_lake_formats.py --events 200000 --json bench/out/lake_formats.json
	$(BIN)/python bench/bench_report.py --events 1000000 --json bench/out/report.json

# A long fuzz run (about 20 minutes): hypothesis with many examples, then atheris on refine.
fuzz: $(STAMP)
	$(BIN)/pip install --quiet 'atheris>=2.3'
	SESSIONFLOW_FUZZ_EXAMPLES=10000 $(BIN)/pytest -n $(PYTEST_WORKERS) tests/fuzz
	$(BIN)/python tests/fuzz/atheris_refine.py -max_total_time=600 -rss_limit_mb=4096 -dict=tests/fuzz/json.dict .fuzz-corpus

clean:
	rm -rf $(VENV) $(SCAN_VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis sessionflow-demo bench/out build node_modules .fuzz-corpus
