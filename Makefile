# Archiva: `make run` runs the whole product, `make test` checks it.
# Both create .venv on first use; re-runs reinstall only when a requirements
# file changed (stamp files inside .venv).

SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

VENV      ?= .venv
BIN       := $(VENV)/bin
PY        := $(BIN)/python
PIP       := $(PY) -m pip --disable-pip-version-check
RUN_STAMP := $(VENV)/.installed-run
DEV_STAMP := $(VENV)/.installed-dev
ARTIFACTS ?= test-artifacts
# Extra pytest arguments, e.g. `make test PYTEST_ARGS="-k storage -x"`.
PYTEST_ARGS ?=
# manage.py with .env loaded, exactly as the processes of `make run` see it.
MANAGE    := $(BIN)/honcho run -- $(PY) manage.py

.PHONY: help run migrate collectstatic test lint fmt clean bench venv venv-dev

help:
	@echo "make run      create .venv, migrate, collect static files, run web + smtpd + worker + beat, each restarted if it dies (Ctrl-C stops all)"
	@echo "make test     create .venv with dev tools, run ruff, mypy and the whole pytest suite (artifacts in $(ARTIFACTS)/)"
	@echo "make lint     ruff check, ruff format --check and mypy"
	@echo "make fmt      ruff format and ruff check --fix"
	@echo "make migrate  apply database migrations"
	@echo "make bench    run bench/*.py"
	@echo "make clean    remove .venv, $(ARTIFACTS)/ and caches (keeps var/, your data)"

# --- virtualenv -------------------------------------------------------------

$(PY):
	@python="$$(bash scripts/find-python.sh)"; \
	echo "Creating $(VENV) with $$python ($$("$$python" --version))"; \
	"$$python" -m venv $(VENV)

$(RUN_STAMP): requirements.txt | $(PY)
	$(PIP) install --quiet -r requirements.txt
	@touch $@

# requirements-dev.txt includes requirements.txt, so it satisfies `run` too.
$(DEV_STAMP): requirements.txt requirements-dev.txt | $(PY)
	$(PIP) install --quiet -r requirements-dev.txt
	@touch $@ $(RUN_STAMP)

venv: $(RUN_STAMP)
venv-dev: $(DEV_STAMP)

# --- running ------------------------------------------------------------------

migrate: $(RUN_STAMP)
	$(MANAGE) migrate --noinput

collectstatic: $(RUN_STAMP)
	$(MANAGE) collectstatic --noinput --verbosity 0

run: migrate collectstatic
	$(BIN)/honcho run -- $(PY) scripts/prepare_data_dir.py
	@echo "Archiva: web http://localhost:$${ARCHIVA_HTTP_PORT:-8000}/  SMTP 127.0.0.1:$${ARCHIVA_SMTP_PORT:-2525}" \
	      " outbox $${ARCHIVA_DATA_DIR:-var}/outbox/  (Ctrl-C stops everything)"
	exec $(BIN)/honcho run -- $(PY) scripts/supervise.py Procfile

# --- checking -----------------------------------------------------------------

# Lint and tests both run even when the first fails, so one run shows all
# problems; the target fails if either did.
test: $(DEV_STAMP)
	@mkdir -p $(ARTIFACTS)
	@status=0; \
	echo "== ruff check"; \
	$(BIN)/ruff check --output-format=concise . 2>&1 | tee $(ARTIFACTS)/ruff.txt || status=1; \
	echo "== mypy"; \
	$(BIN)/mypy 2>&1 | tee $(ARTIFACTS)/mypy.txt || status=1; \
	echo "== pytest"; \
	ARCHIVA_TEST_ARTIFACTS=$(ARTIFACTS) $(BIN)/pytest --junitxml=$(ARTIFACTS)/junit.xml -o junit_suite_name=archiva --durations=15 \
		$(PYTEST_ARGS) 2>&1 | tee $(ARTIFACTS)/pytest.log || status=1; \
	echo "Artifacts: $(ARTIFACTS)/ (junit.xml, pytest.log, ruff.txt, mypy.txt, screenshots/)"; \
	exit $$status

lint: $(DEV_STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

fmt: $(DEV_STAMP)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

bench: $(DEV_STAMP)
	@shopt -s nullglob; found=0; \
	for script in bench/*.py; do \
		case "$$(basename "$$script")" in _*) continue ;; esac; \
		found=1; echo "== $$script"; \
		$(PY) "$$script"; \
	done; \
	[ $$found = 1 ] || echo "No benchmarks in bench/."

clean:
	rm -rf $(VENV) $(ARTIFACTS) .pytest_cache .ruff_cache .mypy_cache .hypothesis
	find . -path ./var -prune -o -name __pycache__ -type d -prune -exec rm -rf {} +
