"""Shared pieces of the benchmarks: the reference virtualenv, the base-sized model, the rows."""

from __future__ import annotations

import json
import logging
import os
import re
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

_LOGGER = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parents[1]
CACHE = Path(os.environ.get("QA_BENCH_CACHE", REPO / ".cache"))
REFERENCE_TRANSFORMERS = "4.57.6"
# The same CPU wheel as the project: any other torch spec pulls a multi-GB CUDA build.
REFERENCE_TORCH = "2.13.0"
REFERENCE_SCRIPT = Path(__file__).resolve().with_name("reference_qa.py")


def reference_python() -> Path:
    """The reference virtualenv's python (transformers 4.57), created on first use.

    The project itself stays on a current transformers (5.x has no question-answering
    pipeline), so the reference lives in a virtualenv of its own under ``.cache/``.
    """
    env = CACHE / f"ref-transformers-{REFERENCE_TRANSFORMERS}"
    python = env / "bin" / "python"
    stamp = env / ".installed"
    if not stamp.is_file():
        _LOGGER.info("creating the reference virtualenv %s (transformers %s)", env, REFERENCE_TRANSFORMERS)
        subprocess.run([sys.executable, "-m", "venv", "--clear", str(env)], check=True)
        pip = [str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
        subprocess.run(pip + [f"torch=={REFERENCE_TORCH}"], check=True)
        subprocess.run(pip + [f"transformers=={REFERENCE_TRANSFORMERS}"], check=True)
        stamp.write_text(REFERENCE_TRANSFORMERS)
    return python


def base_model() -> Path:
    """A DistilBERT-base-sized QA model with random weights, built once under ``.cache/``."""
    from devtools.tiny_model import build_model
    return build_model(CACHE / "models" / "distilbert-base-random", "base")


def tiny_model() -> Path:
    """The tiny random-weight QA model (a model that costs little), built once under ``.cache/``."""
    from devtools.tiny_model import build_model
    return build_model(CACHE / "models" / "tiny-random", "tiny")


def run_reference(model_dir: Path, rows: list[dict], warmup: int = 3) -> tuple[list[dict], dict]:
    """Runs the 4.57 pipeline row by row in its own process.

    Returns:
        ``(per-row records, summary)``; a record has answer/start/end/score or error.
    """
    python = reference_python()
    with tempfile.TemporaryDirectory() as tmp:
        rows_path, out_path = Path(tmp) / "rows.jsonl", Path(tmp) / "out.jsonl"
        rows_path.write_text("".join(json.dumps({"question": r["question"], "context": r["context"]}) + "\n"
                                     for r in rows), encoding="utf-8")
        subprocess.run([str(python), str(REFERENCE_SCRIPT), str(model_dir), str(rows_path), str(out_path),
                        "--warmup", str(warmup)], check=True)
        lines = [json.loads(line) for line in out_path.read_text(encoding="utf-8").splitlines()]
    return lines[:-1], lines[-1]


def run_worker(module: str, kind: str, spec: dict) -> tuple[dict, float]:
    """Runs ``python -m MODULE --worker KIND SPEC`` in a fresh process; its JSON and wall seconds.

    The worker prints one JSON object as its last line of stdout; its log goes to stderr.
    """
    started = time.perf_counter()
    completed = subprocess.run([sys.executable, "-m", module, "--worker", kind, json.dumps(spec)],
                               stdout=subprocess.PIPE, text=True, check=False)
    elapsed = time.perf_counter() - started
    if completed.returncode != 0:
        raise RuntimeError(f"the {kind} worker of {module} exited with {completed.returncode}; its log is above")
    return json.loads(completed.stdout.strip().splitlines()[-1]), elapsed


def serve_worker(worker: list[str] | None, workers: dict) -> bool:
    """In a worker process (``--worker KIND SPEC``), runs ``workers[KIND]`` and prints its JSON."""
    if not worker:
        return False
    kind, spec = worker
    print(json.dumps(workers[kind](json.loads(spec))))
    return True


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def percentiles_ms(latencies_s: list[float]) -> dict[str, float]:
    values = np.asarray(latencies_s) * 1000
    return {"p50": round(float(np.percentile(values, 50)), 2), "p95": round(float(np.percentile(values, 95)), 2)}


# --- rows -------------------------------------------------------------------------------

def squad_rows(count: int) -> list[dict]:
    """The first ``count`` SQuAD v1.1 dev rows from ``../shared/data/``."""
    from devtools.squad import squad_rows as load
    rows = load(limit=count)
    if len(rows) < count:
        raise SystemExit(f"only {len(rows)} SQuAD rows available, {count} needed")
    return [{"kind": "squad", "question": r["question"], "context": r["context"]} for r in rows]


def cycled_squad_rows(count: int) -> list[dict]:
    """``count`` SQuAD v1.1 dev rows, starting over from the first when the sample runs out."""
    from devtools.squad import squad_rows as load
    rows = load()
    return [{"kind": "squad", "question": rows[i % len(rows)]["question"], "context": rows[i % len(rows)]["context"]}
            for i in range(count)]


def long_context_rows(count: int) -> list[dict]:
    """Contexts of several SQuAD paragraphs (600-2,000 words: 3 to 12 windows of 384 tokens).

    The question comes from a paragraph in the middle or at the end, so the best span
    usually lies in the second or a later window.
    """
    from devtools.squad import squad_rows as load
    by_context: dict[str, list[str]] = {}
    for row in load():
        by_context.setdefault(row["context"], []).append(row["question"])
    paragraphs = list(by_context)
    rows = []
    for i in range(count):
        first = (i * 7) % (len(paragraphs) - 12)
        span = 4 + i % 8
        chosen = paragraphs[first:first + span]
        question_from = chosen[-1] if i % 2 else chosen[len(chosen) // 2]
        rows.append({"kind": "long_context", "question": by_context[question_from][0],
                     "context": "\n\n".join(chosen)})
    return rows


_ODD_SPACES = ["  ", "\t", "\u00a0", " \n ", "\u2009", "\u3000", "   "]
_UNICODE_INSERTS = ["café déjà vu", "Zürich–Genève", "東京タワー", "Ελληνικά", "😀 emoji 🚀", "naïve coöperation",
                    "ﬁnance ﬂow", "Привет мир", "e\u0301tude"]


def unicode_rows(count: int) -> list[dict]:
    """SQuAD rows whose contexts carry odd whitespace, combining marks, CJK, Greek, emoji."""
    base = squad_rows(count + 1200)[1200:]
    rows = []
    for i, row in enumerate(base[:count]):
        words = row["context"].split(" ")
        pieces = []
        for j, word in enumerate(words):
            pieces.append(word)
            pieces.append(_ODD_SPACES[(i + j) % len(_ODD_SPACES)] if j % 5 == 0 else " ")
            if j % 17 == 3:
                pieces.append(_UNICODE_INSERTS[(i + j) % len(_UNICODE_INSERTS)] + " ")
        context = "".join(pieces).strip()
        question = row["question"] if i % 3 else "  " + row["question"].replace(" ", "  ") + " "
        rows.append({"kind": "unicode_whitespace", "question": question, "context": context})
    return rows


def long_question_rows(count: int) -> list[dict]:
    """Questions of about 70 to 150 words (longer than max_question_len=64 tokens), short and long contexts."""
    base = squad_rows(count + 1500)[1500:]
    rows = []
    for i, row in enumerate(base[:count]):
        padding = " ".join(re.findall(r"\w+", row["context"])[: 60 + (i * 13) % 80])
        context = row["context"] if i % 2 else row["context"] + "\n" + row["context"]
        rows.append({"kind": "long_question", "question": f"{row['question']} Given that {padding}, what is it?",
                     "context": context})
    return rows
