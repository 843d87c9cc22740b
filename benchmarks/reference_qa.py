"""The baseline: the transformers 4.57 question-answering pipeline, called row by row.

This script runs inside the reference virtualenv that ``benchmarks.reference_env`` creates
(transformers 4.57, no beam_qa installed), so it imports nothing from the project.
It reads JSON lines ``{"question", "context"}`` and writes, per row, the pipeline's answer,
start, end and score, plus the time the call took; the last line is a summary.

Usage: ``REF_PYTHON benchmarks/reference_qa.py MODEL_DIR ROWS.jsonl OUT.jsonl [--warmup N]``
"""

import argparse
import json
import resource
import time


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model_dir")
    parser.add_argument("rows")
    parser.add_argument("out")
    parser.add_argument("--warmup", type=int, default=3, help="rows answered (and not counted) before timing")
    args = parser.parse_args()

    import torch
    import transformers
    from transformers import AutoModelForQuestionAnswering, PreTrainedTokenizerFast, pipeline

    transformers.logging.set_verbosity_error()
    # The project saves tokenizers with transformers 5; 4.57 reads the same tokenizer.json
    # through the generic fast tokenizer class.
    tokenizer = PreTrainedTokenizerFast.from_pretrained(args.model_dir)
    model = AutoModelForQuestionAnswering.from_pretrained(args.model_dir)
    qa = pipeline("question-answering", model=model, tokenizer=tokenizer, device=-1)
    with open(args.rows, encoding="utf-8") as handle:
        rows = [json.loads(line) for line in handle]
    for row in rows[:args.warmup]:
        qa(question=row["question"], context=row["context"])

    # Pipeline defaults: max_seq_len=384, doc_stride=128, max_question_len=64,
    # max_answer_len=15, top_k=1, handle_impossible_answer=False, align_to_words=True.
    latencies = []
    started = time.perf_counter()
    with open(args.out, "w", encoding="utf-8") as out:
        for index, row in enumerate(rows):
            t0 = time.perf_counter()
            try:
                answer = qa(question=row["question"], context=row["context"])
                record = {"index": index, "answer": answer["answer"], "start": answer["start"],
                          "end": answer["end"], "score": answer["score"]}
            except Exception as exc:  # the reference raising is a result too
                record = {"index": index, "error": f"{type(exc).__name__}: {exc}"}
            latencies.append(time.perf_counter() - t0)
            record["latency_s"] = latencies[-1]
            out.write(json.dumps(record) + "\n")
        elapsed = time.perf_counter() - started
        out.write(json.dumps({
            "summary": True, "rows": len(rows), "elapsed_s": elapsed,
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "transformers": transformers.__version__, "torch": torch.__version__,
            "threads": torch.get_num_threads()}) + "\n")


if __name__ == "__main__":
    main()
