# beam-qa: one entry point for setting up, running and testing locally.
# Every target creates the virtualenv and installs the project first if needed.
# `make` alone (or `make help`) lists the targets: the "## " line above each one.

PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
# The prerequisites check needs only the standard library: before the first install it runs
# under the system python3, so a missing prerequisite shows in seconds, not after the install.
CHECK_PY = $(if $(wildcard $(PY)),$(PY),$(PYTHON))

.DEFAULT_GOAL := help
.PHONY: help check install run up down test test-fast clean bench-load equivalence bench

## List the targets, one line each.
help:
	@awk '/^## /{ if (!doc) doc = substr($$0, 4); next } \
	     /^[a-z][-a-z]*:/{ if (doc) printf "  make %-12s %s\n", substr($$1, 1, length($$1) - 1), doc } \
	     { doc = "" }' $(MAKEFILE_LIST)

## Check what make run needs (gcloud with the Pub/Sub emulator, Java, PostgreSQL); one line each.
check:
	@$(CHECK_PY) -m beam_qa.dev.stack check

$(STAMP): setup.py
	@$(PYTHON) -c 'import ensurepip' 2>/dev/null || { echo "error: $(PYTHON) cannot create a virtualenv:" \
	    "sudo apt-get install python3-venv"; exit 2; }
	@echo "==> creating $(VENV) and installing beam-qa; the first time takes minutes (torch and Beam are large)"
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	@echo "==> [1/2] torch 2.13.0, the CPU build (pinned: any other spec pulls a multi-GB CUDA build)"
	$(PY) -m pip install --progress-bar on torch==2.13.0
	@echo "==> [2/2] beam-qa with its pipeline, upload and dev extras (tests, emulators, browser driver)"
	$(PY) -m pip install --progress-bar on -e '.[pipeline,upload,dev]'
	touch $(STAMP)
	@echo "==> installed; make check tells what make run still needs"

## Create .venv and install the project (CPU torch, then -e '.[pipeline,upload,dev]'), showing pip's progress.
install: $(STAMP)

## Start the local stack and the streaming pipeline in the foreground; Ctrl-C stops it all.
run: check $(STAMP)
	$(PY) -m beam_qa.dev.stack run

## The same stack, detached; returns once the pipeline is ready. Logs under .run/.
up: check $(STAMP)
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

## Answers vs the transformers 4.57 pipeline on 1,120 rows; prints JSON, exits 1 under 99.5% agreement.
## Row by row; creates .cache/ref-* on first use.
equivalence: $(STAMP)
	$(PY) -m benchmarks.equivalence

## Throughput: 4.57 baseline vs our handler, the whole pipeline and int8, on 500 SQuAD rows; prints JSON.
bench: $(STAMP)
	$(PY) -m benchmarks.throughput

## Load benchmark: 200 files x 20 rows through its own local stack; prints JSON, exits 1 on loss.
## Also on duplicates. BENCH_LOAD_ARGS adds flags, e.g. BENCH_LOAD_ARGS="--model-size base".
bench-load: $(STAMP)
	$(PY) -m benchmarks.load $(BENCH_LOAD_ARGS)

## Stop the stack, then remove .run/ and .venv/.
clean: down
	rm -rf .run $(VENV)
