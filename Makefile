# beam-qa: one entry point for setting up, running and testing locally.
# Every target creates the virtualenv and installs the project first if needed.

PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: install run up down test test-fast clean bench-load equivalence bench demo-model quality bench-gpu gpu-bundle

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

## Answers vs the transformers 4.57 pipeline, row by row, on 1,120 rows (creates .cache/ref-*
## on first use); prints JSON, exits 1 under 99.5% agreement.
equivalence: $(STAMP)
	$(PY) -m benchmarks.equivalence

## Throughput: the 4.57 row-by-row baseline vs our handler and the whole bounded pipeline (file shapes
## 1x1000, 100x10, 10x100 rows) in fp32, bf16 and int8, on 1,000 SQuAD rows; prints JSON.
## BENCH_ARGS adds flags, e.g. BENCH_ARGS='--variants handler --precisions bf16 --rows 200'.
bench: $(STAMP)
	$(PY) -m benchmarks.throughput $(BENCH_ARGS)

## The handler on a CUDA GPU: fp16 and bf16, a sweep of batch sizes and token budgets, no baseline.
## Needs only torch, transformers, tokenizers, numpy and apache-beam (README "Throughput").
bench-gpu:
	python3 -m benchmarks.throughput --device cuda --no-baseline --variants handler \
		--precisions fp16,bf16 --batch-size 64,256,1024 --tokens-per-forward 16384,65536,262144 $(BENCH_ARGS)

## Everything bench-gpu needs that the offline GPU machine lacks, under .cache/gpu-bundle/ (carry it):
## the cp312 wheels of benchmarks/gpu_wheels.txt and the SQuAD sample.
gpu-bundle: $(STAMP)
	rm -rf .cache/gpu-bundle && mkdir -p .cache/gpu-bundle
	$(PY) -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 \
		--platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux_2_28_x86_64 \
		--platform manylinux_2_34_x86_64 -r benchmarks/gpu_wheels.txt -d .cache/gpu-bundle/wheels
	cp "$$($(PY) -c 'from beam_qa.dev.squad import default_squad_path; print(default_squad_path())')" \
		.cache/gpu-bundle/squad-v1.1-dev-sample.json
	du -sh .cache/gpu-bundle

## The demo model: all-MiniLM-L6-v2 fine-tuned for QA on 9 SQuAD articles, judged on 3 others
## (about 15 minutes on 2 cores; cached under .cache/demo-model/). Not part of make test.
demo-model: $(STAMP)
	$(PY) -m beam_qa.dev.demo_model

## Answer quality per precision: SQuAD EM/F1 of the demo model on its held-out articles; prints JSON,
## exits 1 when bf16 loses more than 1.0 F1 point or the precision table disagrees with the measurement.
quality: $(STAMP)
	$(PY) -m benchmarks.quality

## Load benchmark: 200 files x 20 rows through its own local stack; prints JSON, exits 1 on loss
## or duplicates. BENCH_LOAD_ARGS adds flags, e.g. BENCH_LOAD_ARGS="--model-size base".
bench-load: $(STAMP)
	$(PY) -m benchmarks.load $(BENCH_LOAD_ARGS)

clean: down
	rm -rf .run $(VENV)
