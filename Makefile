# beam-qa: one entry point for setting up, running and testing locally.
# Every target creates the virtualenv and installs the project first if needed.

PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: install run up down test test-fast clean bench-load equivalence bench

$(STAMP): setup.py
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	# torch first, pinned: this is the CPU wheel (any other spec pulls a multi-GB CUDA build).
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e '.[pipeline,upload,dev]'
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

## Answers vs the transformers 4.57 pipeline, row by row, on 1,120 rows (creates .cache/ref-*
## on first use); prints JSON, exits 1 under 99.5% agreement.
equivalence: $(STAMP)
	$(PY) -m benchmarks.equivalence

## Throughput: 4.57 baseline vs our handler, the whole pipeline and int8, on 500 SQuAD rows; prints JSON.
bench: $(STAMP)
	$(PY) -m benchmarks.throughput

## Load benchmark: 200 files x 20 rows through its own local stack; prints JSON, exits 1 on loss
## or duplicates. BENCH_LOAD_ARGS adds flags, e.g. BENCH_LOAD_ARGS="--model-size base".
bench-load: $(STAMP)
	$(PY) -m benchmarks.load $(BENCH_LOAD_ARGS)

clean: down
	rm -rf .run $(VENV)
