"""Throughput: the row-by-row 4.57 baseline against our handler, the whole pipeline and int8.

All variants run on the same DistilBERT-base-sized model (random weights: speed does not
depend on the weight values) and the same SQuAD rows, each in a fresh process so that its
peak RSS is its own:

1. ``baseline``: the transformers 4.57 question-answering pipeline called row by row
   (what the systems beam-qa replaces did), in its own virtualenv;
2. ``handler``: our ``QuestionAnsweringModelHandler`` alone, fed batches of
   ``--max_batch_size`` rows the way RunInference feeds it;
3. ``pipeline``: the whole bounded pipeline (CSV files on local disk, RunInference,
   answers CSVs, PostgreSQL), model pre-loaded, to show the pipeline's own overhead;
4. ``handler_int8``: the handler with ``--quantize int8``, with its agreement against fp32;
5. ``handler_cuda_fp16``: only when a GPU is visible.

Prints one JSON object: per variant rows/s, p50/p95 batch latency (a baseline "batch" is
one row), peak RSS, and ratios against the baseline, plus the targets and whether they
are met. A benchmark, not a test: nothing here asserts a timing.

Usage: ``make bench`` (or ``python -m benchmarks.throughput [--rows 500]``)
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks import common

_LOGGER = logging.getLogger(__name__)

TARGETS = {"handler_vs_baseline": 1.3, "int8_vs_baseline": 1.8, "pipeline_vs_handler": 0.85}
PG_BASE_DSN = os.environ.get("QA_TEST_PG_DSN", "host=127.0.0.1 port=5432 user=postgres")
BENCH_DB = os.environ.get("QA_TEST_DB_PREFIX", "") + "beam_qa_bench"


def bench_rows(count: int) -> list[dict]:
    return common.squad_rows(count)


# --- workers: each runs in a process of its own ------------------------------------------

def _answers(results) -> list[list]:
    out = []
    for result in results:
        span = result.inference.span
        out.append([span.answer, span.start, span.end, span.score] if span else None)
    return out


def worker_handler(model_dir: str, rows: list[dict], batch_size: int, quantize: str, device: str,
                   tokens_per_forward: int | None = None) -> dict:
    from beam_qa.qa.handler import QuestionAnsweringModelHandler
    import torch
    handler = QuestionAnsweringModelHandler(model_dir, device=device, quantize=quantize, max_batch_size=batch_size,
                                            tokens_per_forward=tokens_per_forward)
    t0 = time.perf_counter()
    model = handler.load_model()
    load_s = time.perf_counter() - t0
    examples = [(r["question"], r["context"]) for r in rows]
    list(handler.run_inference(examples[:batch_size], model))  # warm-up, not counted
    answers, latencies = [], []
    started = time.perf_counter()
    for offset in range(0, len(examples), batch_size):
        t0 = time.perf_counter()
        answers.extend(_answers(handler.run_inference(examples[offset:offset + batch_size], model)))
        if device == "cuda":
            torch.cuda.synchronize()
        latencies.append(time.perf_counter() - t0)
    elapsed = time.perf_counter() - started
    return {"rows": len(examples), "elapsed_s": round(elapsed, 2), "rows_per_s": round(len(examples) / elapsed, 2),
            "batch_size": batch_size, "batch_latency_ms": common.percentiles_ms(latencies),
            "model_load_s": round(load_s, 2), "peak_rss_mb": round(common.peak_rss_mb()),
            "torch_threads": torch.get_num_threads(), "answers": answers}


def worker_pipeline(model_dir: str, rows: list[dict], batch_size: int, files: int) -> dict:
    """The whole bounded pipeline on local CSV files, writing answers CSVs and PostgreSQL."""
    import csv

    import psycopg

    from beam_qa import pipeline
    from beam_qa.qa.model_store import load_model

    from benchmarks.timed_handler import BATCH_LATENCIES, BATCH_SIZES, TimedHandler

    original = pipeline.make_handler
    pipeline.make_handler = lambda opts: TimedHandler(**_handler_kwargs(original(opts)))

    with psycopg.connect(f"{PG_BASE_DSN} dbname=postgres", autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{BENCH_DB}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{BENCH_DB}"')
    dsn = f"{PG_BASE_DSN} dbname={BENCH_DB}"
    load_model(model_dir, "cpu")  # the process-wide cache: the pipeline's workers reuse it
    with tempfile.TemporaryDirectory() as tmp:
        incoming = Path(tmp) / "incoming"
        incoming.mkdir()
        per_file = -(-len(rows) // files)
        for index in range(files):
            chunk = rows[index * per_file:(index + 1) * per_file]
            with (incoming / f"part-{index:03d}.csv").open("w", newline="", encoding="utf-8") as handle:
                writer = csv.writer(handle)
                writer.writerow(["id", "question", "context"])
                writer.writerows([[f"{index}-{i}", r["question"], r["context"]] for i, r in enumerate(chunk)])
        argv = [f"--input_pattern={incoming}/*.csv", f"--model={model_dir}", "--device=cpu",
                f"--pg_dsn={dsn}", f"--max_batch_size={batch_size}", "--keep_source",
                "--answers_prefix=answers/"]
        started = time.perf_counter()
        pipeline.run(argv)
        elapsed = time.perf_counter() - started
    with psycopg.connect(dsn) as conn:
        stored = conn.execute(
            "SELECT a.source_uri, a.row_index, a.answer, a.answer_start, a.answer_end, a.score FROM qa_answers a "
            "ORDER BY a.source_uri, a.row_index").fetchall()
        done = conn.execute("SELECT count(*) FROM qa_files WHERE status = 'done'").fetchone()[0]
    pipeline.make_handler = original
    answers = [[answer, start, end, score] for _, _, answer, start, end, score in stored]
    return {"rows": len(rows), "files": files, "files_done": done, "rows_stored": len(stored),
            "elapsed_s": round(elapsed, 2), "rows_per_s": round(len(rows) / elapsed, 2),
            "batch_size": batch_size, "batches": len(BATCH_LATENCIES),
            "mean_rows_per_batch": round(sum(BATCH_SIZES) / max(len(BATCH_SIZES), 1), 1),
            "batch_latency_ms": common.percentiles_ms(BATCH_LATENCIES) if BATCH_LATENCIES else None,
            "peak_rss_mb": round(common.peak_rss_mb()), "answers": answers}


def _handler_kwargs(handler) -> dict:
    return dict(model=handler._model_name, device=handler._device, quantize=handler._quantize,  # noqa: SLF001
                max_seq_len=handler._max_seq_len, doc_stride=handler._doc_stride,  # noqa: SLF001
                max_answer_len=handler._max_answer_len, **handler.batch_elements_kwargs())  # noqa: SLF001


# --- the parent: runs each variant in a fresh process and compares -------------------------

def _run_worker(args: list[str]) -> dict:
    completed = subprocess.run([sys.executable, "-m", "benchmarks.throughput", "--worker", *args],
                               check=True, stdout=subprocess.PIPE, text=True)
    return json.loads(completed.stdout.strip().splitlines()[-1])


def _agreement(a: list, b: list) -> float:
    same = sum(1 for x, y in zip(a, b) if x and y and x[:3] == y[:3])
    return round(same / len(a), 4)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=500)
    parser.add_argument("--batch-size", type=int, default=None,
                        help="rows per RunInference batch (default: the pipeline's --max_batch_size default)")
    parser.add_argument("--files", type=int, default=25, help="CSV files the pipeline variant reads")
    parser.add_argument("--variants", default="baseline,handler,pipeline,handler_int8,handler_cuda_fp16")
    parser.add_argument("--tokens-per-forward", type=int, default=0,
                        help="handler variants: padded tokens per forward pass (default: the handler's own)")
    parser.add_argument("--worker", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(message)s", stream=sys.stderr)

    if args.worker:
        kind, model_dir, count, batch_size, extra = args.worker[0], args.worker[1], int(args.worker[2]), \
            int(args.worker[3]), args.worker[4:]
        rows = bench_rows(count)
        if kind == "pipeline":
            result = worker_pipeline(model_dir, rows, batch_size, int(extra[0]))
        else:
            result = worker_handler(model_dir, rows, batch_size, quantize=extra[0], device=extra[1],
                                    tokens_per_forward=int(extra[2]) or None)
        print(json.dumps(result))
        return 0

    from beam_qa.options import CPU_MAX_BATCH_SIZE, GPU_MAX_BATCH_SIZE
    variants = args.variants.split(",")
    model_dir = str(common.base_model())
    rows = bench_rows(args.rows)
    import torch
    report: dict = {
        "benchmark": "throughput", "rows": len(rows), "rows_source": "SQuAD v1.1 dev sample (../shared/data/)",
        "model": "DistilBERT-base-sized (distilbert-base-cased-distilled-squad shape), random weights",
        "machine": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
                    "python": platform.python_version(), "torch": torch.__version__,
                    "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None},
        "tokens_per_forward": args.tokens_per_forward or "handler default",
        "variants": {}, "ratios": {}, "targets": {},
    }
    answers: dict[str, list] = {}
    if "baseline" in variants:
        records, summary = common.run_reference(Path(model_dir), rows, warmup=3)
        latencies = [r["latency_s"] for r in records]
        report["variants"]["baseline"] = {
            "what": f"transformers {summary['transformers']} question-answering pipeline, row by row",
            "rows": len(rows), "elapsed_s": round(summary["elapsed_s"], 2),
            "rows_per_s": round(len(rows) / summary["elapsed_s"], 2), "batch_size": 1,
            "batch_latency_ms": common.percentiles_ms(latencies), "peak_rss_mb": round(summary["peak_rss_mb"]),
            "torch_threads": summary["threads"]}
        answers["baseline"] = [[r["answer"], r["start"], r["end"], r["score"]] if "answer" in r else None
                               for r in records]
    budget = str(args.tokens_per_forward)
    plan = {"handler": ["handler", "none", "cpu", budget], "handler_int8": ["handler", "int8", "cpu", budget],
            "pipeline": ["pipeline", str(args.files)], "handler_cuda_fp16": ["handler", "none", "cuda", budget]}
    for name in variants:
        if name == "baseline":
            continue
        if name == "handler_cuda_fp16" and not torch.cuda.is_available():
            report["variants"][name] = {"skipped": "no CUDA GPU visible on this machine"}
            continue
        kind, *extra = plan[name]
        batch_size = args.batch_size or (GPU_MAX_BATCH_SIZE if name.endswith("cuda_fp16") else CPU_MAX_BATCH_SIZE)
        result = _run_worker([kind, model_dir, str(len(rows)), str(batch_size), *extra])
        answers[name] = result.pop("answers")
        report["variants"][name] = result

    def rate(name):
        return report["variants"].get(name, {}).get("rows_per_s")

    for name in ("handler", "handler_int8", "pipeline", "handler_cuda_fp16"):
        if rate(name) and rate("baseline"):
            report["ratios"][f"{name}_vs_baseline"] = round(rate(name) / rate("baseline"), 2)
    if rate("pipeline") and rate("handler"):
        report["ratios"]["pipeline_vs_handler"] = round(rate("pipeline") / rate("handler"), 3)
    if "baseline" in answers and "handler" in answers:
        report["variants"]["handler"]["agreement_with_baseline"] = _agreement(answers["handler"], answers["baseline"])
    if "handler" in answers and "handler_int8" in answers:
        report["variants"]["handler_int8"]["agreement_with_fp32"] = _agreement(answers["handler_int8"], answers["handler"])
    if "handler" in answers and "pipeline" in answers:
        report["variants"]["pipeline"]["answers_identical_to_handler"] = _agreement(answers["pipeline"],
                                                                                    answers["handler"])
    measured = {"handler_vs_baseline": report["ratios"].get("handler_vs_baseline"),
                "int8_vs_baseline": report["ratios"].get("handler_int8_vs_baseline"),
                "pipeline_vs_handler": report["ratios"].get("pipeline_vs_handler")}
    for name, target in TARGETS.items():
        value = measured[name]
        report["targets"][name] = {"target": target, "measured": value,
                                   "met": None if value is None else value >= target}
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
