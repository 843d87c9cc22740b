"""Load benchmark: many small files uploaded at once through the whole local stack.

Starts its own stack (Pub/Sub emulator, fake-gcs-server, the streaming pipeline on the
DirectRunner; free ports, its own bucket, subscription and PostgreSQL database), uploads
``--files`` CSVs of ``--rows`` SQuAD rows as fast as a thread pool can, waits until every file
is answered and its source deleted, then checks that nothing was lost or doubled and prints one
JSON object: time to drain, files/s, rows/s, upload-to-done latency percentiles and the counts
of lost / duplicate / leftover files and rows. Exits 1 when any count is not zero.

``make bench-load`` runs it with the defaults (200 files of 20 rows, the tiny random-weight
model). ``--model-size base`` uses a DistilBERT-base-sized model (random weights; speed does
not depend on them).

Usage: ``python -m benchmarks.load [--files N] [--rows N] [--model-size tiny|base] ...``
"""

from __future__ import annotations

import argparse
import concurrent.futures
import csv
import io
import json
import logging
import os
import re
import socket
import sys
import tempfile
import threading
import time
from pathlib import Path

_LOGGER = logging.getLogger("beam_qa.bench.load")

REPO = Path(__file__).resolve().parents[1]
PG_BASE_DSN = os.environ.get("QA_BENCH_PG_DSN", "host=127.0.0.1 port=5432 user=postgres")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _fresh_database(name: str) -> str:
    import psycopg
    from psycopg import sql
    with psycopg.connect(f"{PG_BASE_DSN} dbname=postgres", autocommit=True) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    return f"{PG_BASE_DSN} dbname={name}"


def _query(dsn: str, statement: str, params: tuple = ()) -> list[tuple]:
    import psycopg
    with psycopg.connect(dsn) as conn:
        return conn.execute(statement, params).fetchall()


def _payloads(files: int, rows: int) -> list[bytes]:
    """``files`` CSVs of ``rows`` SQuAD rows each (the sample wraps around if it is too short)."""
    from devtools.squad import squad_rows
    sample = squad_rows(files * rows)
    out = []
    for f in range(files):
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\r\n")
        writer.writerow(["id", "question", "context"])
        for r in range(rows):
            row = sample[(f * rows + r) % len(sample)]
            writer.writerow([row["id"], row["question"], row["context"]])
        out.append(buffer.getvalue().encode("utf-8"))
    return out


def _model(size: str, run_dir: Path) -> tuple[str, str]:
    """The model directory and how to describe it in the JSON."""
    from devtools.tiny_model import SIZES, build_model
    if size == "base":
        from benchmarks.common import base_model
        path = base_model()
    else:
        path = build_model(run_dir / "tiny-model", "tiny")
    dims = SIZES[size]
    return str(path), (f"{size}: DistilBERT-shaped, random weights (dim {dims['dim']}, "
                       f"{dims['n_layers']} layers), built by devtools/tiny_model.py")


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    rank = (len(ordered) - 1) * q / 100
    low = int(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def _upload_all(bucket_name: str, names: list[str], payloads: list[bytes], workers: int) -> list[dict]:
    """Uploads every payload in parallel; returns name, generation, creation and return times."""
    from beam_qa.storage import make_gcs_client
    local = threading.local()

    def one(item):
        name, data = item
        if not hasattr(local, "bucket"):
            local.bucket = make_gcs_client(anonymous=True).bucket(bucket_name)
        blob = local.bucket.blob(name)
        blob.upload_from_string(data, content_type="text/csv")
        return {"name": name, "generation": blob.generation, "created": blob.time_created.timestamp(),
                "returned": time.time()}

    with concurrent.futures.ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(one, zip(names, payloads)))


def run_benchmark(args: argparse.Namespace) -> dict:
    from devtools.stack import Stack, StackConfig

    run_dir = Path(args.run_dir or tempfile.mkdtemp(prefix="beam-qa-load-"))
    model, model_text = _model(args.model_size, run_dir)
    pipeline_args = args.pipeline_args.split()
    config = StackConfig(
        project="local-project",
        pubsub_host=f"127.0.0.1:{args.pubsub_port or _free_port()}",
        gcs_url=f"http://127.0.0.1:{args.gcs_port or _free_port()}",
        bucket="qa-bench-load", topic="qa-bench-load-uploads", subscription="qa-bench-load-pipeline",
        pg_dsn=_fresh_database(args.database), model=model, run_dir=run_dir, pipeline_args=pipeline_args)
    os.environ.update(config.client_env())
    stack = Stack(config)
    try:
        started = time.monotonic()
        stack.up()
        _LOGGER.info("stack ready in %.0fs; uploading %d files of %d rows", time.monotonic() - started,
                     args.files, args.rows)
        payloads = _payloads(args.files, args.rows)
        names = [f"{config.incoming_prefix}load/file{i:04d}.csv" for i in range(args.files)]
        first_upload = time.time()
        uploads = _upload_all(config.bucket, names, payloads, args.workers)
        upload_secs = time.time() - first_upload
        result = _wait_and_check(stack, uploads, args, first_upload)
        result["upload_secs"] = round(upload_secs, 2)
    finally:
        stack.stop()
    result.update({
        "model": model_text, "model_size": args.model_size, "runner": "DirectRunner (local stack)",
        "pipeline_args": pipeline_args, "cpus": os.cpu_count(), "run_dir": str(run_dir),
    })
    return result


def _wait_and_check(stack, uploads: list[dict], args, first_upload: float) -> dict:
    from beam_qa.storage import make_gcs_client
    cfg = stack.config
    bucket = make_gcs_client(anonymous=True).bucket(cfg.bucket)
    wanted = {(f"gs://{cfg.bucket}/{u['name']}", u["generation"]): u for u in uploads}
    deadline = time.monotonic() + args.timeout
    done_count = 0
    leftovers: list[str] = []
    while time.monotonic() < deadline:
        done_count = _query(cfg.pg_dsn, "SELECT count(*) FROM qa_files WHERE status = 'done'")[0][0]
        if done_count >= len(wanted):
            leftovers = [b.name for b in bucket.list_blobs(prefix=cfg.incoming_prefix)]
            if not leftovers:
                break
        time.sleep(0.5)
    else:
        leftovers = [b.name for b in bucket.list_blobs(prefix=cfg.incoming_prefix)]
    drained_at = time.time()

    files = {(uri, gen): (status, row_count, completed_at.timestamp() if completed_at else None)
             for uri, gen, status, row_count, completed_at in _query(
                 cfg.pg_dsn, "SELECT source_uri, source_generation, status, row_count, completed_at FROM qa_files")}
    rows_per_file = dict(((uri, gen), (n, distinct)) for uri, gen, n, distinct in _query(
        cfg.pg_dsn, "SELECT source_uri, source_generation, count(*), count(DISTINCT row_index) FROM qa_answers "
        "GROUP BY 1, 2"))
    duplicate_rows = _query(cfg.pg_dsn, "SELECT coalesce(sum(n - 1), 0) FROM (SELECT count(*) AS n FROM qa_answers "
                            "GROUP BY source_uri, source_generation, row_index HAVING count(*) > 1) d")[0][0]
    # "Done" is logged once per commit: more than one line for a file means it was processed twice.
    log = (cfg.run_dir / "pipeline.log").read_text(errors="replace")
    done_lines: dict[str, int] = {}
    for match in re.finditer(r" done (gs://\S+?): ", log):
        done_lines[match.group(1)] = done_lines.get(match.group(1), 0) + 1

    lost = [key for key in wanted if files.get(key, ("missing",))[0] != "done"]
    wrong_rows = [key for key in wanted if rows_per_file.get(key) != (args.rows, args.rows)]
    processed_twice = [uri for uri, count in done_lines.items() if count > 1]
    unexpected = [key for key in files if key not in wanted]
    answers = [b.name for b in bucket.list_blobs(prefix=cfg.answers_prefix)]
    latencies = [files[key][2] - u["created"] for key, u in wanted.items()
                 if key in files and files[key][2] is not None]
    completed = [files[key][2] for key in wanted if key in files and files[key][2] is not None]
    drain_secs = (max(completed) - first_upload) if completed and not lost else drained_at - first_upload
    total_rows = len(wanted) * args.rows
    return {
        "benchmark": "load",
        "files": len(wanted), "rows_per_file": args.rows, "rows": total_rows,
        "drain_secs": round(drain_secs, 2),
        "files_per_sec": round(len(wanted) / drain_secs, 2),
        "rows_per_sec": round(total_rows / drain_secs, 1),
        "upload_to_done_ms": {"p50": round(_percentile(latencies, 50) * 1000, 1),
                              "p95": round(_percentile(latencies, 95) * 1000, 1),
                              "max": round(max(latencies, default=float("nan")) * 1000, 1),
                              "measured": "qa_files.completed_at minus the object's timeCreated"},
        "lost_files": len(lost),
        "files_with_wrong_row_count": len(wrong_rows),
        "duplicate_rows": int(duplicate_rows),
        "files_processed_more_than_once": len(processed_twice),
        "unexpected_files": len(unexpected),
        "leftovers_in_incoming": len(leftovers),
        "answers_csvs": len(answers),
        "ok": not (lost or wrong_rows or duplicate_rows or processed_twice or unexpected or leftovers)
        and len(answers) == len(wanted),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    parser.add_argument("--files", type=int, default=200, help="files to upload (default 200)")
    parser.add_argument("--rows", type=int, default=20, help="SQuAD rows per file (default 20)")
    parser.add_argument("--model-size", choices=["tiny", "base"], default="tiny",
                        help="random-weight DistilBERT: tiny (default, fast) or base-sized")
    parser.add_argument("--workers", type=int, default=16, help="parallel uploads (default 16)")
    parser.add_argument("--timeout", type=float, default=1800, help="seconds to wait for the drain")
    parser.add_argument("--database", default="beam_qa_bench_load", help="PostgreSQL database (recreated)")
    parser.add_argument("--pubsub-port", type=int, default=0, help="default: a free port")
    parser.add_argument("--gcs-port", type=int, default=0, help="default: a free port")
    parser.add_argument("--run-dir", default="", help="logs and emulator data (default: a new temp dir)")
    parser.add_argument("--pipeline-args", default="", help="extra pipeline flags, space separated")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", stream=sys.stderr)
    result = run_benchmark(args)
    print(json.dumps(result, indent=2))
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
