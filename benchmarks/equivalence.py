"""Do our batched answers equal the transformers 4.57 pipeline's, row by row?

Builds a DistilBERT-base-sized model with random weights (same architecture and
tokenizer type as distilbert-base-cased-distilled-squad; decoding does not depend on
the weight values), runs the 4.57 ``question-answering`` pipeline row by row on it in a
virtualenv of its own, runs our ``QuestionAnsweringModelHandler`` batched on the same
model and rows, and compares ``(answer, start, end)`` and ``score``.

Every disagreement is printed with both answers and scores, so a near-tie (two spans
whose scores differ in the last digits, where batching's different float summation
order can flip the winner) can be told from a bug. A row agrees when both give the same
span with scores equal to within ``SCORE_REL_TOLERANCE`` of their size, or when both fail
for the same reason. Prints one JSON object last and exits non-zero when agreement is
under the required 99.5%.

Usage: ``make equivalence`` (or ``python -m benchmarks.equivalence [--squad-rows N]``)
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from collections import Counter

from benchmarks import common

REQUIRED_AGREEMENT = 0.995
# Relative: the random-weight model's scores are small (8e-5 to 1e-2 on these rows: a softmax
# over hundreds of spans), so the absolute 1e-3 this replaces accepted nearly any score. Batching
# and ONNX Runtime's fused fp32 graph move them by at most 3e-6 of their size (2.6e-6 measured
# on the AMD EPYC); a real difference in decoding (a lost normalisation, an answer's windows not
# merged) moves them by percents.
SCORE_REL_TOLERANCE = 1e-4


def build_rows(squad: int, long_context: int, unicode: int, long_question: int) -> list[dict]:
    return (common.squad_rows(squad) + common.long_context_rows(long_context)
            + common.unicode_rows(unicode) + common.long_question_rows(long_question))


def run_ours(model_dir, rows: list[dict], batch_size: int) -> tuple[list[dict], float]:
    """Our handler, batched the way RunInference hands it rows."""
    from beam_qa.qa.handler import QuestionAnsweringModelHandler
    handler = QuestionAnsweringModelHandler(str(model_dir), device="cpu", max_batch_size=batch_size)
    model = handler.load_model()
    examples = [(r["question"], r["context"]) for r in rows]
    out: list[dict] = []
    started = time.perf_counter()
    for offset in range(0, len(examples), batch_size):
        for result in handler.run_inference(examples[offset:offset + batch_size], model):
            span, error = result.inference.span, result.inference.error
            out.append({"answer": span.answer, "start": span.start, "end": span.end, "score": span.score}
                       if span else {"error": error})
    return out, time.perf_counter() - started


def compare(rows: list[dict], reference: list[dict], ours: list[dict]) -> dict:
    """Agreement per row; prints each disagreement with both sides."""
    agree_by_kind: Counter = Counter()
    total_by_kind: Counter = Counter()
    disagreements = []
    max_score_diff = 0.0
    for index, (row, ref, own) in enumerate(zip(rows, reference, ours)):
        total_by_kind[row["kind"]] += 1
        if "error" in ref or "error" in own:
            same = "error" in ref and "error" in own and same_failure(ref["error"], own["error"])
        else:
            same_span = (ref["answer"], ref["start"], ref["end"]) == (own["answer"], own["start"], own["end"])
            diff = relative_difference(ref["score"], own["score"])
            if same_span:
                max_score_diff = max(max_score_diff, diff)
            same = same_span and diff <= SCORE_REL_TOLERANCE
        if same:
            agree_by_kind[row["kind"]] += 1
            continue
        disagreements.append(index)
        print(f"DISAGREE row {index} ({row['kind']}): question={row['question'][:60]!r}\n"
              f"    reference: {_describe(ref)}\n    ours:      {_describe(own)}", file=sys.stderr)
    agreed = sum(agree_by_kind.values())
    return {
        "rows": len(rows), "agreed": agreed, "agreement": round(agreed / len(rows), 5),
        "by_kind": {kind: {"rows": total_by_kind[kind], "agreed": agree_by_kind[kind]} for kind in total_by_kind},
        "disagreements": disagreements, "max_relative_score_diff_on_same_spans": max_score_diff,
    }


def relative_difference(a: float, b: float) -> float:
    """``|a - b|`` as a share of the larger of the two (0 when both are 0)."""
    scale = max(abs(a), abs(b))
    return abs(a - b) / scale if scale else 0.0


def same_failure(reference_error: str, own_error: str) -> bool:
    """Both rows failed for the same reason.

    The reference records ``"ExceptionType: message"``. Our row errors that come from an
    exception (``question too long for max_seq_len 384: ...``, ``model failed on this row:
    ...``) end with that exception's message, so the same failure carries the same message;
    a row error of ours with no exception behind it (an empty question, say) never matches.
    """
    message = reference_error.split(": ", 1)[-1].strip()
    return bool(message) and own_error.strip().endswith(message)


def _describe(record: dict) -> str:
    if "error" in record:
        return f"error {record['error'][:100]}"
    return f"{record['answer'][:50]!r} [{record['start']}:{record['end']}] score={record['score']:.6f}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--squad-rows", type=int, default=1000)
    parser.add_argument("--long-context-rows", type=int, default=60)
    parser.add_argument("--unicode-rows", type=int, default=40)
    parser.add_argument("--long-question-rows", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=32)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")

    rows = build_rows(args.squad_rows, args.long_context_rows, args.unicode_rows, args.long_question_rows)
    model_dir = common.base_model()
    logging.info("reference: transformers %s pipeline, row by row, on %d rows", common.REFERENCE_TRANSFORMERS, len(rows))
    reference, ref_summary = common.run_reference(model_dir, rows, warmup=0)
    logging.info("ours: QuestionAnsweringModelHandler, batches of %d", args.batch_size)
    ours, ours_elapsed = run_ours(model_dir, rows, args.batch_size)
    report = compare(rows, reference, ours)
    report.update({
        "model": "distilbert-base-sized, random weights (devtools.tiny_model --size base)",
        "reference": f"transformers {ref_summary['transformers']} question-answering pipeline, row by row",
        "reference_elapsed_s": round(ref_summary["elapsed_s"], 1), "ours_elapsed_s": round(ours_elapsed, 1),
        "required_agreement": REQUIRED_AGREEMENT, "score_relative_tolerance": SCORE_REL_TOLERANCE,
    })
    report["passed"] = report["rows"] >= 1000 and report["agreement"] >= REQUIRED_AGREEMENT
    print(json.dumps(report, indent=2))
    return 0 if report["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
