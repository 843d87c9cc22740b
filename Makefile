# beam-qa: one entry point for setting up, running and testing locally.
# Every target creates the virtualenv and installs the project first if needed.
# `make` alone (or `make help`) lists the targets: the "## " line above each one.

PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
# The locked dependencies alone (enough for make lock, which must work while setup.py and the
# locks disagree); STAMP adds beam-qa itself and the check that the venv matches the lock.
DEPS   := $(VENV)/.locked
# The prerequisites check needs only the standard library: before the first install it runs
# under the system python3, so a missing prerequisite shows in seconds, not after the install.
CHECK_PY = $(if $(wildcard $(PY)),$(PY),$(PYTHON))

.DEFAULT_GOAL := help
.PHONY: help check install lock upgrade-locks run up down test test-fast fuzz docs clean bench-load equivalence bench bench-overhead demo-model quality bench-gpu gpu-bundle

## List the targets, one line each.
help:
	@awk '/^## /{ if (!doc) doc = substr($$0, 4); next } \
	     /^[a-z][-a-z]*:/{ if (doc) printf "  make %-12s %s\n", substr($$1, 1, length($$1) - 1), doc } \
	     { doc = "" }' $(MAKEFILE_LIST)

## Check what make run needs, one line each: gcloud with the Pub/Sub emulator (the one to install by hand), Java, PostgreSQL.
check:
	@$(CHECK_PY) -m devtools.stack check

# The locks (requirements/*.txt, written by make lock) are resolved for this Python minor version:
# the one the images run (Dockerfile.worker, Dockerfile.upload).
LOCK_PYTHON := 3.11
LOCKS        := requirements/dev.txt requirements/pipeline.txt requirements/upload.txt requirements/torch.txt
# Where the CPU build of the pinned torch comes from when pip's own configuration has no copy of it.
TORCH_INDEX_URL ?= https://download.pytorch.org/whl/cpu

$(DEPS): $(LOCKS)
	@$(PYTHON) -c 'import ensurepip' 2>/dev/null || { echo "error: $(PYTHON) cannot create a virtualenv:" \
	    "sudo apt-get install python3-venv"; exit 2; }
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info[:2] != tuple(map(int, "$(LOCK_PYTHON)".split("."))))' || { \
	    echo "error: the locks in requirements/ are resolved for Python $(LOCK_PYTHON) (the images' Python), and" \
	    "$(PYTHON) is $$($(PYTHON) -V 2>&1): make install PYTHON=python$(LOCK_PYTHON)"; exit 2; }
	@echo "==> creating $(VENV) and installing the locked versions; the first time takes minutes (torch and Beam are large)"
	$(PYTHON) -m venv $(VENV)
	@echo "==> [1/3] every dependency of beam-qa[pipeline,upload,dev], as requirements/dev.txt pins and hashes it"
	$(PY) -m pip install --progress-bar on --require-hashes --no-deps -r requirements/dev.txt
	@echo "==> [2/3] torch as requirements/torch.txt pins it, the CPU build (its dependencies came in step 1)"
	$(PY) -m pip install --quiet --no-deps --no-index -r requirements/torch.txt 2>/dev/null \
	    || $(PY) -m pip install --progress-bar on --no-deps --extra-index-url $(TORCH_INDEX_URL) -r requirements/torch.txt
	touch $(DEPS)

$(STAMP): setup.py $(DEPS)
	@echo "==> [3/3] beam-qa itself, editable"
	$(PY) -m pip install --quiet --no-deps -e .
	$(PY) -m devtools.locks sync
	$(PY) -m pip check
	touch $(STAMP)
	@echo "==> installed; make check tells what make run still needs"

## Create .venv with exactly the locked versions (requirements/dev.txt, CPU torch), then beam-qa editable.
install: $(STAMP)

## Re-resolve setup.py into the locks in requirements/, keeping locked versions that still fit.
## After editing setup.py; make upgrade-locks moves everything to its newest allowed version.
lock: $(DEPS)
	$(PY) -m devtools.locks compile

## The locks with every dependency at its newest version that setup.py allows (then make test).
upgrade-locks: $(DEPS)
	$(PY) -m devtools.locks compile --upgrade

## Start the local stack and the streaming pipeline in the foreground; Ctrl-C stops it all.
run: check $(STAMP)
	$(PY) -m devtools.stack run

## The same stack, detached; returns once the pipeline is ready. Logs under .run/.
up: check $(STAMP)
	$(PY) -m devtools.stack up

## Stop everything `make up` started, the embedded PostgreSQL included (its data stays in .run/postgres).
down:
	@if [ -x $(PY) ]; then $(PY) -m devtools.stack down; else echo "nothing to stop"; fi

## The whole test suite (unit, integration, end-to-end), on an embedded PostgreSQL unless QA_TEST_PG_DSN is set.
test: $(STAMP)
	$(PY) -m pytest

## The property-based tests of the parsers (tests/fuzz/) at 10,000 examples per property; make test runs fewer.
fuzz: $(STAMP)
	QA_FUZZ_PROFILE=fuzz $(PY) -m pytest tests/fuzz --timeout=0

## Unit tests only (no services).
test-fast: $(STAMP)
	$(PY) -m pytest tests/unit

## Answers vs the transformers 4.57 pipeline on 1,120 rows; prints JSON, exits 1 under 99.5% agreement.
## Row by row; creates .cache/ref-* on first use.
equivalence: $(STAMP)
	$(PY) -m benchmarks.equivalence

## Throughput vs the 4.57 row-by-row baseline: handler and whole pipeline, 3 file shapes, each precision.
## The whole bounded pipeline runs over file shapes 1x1000, 100x10 and 10x100 rows, in fp32, bf16 and int8,
## on 1,000 SQuAD rows; prints JSON.
## BENCH_ARGS adds flags, e.g. BENCH_ARGS='--variants handler --precisions bf16 --rows 200'.
bench: $(STAMP)
	$(PY) -m devtools.postgres run -- $(PY) -m benchmarks.throughput $(BENCH_ARGS)

## Cost per row: the bounded pipeline's steady state with the tiny model, stages alone, real model beside; JSON.
## 1 file of 20,000 rows and 200 of 100, start-up subtracted; BENCH_ARGS adds flags (docs/benchmarks.md).
bench-overhead: $(STAMP)
	$(PY) -m devtools.postgres run -- $(PY) -m benchmarks.overhead $(BENCH_ARGS)

## Every GPU figure on a CUDA machine in one command, within a time budget: JSON files in benchmarks/results/gpu/.
## The handler in fp32, fp16 and bf16 over batch sizes and token budgets; the bounded pipeline with PostgreSQL per
## file shape. Runs under python3 as it is (no venv): docs/benchmarks.md "GPU" (an offline machine: gpu-bundle).
bench-gpu:
	python3 -m benchmarks.gpu_session $(BENCH_ARGS)

## What bench-gpu needs on an offline GPU machine, in .cache/gpu-bundle/ to carry (fails if a call would pass 64 MiB).
## The cp312 wheels of benchmarks/gpu_wheels.txt at the locked versions, installed and packed, and the SQuAD sample.
gpu-bundle: $(STAMP)
	$(PY) -m benchmarks.gpu_bundle

## The demo model: all-MiniLM-L6-v2 fine-tuned for QA offline, cached in .cache/demo-model/.
## Trained on 9 SQuAD articles and judged on 3 others (about 15 minutes on 2 cores). make test builds a quicker one.
demo-model: $(STAMP)
	$(PY) -m devtools.demo_model

## Answer quality per precision: SQuAD EM/F1 of the demo model on its held-out articles (JSON).
## Exits 1 when bf16 loses more than 1.0 F1 point or the precision table disagrees with the measurement.
quality: $(STAMP)
	$(PY) -m benchmarks.quality

## Load benchmark: 200 files x 20 rows through its own local stack; prints JSON, exits 1 on loss.
## Also on duplicates. BENCH_LOAD_ARGS adds flags, e.g. BENCH_LOAD_ARGS="--model-size base".
bench-load: $(STAMP)
	$(PY) -m devtools.postgres run -- $(PY) -m benchmarks.load $(BENCH_LOAD_ARGS)

## Regenerate docs/configuration.md from the flags and settings (a test fails when it is stale).
docs: $(STAMP)
	$(PY) -m devtools.configuration_doc --write

## Stop the stack, then remove .run/ and .venv/.
clean: down
	rm -rf .run $(VENV)
