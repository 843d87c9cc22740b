"""Cost per row: the whole bounded pipeline's steady state with a cheap model, and where a row's time goes.

With a model that costs little (the tiny random-weight model, ``--model tiny``), what the pipeline
spends around the model decides how fast a GPU worker can be fed. One run measures, on SQuAD rows
(cycled when more are asked for than the sample holds):

1. ``pipeline``: ``python -m beam_qa`` in bounded mode in a fresh process per run, reading real
   CSV files and writing answers CSVs and a fresh PostgreSQL database, per file shape (``1x20000``:
   one file of 20,000 rows, ``200x100``: 200 files of 100) and per runner configuration
   (``--runners``: Beam's defaults, and two worker threads). Start-up (Python, Beam, the model
   load) is taken out by a run of one 100-row file in the same configuration: the steady state is
   ``(rows - 100) / (seconds - seconds of the 100-row run)``; the CPU seconds of the process
   (every thread; PostgreSQL's own work is not in them) are reported the same way. Every run is
   checked: rows stored, files done, answers CSVs written.
2. ``stages``: each stage of the same code alone on the same rows, in one fresh process and one
   thread at a time, in CPU microseconds per row: reading (``_ReadCsvFn`` on the file's bytes),
   tokenizing (``windows.tokenize``), splitting into micro-batches, the model's forward passes,
   decoding (``decode.batch_candidates`` and the merge of each row's windows), PostgreSQL (the
   chunk commits and the read-back for the CSV, client and server CPU), and the answers CSV
   (``render_answers_csv``). ``beam`` is what the whole pipeline spent per row (steady state,
   first shape, first configuration) beyond the client-side stages: Beam's runner, coders and
   the DoFns' own glue.
3. ``real_model``: the same pipeline and handler with the DistilBERT-base-sized model (fp32 on a
   CPU, the production shape) on ``--real-rows`` rows, and ``baseline``: the transformers 4.57
   question-answering pipeline row by row on the same rows, for both models (its own virtualenv,
   ``benchmarks/common.py``).

It prints one JSON object (machine, CPU features, load average before and after, every figure,
and the target of the cost-per-row issue with met / not met) and a summary on stderr. A
benchmark, not a test: nothing here asserts a timing. Figures on a machine shared with other work
are noisy: compare variants of one run, and read the load average it recorded.

``--device cuda --precision bf16`` runs the same on a GPU (``--no-baseline`` where the baseline's
virtualenv cannot be built); ``--model base --runners default`` measures the production shape.

Usage: ``make bench-overhead`` (``python -m benchmarks.overhead --help``).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import resource
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks import common
from benchmarks.throughput import drop_database, fresh_database, machine, write_shape

_LOGGER = logging.getLogger(__name__)

DB_PREFIX = os.environ.get("QA_TEST_DB_PREFIX", "")
RUNNERS = {"default": [], "threads2": ["--direct_num_workers=2", "--direct_running_mode=multi_threading"]}
TARGET_ROWS_PER_S = 2000


def parse_shape(text: str) -> tuple[int, int]:
    """``"200x100"`` -> ``(200 files, 100 rows each)``."""
    files, per_file = text.lower().split("x")
    return int(files), int(per_file)


# --- the whole pipeline ------------------------------------------------------------------------

def run_pipeline(model: str, rows: list[dict], files: int, per_file: int, extra: list[str], name: str) -> dict:
    """One bounded run in a fresh process: wall and CPU seconds, and what it stored."""
    import psycopg
    database = f"{DB_PREFIX}beam_qa_overhead_{name}"
    with tempfile.TemporaryDirectory(prefix="overhead-") as tmp:
        incoming = write_shape(Path(tmp), rows[:files * per_file], files, per_file)
        dsn = fresh_database(database)
        argv = [sys.executable, "-m", "beam_qa", f"--input_pattern={incoming}/*.csv", f"--model={model}",
                f"--pg_dsn={dsn}", "--keep_source", f"--answers_prefix={tmp}/answers/",
                f"--error_prefix={tmp}/errors/", "--status_interval_secs=0", *extra]
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        started = time.perf_counter()
        completed = subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, check=False)
        elapsed = time.perf_counter() - started
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        if completed.returncode != 0:
            raise RuntimeError(f"the pipeline exited with {completed.returncode}:\n{completed.stderr[-4000:]}")
        with psycopg.connect(dsn) as conn:
            stored = conn.execute("SELECT count(*) FROM qa_answers WHERE answer IS NOT NULL OR error IS NOT NULL"
                                  ).fetchone()[0]
            done = conn.execute("SELECT count(*) FROM qa_files WHERE status = 'done'").fetchone()[0]
        answers_csv = len(list((Path(tmp) / "answers").rglob("*.answers.csv")))
    drop_database(database)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return {"files": files, "rows_per_file": per_file, "rows": files * per_file, "elapsed_s": round(elapsed, 2),
            "cpu_s": round(cpu, 2), "rows_stored": stored, "files_done": done, "answers_csv_files": answers_csv,
            "all_stored_and_done": stored == files * per_file and done == files and answers_csv == files}


def steady(run: dict, startup: dict) -> dict:
    """The steady state of ``run``: its rows and seconds beyond those of the start-up run."""
    rows = run["rows"] - startup["rows"]
    seconds = run["elapsed_s"] - startup["elapsed_s"]
    cpu = run["cpu_s"] - startup["cpu_s"]
    return {"steady_rows_per_s": round(rows / seconds, 1) if seconds > 0 else None,
            "steady_cpu_us_per_row": round(cpu / rows * 1e6) if rows > 0 else None,
            "whole_run_rows_per_s": round(run["rows"] / run["elapsed_s"], 1)}


# --- stages alone, in a worker process ----------------------------------------------------------

class _Clock:
    """CPU seconds of this process (every thread) per named stage."""

    def __init__(self):
        self.seconds: dict[str, float] = {}

    def __call__(self, name: str):
        clock = self

        class _Span:
            def __enter__(self):
                self.start = time.process_time()

            def __exit__(self, *exc):
                clock.seconds[name] = clock.seconds.get(name, 0.0) + time.process_time() - self.start
        return _Span()


class _Bytes:
    """Storage that hands ``_ReadCsvFn`` the file's bytes."""

    def __init__(self, data: bytes):
        self.data = data

    def read_bytes(self, uri: str, generation: int, max_bytes: int | None = None) -> bytes:
        return self.data  # the benchmark's file is within every limit


class _Manifest:
    """The only PostgreSQL call ``_ReadCsvFn`` makes, accepted (the commits are timed on their own)."""

    def record_manifest(self, *args) -> bool:
        return True


def _backend_cpu_s(dsn: str, database: str) -> float | None:
    """CPU seconds of the database's server processes so far (None where /proc cannot tell)."""
    import psycopg
    with psycopg.connect(dsn) as conn:
        pids = [pid for (pid,) in conn.execute(
            "SELECT pid FROM pg_stat_activity WHERE datname = %s AND pid <> pg_backend_pid()", (database,))]
    total = 0.0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            return None
        total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total


def worker_stages(spec: dict) -> dict:
    """Every client-side stage alone on the same rows, in CPU microseconds per row."""
    import numpy as np
    import torch

    from beam_qa import runtime
    from beam_qa.qa import decode, forward
    from beam_qa.qa.handler import QuestionAnsweringModelHandler, default_tokens_per_forward
    from beam_qa.qa.windows import micro_batches, tokenize
    from beam_qa.reading import _ReadCsvFn  # pylint: disable=protected-access
    from beam_qa.records import Claim, FileEvent, RowOutcome
    from beam_qa.settings import InputSettings, PostgresSettings, StorageSettings
    from beam_qa.sinks.gcs_csv import render_answers_csv

    rows = common.cycled_squad_rows(spec["rows"])
    clock = _Clock()
    with tempfile.TemporaryDirectory() as tmp:
        data = (write_shape(Path(tmp), rows, 1, len(rows)) / "part-0000.csv").read_bytes()
    event = FileEvent(uri="/bench/part-0000.csv", generation=1, size=len(data), root="/bench/",
                      relative_name="part-0000.csv", event_time=time.time(), trigger="bench")
    read = _ReadCsvFn(InputSettings(), PostgresSettings("unused"), StorageSettings())
    read.files, read.pg = _Bytes(data), _Manifest()
    with clock("reading"):
        chunks = list(read.process(Claim(event, 1)))

    handler = QuestionAnsweringModelHandler(spec["model"], device=spec["device"], precision=spec["precision"])
    model = handler.load_model()
    settings = handler.settings
    examples = [(row.question, row.context) for chunk in chunks for row in chunk.rows]
    batch_size = settings.max_batch_size
    budget = default_tokens_per_forward(model.device, model.precision)
    names = forward.input_names(model.tokenizer)
    spans = []
    list(handler.run_inference(examples[:batch_size], model))  # first calls allocate: not timed
    for offset in range(0, len(examples), batch_size):
        batch = examples[offset:offset + batch_size]
        with clock("tokenizing"):
            windows = tokenize(batch, model.tokenizer, max_seq_len=settings.max_seq_len,
                               doc_stride=settings.doc_stride)
        with clock("splitting"):
            plan = micro_batches(windows.lengths, budget)
        start_logits = np.zeros(windows.ids.shape, dtype=np.float32)
        end_logits = np.zeros(windows.ids.shape, dtype=np.float32)
        with clock("model"), torch.inference_mode():
            for rows_ in plan:
                output = model.model(**{k: torch.from_numpy(v).to(model.device)
                                        for k, v in windows.inputs(rows_, names).items()})
                start_logits[rows_, :output.start_logits.shape[1]] = output.start_logits.float().cpu().numpy()
                end_logits[rows_, :output.end_logits.shape[1]] = output.end_logits.float().cpu().numpy()
        with clock("decoding"):
            found = decode.batch_candidates(start_logits, end_logits, windows.allowed, windows.lengths,
                                            max_answer_len=settings.max_answer_len)
            bounds = windows.example_bounds(len(batch)).tolist()
            for index, (_, context) in enumerate(batch):
                encodings = windows.encodings[bounds[index]:bounds[index + 1]]
                spans.append(decode.best_answer(context, found[bounds[index]:bounds[index + 1]],
                                                lambda w, s, e, enc=encodings: decode.word_aligned_span(enc[w], s, e)))

    database = f"{DB_PREFIX}beam_qa_overhead_stages"
    pg = PostgresSettings(fresh_database(database))
    store = runtime.postgres(pg)
    attempt = store.claim(event)
    store.record_manifest(event, attempt, ["id", "question", "context"], len(examples), len(chunks))
    answers = iter(spans)
    outcomes = [[RowOutcome(event=event, attempt=attempt, chunk=chunk.index, chunk_first_row=chunk.first_row,
                            chunk_rows=len(chunk.rows), row=row, answer=span.answer, score=span.score,
                            start=span.start, end=span.end, model=model.model_id)
                 for row, span in zip(chunk.rows, answers)] for chunk in chunks]
    server_before = _backend_cpu_s(pg.dsn, database) or 0.0
    with clock("postgres"):
        for chunk_outcomes in outcomes:
            store.commit_rows(chunk_outcomes)
        header, stored = store.stored_file(event)
    server = _backend_cpu_s(pg.dsn, database)
    runtime.close()
    drop_database(database)
    with clock("csv"):
        render_answers_csv(header, stored)
    per_row = {name: round(seconds / len(examples) * 1e6, 1) for name, seconds in clock.seconds.items()}
    per_row["postgres_server"] = None if server is None else round((server - server_before) / len(examples) * 1e6, 1)
    return {"rows": len(examples), "cpu_us_per_row": per_row, "torch_threads": torch.get_num_threads(),
            "model_id": model.model_id, "answered": sum(span is not None for span in spans)}


def worker_handler(spec: dict) -> dict:
    """The handler alone, batches of its default size, model load and first batch not timed."""
    from beam_qa.qa.handler import QuestionAnsweringModelHandler
    rows = common.cycled_squad_rows(spec["rows"])
    handler = QuestionAnsweringModelHandler(spec["model"], device=spec["device"], precision=spec["precision"])
    model = handler.load_model()
    examples = [(r["question"], r["context"]) for r in rows]
    size = handler.settings.max_batch_size
    list(handler.run_inference(examples[:size], model))
    started, cpu = time.perf_counter(), time.process_time()
    for offset in range(0, len(examples), size):
        list(handler.run_inference(examples[offset:offset + size], model))
    elapsed = time.perf_counter() - started
    return {"rows": len(examples), "rows_per_s": round(len(examples) / elapsed, 1),
            "cpu_us_per_row": round((time.process_time() - cpu) / len(examples) * 1e6), "model_id": model.model_id}


WORKERS = {"stages": worker_stages, "handler": worker_handler}


def _run_worker(kind: str, spec: dict) -> dict:
    return common.run_worker("benchmarks.overhead", kind, spec)[0]


# --- the parent ---------------------------------------------------------------------------------

def resolve_model(name: str) -> tuple[str, str]:
    if name == "tiny":
        return str(common.tiny_model()), "tiny random-weight DistilBERT (2 layers, dim 64)"
    if name == "base":
        return str(common.base_model()), "DistilBERT-base-sized, random weights"
    if not Path(name).is_dir():
        raise SystemExit(f"error: --model {name!r} is neither tiny, base nor a model directory")
    return name, name


def pipeline_figures(model: str, rows: list[dict], shapes: list[tuple[int, int]], runners: list[str],
                     extra: list[str], startup_rows: int, tag: str) -> dict:
    out: dict = {}
    for runner in runners:
        flags = RUNNERS[runner] + extra
        _LOGGER.warning("%s pipeline, %s: start-up run (1 file of %d rows)", tag, runner, startup_rows)
        startup = run_pipeline(model, rows, 1, startup_rows, flags, f"{tag}_{runner}_startup")
        figures = {"flags": flags, "startup_run": startup}
        for files, per_file in shapes:
            name = f"{files}x{per_file}"
            _LOGGER.warning("%s pipeline, %s: %s", tag, runner, name)
            run = run_pipeline(model, rows, files, per_file, flags, f"{tag}_{runner}_{name}")
            figures[name] = {**run, **steady(run, startup)}
        out[runner] = figures
    return out


def breakdown(stages: dict, pipeline_cpu_us: float | None) -> dict:
    """Stage shares of the pipeline's steady CPU per row; ``beam`` is the rest."""
    client = {k: v for k, v in stages["cpu_us_per_row"].items() if k != "postgres_server" and v is not None}
    table = dict(client)
    if pipeline_cpu_us is not None:
        table["beam"] = round(max(pipeline_cpu_us - sum(client.values()), 0.0), 1)
        table["share_of_pipeline_cpu"] = {k: round(v / pipeline_cpu_us, 3) for k, v in list(table.items())
                                          if isinstance(v, float)}
    table["postgres_server"] = stages["cpu_us_per_row"].get("postgres_server")
    return table


def parse_args(argv: list[str] | None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--model", default="tiny", help="tiny, base or a model directory: the cheap model")
    parser.add_argument("--rows", type=int, default=20000, help="rows per pipeline run (SQuAD, cycled)")
    parser.add_argument("--shapes", default="1x20000,200x100", help="FILESxROWS, comma-separated")
    parser.add_argument("--runners", default="default,threads2",
                        help="runner configurations: default (Beam's), threads2 (" + " ".join(RUNNERS["threads2"]) + ")")
    parser.add_argument("--startup-rows", type=int, default=100, help="rows of the start-up run subtracted")
    parser.add_argument("--stage-rows", type=int, default=4000, help="rows for the per-stage breakdown (0: none)")
    parser.add_argument("--real-rows", type=int, default=300,
                        help="rows for the DistilBERT-base-sized figures and the row-by-row baselines (0: none)")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--precision", default="fp32", help="fp32, bf16, fp16, int8 or auto (beam_qa --precision)")
    parser.add_argument("--pipeline-args", default="", help="words appended to every pipeline run (with '=')")
    parser.add_argument("--no-baseline", action="store_true",
                        help="skip the row-by-row baselines (machines without their virtualenv, e.g. a GPU machine)")
    parser.add_argument("--worker", nargs=2, metavar=("KIND", "SPEC"), help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(message)s", stream=sys.stderr)
    if common.serve_worker(args.worker, WORKERS):
        return 0
    shapes = [parse_shape(s) for s in args.shapes.split(",") if s]
    runners = [r for r in args.runners.split(",") if r]
    unknown = [r for r in runners if r not in RUNNERS]
    if unknown:
        raise SystemExit(f"error: unknown --runners {unknown}; choose from {sorted(RUNNERS)}")
    model, description = resolve_model(args.model)
    rows = common.cycled_squad_rows(max(args.rows, max(f * p for f, p in shapes), args.startup_rows))
    extra = [f"--device={args.device}", f"--precision={args.precision}", *shlex.split(args.pipeline_args)]
    device = {"device": args.device, "precision": args.precision}
    report: dict = {"benchmark": "overhead", "model": description, "machine": machine(), "rows": args.rows,
                    "startup_rows": args.startup_rows, "pipeline_args": extra}
    report["pipeline"] = pipeline_figures(model, rows, shapes, runners, extra, args.startup_rows, "cheap")
    first = report["pipeline"][runners[0]][f"{shapes[0][0]}x{shapes[0][1]}"]
    if args.stage_rows:
        _LOGGER.warning("stages alone, %d rows", args.stage_rows)
        stages = _run_worker("stages", {"model": model, "rows": args.stage_rows, **device})
        report["stages"] = {**stages, "breakdown_us_per_row": breakdown(stages, first["steady_cpu_us_per_row"]),
                            "pipeline_for_beam_share": f"{runners[0]}, {shapes[0][0]}x{shapes[0][1]}"}
    if args.real_rows:
        real, real_description = resolve_model("base")
        real_rows = rows[:args.real_rows]
        _LOGGER.warning("real model: handler, pipeline and baselines on %d rows", len(real_rows))
        report["real_model"] = {
            "model": real_description,
            "handler": _run_worker("handler", {"model": real, "rows": len(real_rows), **device}),
            "pipeline": pipeline_figures(real, real_rows, [(1, len(real_rows))], runners[:1], extra,
                                         min(args.startup_rows, len(real_rows) // 3), "real")}
        report["baseline"] = {}
        for name, directory in () if args.no_baseline else (("cheap_model", model), ("real_model", real)):
            _, summary = common.run_reference(Path(directory), real_rows, warmup=3)
            report["baseline"][name] = {
                "what": f"transformers {summary['transformers']} question-answering pipeline, row by row, fp32",
                "rows": len(real_rows), "rows_per_s": round(len(real_rows) / summary["elapsed_s"], 1)}
    report["machine"]["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
    report["targets"] = []
    for runner, figures in report["pipeline"].items():
        for files, per_file in shapes:
            run = figures[f"{files}x{per_file}"]
            measured = run["steady_rows_per_s"]
            report["targets"].append({
                "what": f"steady state, cheap model, {files} file(s) x {per_file} rows, {runner}, every row stored "
                        "and every file done", "target": TARGET_ROWS_PER_S, "measured": measured,
                "met": bool(measured and measured >= TARGET_ROWS_PER_S and run["all_stored_and_done"])})
    print(json.dumps(report, indent=2))
    for target in report["targets"]:
        print(f"{target['what']}: {target['measured']} rows/s (target {target['target']}): "
              f"{'met' if target['met'] else 'NOT MET'}", file=sys.stderr)
    if "stages" in report:
        print(f"per-row CPU (us): {report['stages']['breakdown_us_per_row']}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
