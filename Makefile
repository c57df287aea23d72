# Developer entry points. `make run` starts the local stack; `make test` runs
# every check. Both create the virtual environment on first use.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
CHECKED := main.py functions shared

.PHONY: run run-local test lint unit bench soak clean

$(STAMP): requirements.txt requirements-dev.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -r requirements-dev.txt
	touch $(STAMP)

## run: start the local stack (IAM emulator signing) at https://localhost:8443
run: $(STAMP)
	$(BIN)/python -m deploy.local.stack

## run-local: the same stack, signing with a local key
run-local: $(STAMP)
	$(BIN)/python -m deploy.local.stack --signing local

## lint: ruff and mypy --strict
lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy --strict $(CHECKED)

## test: lint, then every test, end-to-end ones included
test: lint
	NO_GCE_CHECK=true GCE_METADATA_HOST=127.0.0.1:9 GCE_METADATA_IP=127.0.0.1:9 \
		$(BIN)/python -m pytest

## unit: the tests that start no processes
unit: $(STAMP)
	NO_GCE_CHECK=true GCE_METADATA_HOST=127.0.0.1:9 GCE_METADATA_IP=127.0.0.1:9 \
		$(BIN)/python -m pytest -m "not e2e" tests/shared tests/functions

## bench: measure the token function, write docs/benchmarks.md (needs wrk)
bench: $(STAMP)
	command -v wrk >/dev/null || { apt-get update -qq && apt-get install -y -qq wrk; }
	$(BIN)/python -m bench.run

## soak: 32 clients for 4 x 60 s on the local stack, write docs/soak.md
soak: $(STAMP)
	$(BIN)/python -m bench.soak

clean:
	rm -rf $(VENV) .local .pytest_cache .mypy_cache .ruff_cache
