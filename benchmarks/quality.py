"""Answer quality per precision: SQuAD EM/F1 of the demo model on its held-out articles.

A precision is judged by the answer quality it keeps. This runs the pipeline's own handler
(``QuestionAnsweringModelHandler``, windows of 384 tokens with stride 128, batches of 32)
on the held-out articles of the demo model (``devtools.squad_eval``) once per precision
and prints one JSON object: EM/F1 per precision, the F1 lost against fp32, the share of
answers identical to fp32, whether each precision runs fast on this CPU, the CPU's
features, and what ``--precision auto`` picks here.

It exits 1 when bf16 loses more than the bound, or when a precision that
``beam_qa.qa.precision.MEASURED_F1_LOSS`` (the table ``auto`` decides by, which keeps the largest
loss measured on any machine) puts within the bound loses more here: the table can be too
cautious for one machine, never too bold.

It measures the best demo model built (the full recipe, else the quick one: see
``devtools.demo_model.RECIPES``) and says which. ``make test`` runs it on the model its
demo-model test uses (``tests/integration/test_quality.py``), so CI checks the table on every run.

Usage: ``make quality`` (``python -m benchmarks.quality [--precisions fp32,bf16,fp16,int8]``);
needs a demo model: ``make demo-model`` (or ``python -m devtools.demo_model --recipe quick``).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import sys
import time

from devtools import demo_model, squad_eval
from beam_qa.qa import precision as precisions

_LOGGER = logging.getLogger(__name__)


def measure(model_dir: str, precision: str, questions) -> tuple[dict, list[str]]:
    """EM/F1 and the answers of one precision."""
    from beam_qa.qa.handler import QuestionAnsweringModelHandler
    handler = QuestionAnsweringModelHandler(model_dir, device="cpu", precision=precision)
    model = handler.load_model()
    started = time.perf_counter()
    answers = squad_eval.predict(handler, model, questions, progress=True)
    elapsed = time.perf_counter() - started
    result = squad_eval.score(answers, questions)
    result.update({"model_id": model.model_id, "seconds": round(elapsed, 1),
                   "rows_per_s": round(len(questions) / elapsed, 1),
                   "fast_on_this_machine": precisions.supported(precision, "cpu")})
    return result, answers


def verdicts(report: dict) -> list[str]:
    """What is wrong with the measurement against the bound and the table; empty when fine.

    The table keeps each precision's largest loss on any machine measured, so a smaller loss here
    is no contradiction (``notes``); a precision the table lets ``auto`` choose that loses more
    than the bound here is one.
    """
    problems = []
    bound = precisions.QUALITY_BOUND_F1
    for name, result in report["precisions"].items():
        loss = result["f1_loss_vs_fp32"]
        if name == "bf16" and loss > bound:
            problems.append(f"bf16 loses {loss} F1 points, more than the bound {bound}")
        if loss > bound and precisions.within_quality_bound(name):
            problems.append(f"{name}: measured loss {loss} is beyond the bound {bound}, but "
                            f"MEASURED_F1_LOSS[{name!r}] says {precisions.MEASURED_F1_LOSS.get(name)}; "
                            "update beam_qa/qa/precision.py")
    return problems


def notes(report: dict) -> list[str]:
    """Measurements that differ from the table without contradicting it, for whoever keeps it."""
    out = []
    for name, result in report["precisions"].items():
        recorded = precisions.MEASURED_F1_LOSS.get(name)
        loss = result["f1_loss_vs_fp32"]
        if recorded is not None and recorded < loss <= precisions.QUALITY_BOUND_F1:
            out.append(f"{name}: measured loss {loss} is above the recorded {recorded} (both within the bound): "
                       "the table keeps the largest")
        elif recorded is not None and loss <= precisions.QUALITY_BOUND_F1 < recorded:
            out.append(f"{name}: measured loss {loss} is within the bound here; the table keeps {recorded}, the "
                       "largest measured elsewhere, so auto does not choose it")
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--precisions", default=",".join(precisions.PRECISIONS),
                        help="comma-separated; fp32 is always measured first (the reference)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(message)s", stream=sys.stderr)
    model_dir = demo_model.built_model()
    if model_dir is None:
        print("error: the demo model is not built; run `make demo-model` first (about 15 minutes), or "
              "`python -m devtools.demo_model --recipe quick` for the shorter build.", file=sys.stderr)
        return 1
    import torch
    info = demo_model.build_info(model_dir)
    _, held_out = squad_eval.split(squad_eval.load_questions())
    wanted = ["fp32"] + [p for p in args.precisions.split(",") if p and p != "fp32"]
    unknown = [p for p in wanted if p not in precisions.PRECISIONS]
    if unknown:
        print(f"error: unknown precision(s) {unknown}; choose from {', '.join(precisions.PRECISIONS)}",
              file=sys.stderr)
        return 2
    report: dict = {
        "benchmark": "quality", "model": str(model_dir), "recipe": info.get("recipe_name", "full"),
        "held_out_articles": list(squad_eval.HELD_OUT_ARTICLES),
        "questions": len(held_out), "bound_f1_points": precisions.QUALITY_BOUND_F1,
        "machine": {"cpu_features": list(precisions.cpu_features()), "cpu": platform.processor() or platform.machine(),
                    "cores": os.cpu_count(), "torch": torch.__version__, "torch_threads": torch.get_num_threads()},
        "demo_model_build": {"fp32_at_build": info["held_out"], "train_seconds": info["train_seconds"]},
        "precisions": {},
    }
    reference: list[str] = []
    for name in wanted:
        result, answers = measure(str(model_dir), name, held_out)
        if name == "fp32":
            reference = answers
        result["f1_loss_vs_fp32"] = round(report["precisions"].get("fp32", result)["f1"] - result["f1"], 2)
        result["identical_answers_vs_fp32"] = round(
            sum(a == b for a, b in zip(answers, reference)) / max(len(answers), 1), 4)
        result["within_bound"] = result["f1_loss_vs_fp32"] <= precisions.QUALITY_BOUND_F1
        report["precisions"][name] = result
    report["auto_picks_on_this_machine"] = precisions.choose("cpu")
    report["recorded_f1_loss"] = dict(precisions.MEASURED_F1_LOSS)
    problems = verdicts(report)
    report["problems"] = problems
    report["notes"] = notes(report)
    print(json.dumps(report, indent=2))
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
