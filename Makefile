# beam-qa: one entry point for setting up, running and testing locally.
# Every target creates the virtualenv and installs the project first if needed.

PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: install run up down test test-fast clean

$(STAMP): setup.py
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	# torch first, pinned: this is the CPU wheel (any other spec pulls a multi-GB CUDA build).
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

## Start the local stack and the streaming pipeline in the foreground; Ctrl-C stops it all.
run: $(STAMP)
	$(PY) -m beam_qa.dev.stack run

## The same stack, detached; returns once the pipeline is ready. Logs under .run/.
up: $(STAMP)
	$(PY) -m beam_qa.dev.stack up

## Stop everything `make up` started.
down:
	@if [ -x $(PY) ]; then $(PY) -m beam_qa.dev.stack down; else echo "nothing to stop"; fi

## The whole test suite (unit, integration, end-to-end).
test: $(STAMP)
	$(PY) -m pytest

## Unit tests only (no services).
test-fast: $(STAMP)
	$(PY) -m pytest tests/unit

clean: down
	rm -rf .run $(VENV)
