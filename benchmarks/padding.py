"""Padded tokens per micro-batch split: the greedy fill against the least-padding split.

The handler sorts a batch's windows by length and runs them in micro-batches of at most
``--tokens-per-forward`` padded tokens; every micro-batch is padded to its longest window. This
counts, for the same SQuAD rows cut into RunInference batches the way ``make bench``'s file
shapes deliver them, the tokens each split sends through the model: ``real`` (the windows' own
tokens), ``padded`` (what the forward passes compute) and ``passes``. The greedy fill
(``greedy_runs``) was the handler's split before; ``least_padding_runs`` is its split now. The
counts are exact and do not depend on the machine. ``--time PRECISIONS`` also times the handler
itself on those batches with each split (``repeats`` rounds, the splits taking turns so that both
meet the same load), beside the row-by-row fp32 baseline on the same rows in the same run.

Shapes: **a** the rows in file order (one large file: a batch is 32 consecutive rows, which share
a few contexts); **b** files of 10 rows whose chunks reach RunInference in a random order (a batch
mixes rows of three or four files), as after the pipeline's Reshuffle.

Usage: ``python -m benchmarks.padding [--rows 1000] [--batch-size 32] [--budgets 1024,4096,65536]
[--time bf16,int8 --time-rows 512 --repeats 4 --shapes b]`` (prints JSON).
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import time
from pathlib import Path

from benchmarks import common
from benchmarks.throughput import machine


def batches(rows: list[dict], shape: str, batch_size: int, seed: int) -> list[list[dict]]:
    """RunInference batches of ``rows`` as the pipeline forms them for file shape ``a`` or ``b``."""
    if shape == "b":
        chunks = [rows[i:i + 10] for i in range(0, len(rows), 10)]
        random.Random(seed).shuffle(chunks)
        rows = [row for chunk in chunks for row in chunk]
    return [rows[i:i + batch_size] for i in range(0, len(rows), batch_size)]


def window_lengths(handler, tokenizer, batch: list[dict]) -> list[int]:
    """The sorted window lengths the handler forms for one batch (its own tokenizer call)."""
    from beam_qa.qa.windows import tokenize
    settings = handler.settings
    windows = tokenize([(r["question"], r["context"]) for r in batch], tokenizer, max_seq_len=settings.max_seq_len,
                       doc_stride=settings.doc_stride)
    return sorted(windows.lengths.tolist())


def count(lengths_per_batch: list[list[int]], budget: int, split) -> dict:
    real = padded = passes = 0
    for lengths in lengths_per_batch:
        begin = 0
        for size in split(lengths, budget):
            padded += size * lengths[begin + size - 1]
            real += sum(lengths[begin:begin + size])
            passes += 1
            begin += size
    return {"real_tokens": real, "padded_tokens": padded, "passes": passes,
            "padding_share": round(1 - real / padded, 4) if padded else 0.0}


def time_splits(model: str, rows: list[dict], args) -> list[dict]:
    """rows/s of the handler with each split, per precision, budget and shape (median of the rounds)."""
    from beam_qa.qa.handler import QuestionAnsweringModelHandler
    from beam_qa.qa.windows import greedy_runs

    class GreedyHandler(QuestionAnsweringModelHandler):
        split_runs = staticmethod(greedy_runs)  # the handler's split before least_padding_runs

    out = []
    for precision in args.time.split(","):
        for budget in (int(b) for b in args.budgets.split(",")):
            handlers = {"greedy": GreedyHandler(model, precision=precision, tokens_per_forward=budget),
                        "least_padding": QuestionAnsweringModelHandler(model, precision=precision,
                                                                       tokens_per_forward=budget)}
            loaded = {name: handler.load_model() for name, handler in handlers.items()}
            for shape in args.shapes.split(","):
                work = [[(r["question"], r["context"]) for r in batch]
                        for batch in batches(rows, shape, args.batch_size, args.seed)]
                for name, handler in handlers.items():  # warm-up: first calls allocate
                    handler.run_inference(work[0], loaded[name])
                rates: dict[str, list[float]] = {name: [] for name in handlers}
                for _ in range(args.repeats):
                    for name, handler in handlers.items():
                        started = time.perf_counter()
                        for batch in work:
                            handler.run_inference(batch, loaded[name])
                        rates[name].append(len(rows) / (time.perf_counter() - started))
                medians = {name: round(statistics.median(values), 2) for name, values in rates.items()}
                out.append({"precision": precision, "tokens_per_forward": budget, "shape": shape,
                            "rows_per_s": medians, "rounds": {k: [round(v, 2) for v in vs] for k, vs in rates.items()},
                            "least_padding_vs_greedy": round(medians["least_padding"] / medians["greedy"], 3)})
    return out


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--rows", type=int, default=1000, help="SQuAD rows (the same as make bench's)")
    parser.add_argument("--batch-size", type=int, default=32, help="rows per RunInference batch")
    parser.add_argument("--budgets", default="1024,4096,65536",
                        help="padded tokens per forward pass (CPU, CPU bf16 with AMX, GPU defaults)")
    parser.add_argument("--seed", type=int, default=0, help="the order of shape b's chunks")
    parser.add_argument("--model", default="base", help="whose tokenizer: base (DistilBERT's cased "
                        "vocabulary size, built offline) or a model directory")
    parser.add_argument("--time", default="", help="also time the handler with each split in these "
                        "precisions (comma-separated), beside the row-by-row baseline")
    parser.add_argument("--time-rows", type=int, default=512, help="rows timed per round")
    parser.add_argument("--repeats", type=int, default=4, help="timed rounds per split")
    parser.add_argument("--shapes", default="a,b", help="file shapes to time")
    parser.add_argument("--no-baseline", action="store_true", help="time without the 4.57 baseline")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    from transformers import AutoTokenizer

    from beam_qa.qa.handler import QuestionAnsweringModelHandler
    from beam_qa.qa.windows import greedy_runs, least_padding_runs
    args = parse_args(argv)
    model = str(common.base_model()) if args.model == "base" else args.model
    handler, tokenizer = QuestionAnsweringModelHandler(model), AutoTokenizer.from_pretrained(model)
    rows = common.squad_rows(args.rows)
    results = []
    for shape in ("a", "b"):
        lengths = [window_lengths(handler, tokenizer, batch)
                   for batch in batches(rows, shape, args.batch_size, args.seed)]
        for budget in (int(b) for b in args.budgets.split(",")):
            greedy, least = count(lengths, budget, greedy_runs), count(lengths, budget, least_padding_runs)
            results.append({"shape": shape, "tokens_per_forward": budget, "greedy": greedy, "least_padding": least,
                            "padded_tokens_saved": round(1 - least["padded_tokens"] / greedy["padded_tokens"], 4)})
    report = {"benchmark": "padding", "rows": args.rows, "batch_size": args.batch_size, "model": model,
              "machine": machine(), "results": results}
    if args.time:
        timed_rows = rows[:args.time_rows]
        if not args.no_baseline:
            _, summary = common.run_reference(Path(model), timed_rows, warmup=3)
            report["baseline"] = {"what": f"transformers {summary['transformers']} pipeline, row by row, fp32",
                                  "rows": len(timed_rows), "rows_per_s": round(len(timed_rows) / summary["elapsed_s"], 2)}
        report["timed"] = time_splits(model, timed_rows, args)
        for run in report["timed"]:
            if "baseline" in report:
                run["vs_baseline"] = {name: round(rate / report["baseline"]["rows_per_s"], 2)
                                      for name, rate in run["rows_per_s"].items()}
    json.dump(report, sys.stdout, indent=2)
    print()
    for r in results:
        print(f"shape {r['shape']}, {r['tokens_per_forward']} tokens per pass: padded tokens "
              f"{r['greedy']['padded_tokens']} -> {r['least_padding']['padded_tokens']} "
              f"(-{100 * r['padded_tokens_saved']:.1f}%), passes {r['greedy']['passes']} -> "
              f"{r['least_padding']['passes']}", file=sys.stderr)
    if "baseline" in report:
        print(f"baseline (4.57 pipeline, row by row, fp32): {report['baseline']['rows_per_s']} rows/s", file=sys.stderr)
    for run in report.get("timed", []):
        print(f"handler {run['precision']}, {run['tokens_per_forward']} tokens per pass, shape {run['shape']}: "
              f"greedy {run['rows_per_s']['greedy']}, least padding {run['rows_per_s']['least_padding']} rows/s "
              f"({run['least_padding_vs_greedy']}x)", file=sys.stderr)


if __name__ == "__main__":
    main()
