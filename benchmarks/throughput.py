"""Throughput: every precision against the row-by-row fp32 baseline, handler and whole pipeline.

One run measures, on the same SQuAD rows (the first ``--rows``, 1,000 by default) and the
same model (``--model``: a DistilBERT-base-sized model by default, the production shape):

1. ``baseline``: the transformers 4.57 question-answering pipeline called row by row in fp32
   (what the systems beam-qa replaces did), in its own virtualenv (``benchmarks/common.py``);
2. ``handler``: our ``QuestionAnsweringModelHandler`` alone, per precision, fed batches of
   ``--batch-size`` rows the way RunInference feeds it (model load not timed);
3. ``pipeline``: the whole bounded pipeline, per precision and per file shape, each in a
   fresh process (``beam_qa.launch.run(argv)``) timed from process start to exit (Python
   start-up, model load and Beam start-up included), reading real CSV files and writing
   answers CSVs and a fresh PostgreSQL database; the rows are the same for every shape:
   ``a`` one file of all rows, ``b`` files of 10 rows, ``c`` 10 files. The mean batch
   size comes from RunInference's own ``inference_request_batch_size`` distribution in
   ``PipelineResult.metrics()``; the answers are read back from ``qa_answers`` and
   compared with the handler's in the same precision.

It prints one JSON object (machine and CPU features, every variant, ratios against the
baseline, and the targets of issues 10 and 12 with met / not met) and a short summary on
stderr. A benchmark, not a test: nothing here asserts a timing. The pipeline is never
patched: ``--pipeline-args`` words are appended to every pipeline run instead.

Usage: ``make bench`` (``python -m benchmarks.throughput --help``); on a GPU machine
``make bench-gpu`` (README "Throughput").
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import os
import platform
import re
import shlex
import sys
import tempfile
import time
from pathlib import Path

from benchmarks import common

_LOGGER = logging.getLogger(__name__)

PG_BASE_DSN = os.environ.get("QA_TEST_PG_DSN", "host=127.0.0.1 port=5432 user=postgres")
# Side-by-side checkouts share one PostgreSQL server; the prefix keeps their databases apart.
DB_PREFIX = os.environ.get("QA_TEST_DB_PREFIX", "")
VARIANTS = ("baseline", "handler", "pipeline")
SHAPE_NAMES = ("a", "b", "c")


def shapes(rows: int) -> dict[str, tuple[int, int]]:
    """``{shape: (files, rows per file)}`` over the same ``rows`` rows."""
    return {"a": (1, rows), "b": (max(rows // 10, 1), 10), "c": (10, max(rows // 10, 1))}


# --- workers: each runs in a process of its own -------------------------------------------

def _answers(results) -> list[list | None]:
    out = []
    for result in results:
        span = result.inference.span
        out.append([span.answer, span.start, span.end, span.score] if span else None)
    return out


def worker_handler(spec: dict) -> dict:
    """Our handler alone in one precision; the model load is not timed."""
    import torch

    from beam_qa.qa.handler import QuestionAnsweringModelHandler
    rows = common.squad_rows(spec["rows"])
    batch_size = spec["batch_size"]
    handler = QuestionAnsweringModelHandler(spec["model"], device=spec["device"], precision=spec["precision"],
                                            runtime=spec.get("runtime", "auto"), max_batch_size=batch_size,
                                            tokens_per_forward=spec.get("tokens_per_forward") or None)
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
        if model.device.startswith("cuda"):
            torch.cuda.synchronize()
        latencies.append(time.perf_counter() - t0)
    elapsed = time.perf_counter() - started
    return {"rows": len(examples), "elapsed_s": round(elapsed, 2), "rows_per_s": round(len(examples) / elapsed, 2),
            "batch_size": batch_size, "tokens_per_forward": spec.get("tokens_per_forward") or "handler default",
            "batch_latency_ms": common.percentiles_ms(latencies), "model_load_s": round(load_s, 2),
            "model_id": model.model_id, "peak_rss_mb": round(common.peak_rss_mb()),
            "torch_threads": torch.get_num_threads(), "answers": answers}


def worker_pipeline(spec: dict) -> dict:
    """``beam_qa.launch.run(argv)`` as it is, then RunInference's own batch-size figures."""
    from apache_beam.metrics.metric import MetricsFilter

    from beam_qa import launch
    result = launch.run(spec["argv"])
    query = result.metrics().query(MetricsFilter().with_namespace("beam_qa"))
    distributions: dict[str, dict] = {}
    for item in query["distributions"]:
        value = item.committed if item.committed is not None else item.attempted
        if value is None or not value.count:
            continue
        merged = distributions.setdefault(item.key.metric.name, {"count": 0, "sum": 0})
        merged["count"] += value.count
        merged["sum"] += value.sum
    return {"distributions": distributions, "peak_rss_mb": round(common.peak_rss_mb())}


def worker_prepare(spec: dict) -> dict:
    """Loads the model once in a precision, so one-off work (the ONNX files) is cached on disk."""
    from beam_qa.qa.model_store import load_model
    model = load_model(spec["model"], spec["device"], spec["precision"], spec.get("runtime", "auto"))
    return {"model_id": model.model_id}


WORKERS = {"handler": worker_handler, "pipeline": worker_pipeline, "prepare": worker_prepare}


def _run_worker(kind: str, spec: dict) -> tuple[dict, float]:
    """Runs a worker in a fresh process; returns its JSON and the process's wall-clock seconds."""
    return common.run_worker("benchmarks.throughput", kind, spec)


# --- the pipeline variant: files, a fresh database, answers read back ------------------------

def write_shape(directory: Path, rows: list[dict], files: int, per_file: int) -> Path:
    """Writes ``rows`` as ``files`` CSV files ``part-NNNN.csv``; returns the input directory."""
    incoming = directory / "incoming"
    incoming.mkdir(parents=True)
    for index in range(files):
        chunk = rows[index * per_file:(index + 1) * per_file]
        with (incoming / f"part-{index:04d}.csv").open("w", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle)
            writer.writerow(["id", "question", "context"])
            writer.writerows([[f"{index}-{i}", r["question"], r["context"]] for i, r in enumerate(chunk)])
    return incoming


def fresh_database(name: str) -> str:
    import psycopg
    with psycopg.connect(f"{PG_BASE_DSN} dbname=postgres", autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{name}"')
    return f"{PG_BASE_DSN} dbname={name}"


def drop_database(name: str) -> None:
    import psycopg
    with psycopg.connect(f"{PG_BASE_DSN} dbname=postgres", autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def stored_answers(dsn: str, per_file: int, total: int) -> tuple[list[list | None], int, list[str]]:
    """Answers from ``qa_answers`` in global row order, the done-file count and the model ids."""
    import psycopg
    with psycopg.connect(dsn) as conn:
        rows = conn.execute("SELECT source_uri, row_index, answer, answer_start, answer_end, score, model "
                            "FROM qa_answers").fetchall()
        done = conn.execute("SELECT count(*) FROM qa_files WHERE status = 'done'").fetchone()[0]
    answers: list[list | None] = [None] * total
    for uri, row_index, answer, start, end, score, _ in rows:
        file_index = int(re.search(r"part-(\d+)\.csv$", uri).group(1))
        answers[file_index * per_file + row_index] = None if answer is None else [answer, start, end, score]
    return answers, done, sorted({str(r[6]) for r in rows})


def run_pipeline_variant(args, model: str, rows: list[dict], shape: str, precision: str, batch_size: int) -> dict:
    files, per_file = shapes(len(rows))[shape]
    database = f"{DB_PREFIX}beam_qa_bench_{shape}_{precision}"
    with tempfile.TemporaryDirectory(prefix=f"bench-{shape}-") as tmp:
        incoming = write_shape(Path(tmp), rows, files, per_file)
        dsn = fresh_database(database)
        argv = [f"--input_pattern={incoming}/*.csv", f"--model={model}", f"--device={args.device}",
                f"--precision={precision}", f"--runtime={args.runtime}", f"--pg_dsn={dsn}", f"--max_batch_size={batch_size}",
                "--keep_source", f"--answers_prefix={tmp}/answers/", f"--error_prefix={tmp}/errors/",
                *shlex.split(args.pipeline_args)]
        result, elapsed = _run_worker("pipeline", {"argv": argv})
        answers, done, model_ids = stored_answers(dsn, per_file, len(rows))
        answer_files = len(list((Path(tmp) / "answers").rglob("*.answers.csv")))
    drop_database(database)
    sizes = result["distributions"].get("inference_request_batch_size", {"count": 0, "sum": 0})
    latency = result["distributions"].get("inference_batch_latency_micro_secs", {"count": 0, "sum": 0})
    return {
        "shape": shape, "files": files, "rows_per_file": per_file, "precision": precision,
        "rows_stored": sum(a is not None for a in answers), "files_done": done, "answers_csv_files": answer_files,
        "elapsed_s": round(elapsed, 2), "rows_per_s": round(len(rows) / elapsed, 2),
        "max_batch_size": batch_size, "batches": sizes["count"],
        "mean_batch_size": round(sizes["sum"] / sizes["count"], 1) if sizes["count"] else None,
        "mean_batch_latency_ms": round(latency["sum"] / latency["count"] / 1000, 1) if latency["count"] else None,
        "model_ids": model_ids, "peak_rss_mb": result["peak_rss_mb"], "answers": answers,
    }


# --- comparing and judging ------------------------------------------------------------------

def agreement(a: list, b: list) -> float | None:
    """Share of rows whose answer text and offsets are identical (scores may differ in the last bits)."""
    if not a or len(a) != len(b):
        return None
    return round(sum(1 for x, y in zip(a, b) if x and y and x[:3] == y[:3]) / len(a), 4)


def _target(issue: int, what: str, target: float, measured: float | None) -> dict:
    return {"issue": issue, "what": what, "target": target, "measured": measured,
            "met": None if measured is None else measured >= target}


def targets(report: dict, best: str) -> list[dict]:
    """The targets of issues 10 and 12, judged on what this run measured."""
    out = []
    pipelines = report["pipeline"]
    for shape in SHAPE_NAMES:
        for precision, target in (("fp32", 1.2), ("int8", 2.0)):
            run = pipelines.get(shape, {}).get(precision)
            if run is not None:
                out.append(_target(10, f"pipeline {precision} vs baseline, shape {shape}", target,
                                   run.get("vs_baseline")))
        if shape in ("a", "c"):
            for precision, run in pipelines.get(shape, {}).items():
                measured = run["mean_batch_size"] / run["max_batch_size"] if run["mean_batch_size"] else None
                out.append(_target(10, f"mean batch size / max_batch_size, shape {shape}, {precision}", 0.8,
                                   None if measured is None else round(measured, 3)))
    handler = report["handler"].get(best)
    if handler is not None:
        out.append(_target(12, f"handler in the best precision within the quality bound ({best}) vs baseline",
                           3.0, handler.get("vs_baseline")))
    for shape in SHAPE_NAMES:
        run = pipelines.get(shape, {}).get(best)
        if run is not None:
            out.append(_target(12, f"whole bounded pipeline ({best}) vs baseline, shape {shape}", 2.5,
                               run.get("vs_baseline")))
    for shape in SHAPE_NAMES:
        run = pipelines.get(shape, {}).get("fp32")
        if run is not None and "answers_identical_to_handler" in run:
            out.append(_target(12, f"pipeline fp32 answers identical to the handler's, shape {shape}", 1.0,
                               run["answers_identical_to_handler"]))
    return out


def summary_lines(report: dict) -> list[str]:
    lines = []
    baseline = report.get("baseline") or {}
    if baseline:
        lines.append(f"baseline (4.57 pipeline, row by row, fp32): {baseline['rows_per_s']} rows/s")
    for precision, run in report["handler"].items():
        lines.append(f"handler {precision}: {run['rows_per_s']} rows/s ({run.get('vs_baseline', '-')}x)")
    for shape, runs in report["pipeline"].items():
        for precision, run in runs.items():
            lines.append(f"pipeline shape {shape} {precision}: {run['rows_per_s']} rows/s "
                         f"({run.get('vs_baseline', '-')}x), mean batch {run['mean_batch_size']}")
    for target in report["targets"]:
        verdict = {True: "met", False: "NOT MET", None: "not measured"}[target["met"]]
        lines.append(f"issue {target['issue']}: {target['what']} >= {target['target']}: "
                     f"{target['measured']} {verdict}")
    return lines


# --- the parent ---------------------------------------------------------------------------------

def resolve_model(name: str) -> tuple[str, str]:
    """``(directory, description)`` for ``--model``."""
    if name == "base":
        return str(common.base_model()), ("DistilBERT-base-sized (the shape of distilbert-base-cased-distilled-"
                                          "squad), random weights: speed does not depend on weight values")
    if name == "demo":
        from devtools import demo_model
        built = demo_model.built_model()
        if built is None:
            raise SystemExit("error: --model demo needs the demo model; run `make demo-model` first")
        return str(built), "the demo model (all-MiniLM-L6-v2 fine-tuned on SQuAD, make demo-model)"
    if not Path(name).is_dir():
        raise SystemExit(f"error: --model {name!r} is neither base, demo nor a model directory")
    return name, name


def machine() -> dict:
    import torch

    from beam_qa.qa import precision as precisions
    try:
        import onnxruntime
        ort = onnxruntime.__version__
    except ImportError:
        ort = None
    return {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
            "cpu_features": list(precisions.cpu_features()), "python": platform.python_version(),
            "torch": torch.__version__, "onnxruntime": ort, "torch_threads": torch.get_num_threads(),
            "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
            "load_average_at_start": [round(x, 2) for x in os.getloadavg()]}


def parse_args(argv: list[str] | None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--rows", type=int, default=1000, help="SQuAD rows; the same rows for every variant")
    parser.add_argument("--model", default="base", help="base (DistilBERT-base-sized), demo, or a model directory")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--variants", default=",".join(VARIANTS), help=f"any of {','.join(VARIANTS)}")
    parser.add_argument("--precisions", default="fp32,bf16,int8",
                        help="comma-separated: fp32, bf16, fp16, int8, auto")
    parser.add_argument("--runtime", choices=["auto", "torch", "onnxruntime"], default="auto",
                        help="what runs the forward pass in the handler and the pipeline (beam_qa --runtime)")
    parser.add_argument("--shapes", default=",".join(SHAPE_NAMES),
                        help="pipeline file shapes: a one file of all rows, b files of 10 rows, c 10 files")
    parser.add_argument("--batch-size", default="",
                        help="rows per RunInference batch (default: --max_batch_size's default for the device); "
                        "several, comma-separated, sweep the handler")
    parser.add_argument("--tokens-per-forward", default="",
                        help="handler: padded tokens per forward pass (default: the handler's); several sweep")
    parser.add_argument("--pipeline-args", default="",
                        help="words appended to every pipeline run; give it with '=' since it starts with "
                        "dashes: --pipeline-args=\"--direct_num_workers=2 --direct_running_mode=multi_threading\"")
    parser.add_argument("--no-baseline", action="store_true",
                        help="skip the 4.57 baseline (machines without it, e.g. the GPU machine)")
    parser.add_argument("--worker", nargs=2, metavar=("KIND", "SPEC"), help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(message)s", stream=sys.stderr)
    if common.serve_worker(args.worker, WORKERS):
        return 0

    from beam_qa.options import CPU_MAX_BATCH_SIZE, GPU_MAX_BATCH_SIZE
    from beam_qa.qa import precision as precisions
    variants = [v for v in args.variants.split(",") if v]
    if args.no_baseline and "baseline" in variants:
        variants.remove("baseline")
    wanted = [p for p in args.precisions.split(",") if p]
    resolved = {p: precisions.choose(args.device) if p == "auto" else p for p in wanted}
    run_precisions = list(dict.fromkeys(resolved.values()))
    best = precisions.choose(args.device)
    batch_sizes = _ints(args.batch_size) or [GPU_MAX_BATCH_SIZE if args.device == "cuda" else CPU_MAX_BATCH_SIZE]
    budgets = _ints(args.tokens_per_forward) or [0]
    model, description = resolve_model(args.model)
    rows = common.squad_rows(args.rows)
    report: dict = {
        "benchmark": "throughput", "rows": len(rows), "rows_source": "SQuAD v1.1 dev sample (../shared/data/)",
        "model": description, "device": args.device, "machine": machine(),
        "precisions": resolved, "best_precision_within_quality_bound": best,
        "quality_bound_f1": precisions.QUALITY_BOUND_F1, "recorded_f1_loss": dict(precisions.MEASURED_F1_LOSS),
        "runtime": args.runtime, "pipeline_args": shlex.split(args.pipeline_args),
        "shapes": {s: shapes(len(rows))[s] for s in SHAPE_NAMES},
        "baseline": None, "handler": {}, "pipeline": {}, "targets": [],
    }
    answers: dict[str, list] = {}

    if "baseline" in variants:
        _LOGGER.warning("baseline: transformers 4.57 pipeline, row by row, %d rows", len(rows))
        records, summary = common.run_reference(Path(model), rows, warmup=3)
        report["baseline"] = {
            "what": f"transformers {summary['transformers']} question-answering pipeline, row by row, fp32",
            "rows": len(rows), "elapsed_s": round(summary["elapsed_s"], 2),
            "rows_per_s": round(len(rows) / summary["elapsed_s"], 2), "batch_size": 1,
            "batch_latency_ms": common.percentiles_ms([r["latency_s"] for r in records]),
            "peak_rss_mb": round(summary["peak_rss_mb"]), "torch_threads": summary["threads"]}
        answers["baseline"] = [[r["answer"], r["start"], r["end"], r["score"]] if "answer" in r else None
                               for r in records]
    base_rate = (report["baseline"] or {}).get("rows_per_s")

    for precision in run_precisions:
        # The ONNX files (fp32 and int8 on a CPU) are built once per machine, as a worker image would
        # ship them, not inside a timed run; a torch precision only loads.
        _run_worker("prepare", {"model": model, "device": args.device, "precision": precision,
                                "runtime": args.runtime})

    if "handler" in variants:
        for precision in run_precisions:
            for batch_size in batch_sizes:
                for budget in budgets:
                    name = precision if (len(batch_sizes), len(budgets)) == (1, 1) else \
                        f"{precision}/batch{batch_size}/tokens{budget or 'default'}"
                    _LOGGER.warning("handler %s", name)
                    result, _ = _run_worker("handler", {
                        "model": model, "device": args.device, "precision": precision, "runtime": args.runtime,
                        "rows": len(rows),
                        "batch_size": batch_size, "tokens_per_forward": budget})
                    answers[f"handler/{name}"] = result.pop("answers")
                    if base_rate:
                        result["vs_baseline"] = round(result["rows_per_s"] / base_rate, 2)
                    reference = "baseline" if precision == "fp32" else "handler/fp32"
                    if reference in answers:
                        result[f"answers_identical_to_{reference.replace('/', '_')}"] = agreement(
                            answers[f"handler/{name}"], answers[reference])
                    report["handler"][name] = result

    if "pipeline" in variants:
        for shape in [s for s in args.shapes.split(",") if s]:
            for precision in run_precisions:
                _LOGGER.warning("pipeline shape %s %s", shape, precision)
                result = run_pipeline_variant(args, model, rows, shape, precision, batch_sizes[0])
                stored = result.pop("answers")
                if base_rate:
                    result["vs_baseline"] = round(result["rows_per_s"] / base_rate, 2)
                if f"handler/{precision}" in answers:
                    result["answers_identical_to_handler"] = agreement(stored, answers[f"handler/{precision}"])
                report["pipeline"].setdefault(shape, {})[precision] = result

    report["targets"] = targets(report, best)
    print(json.dumps(report, indent=2))
    for line in summary_lines(report):
        print(line, file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
