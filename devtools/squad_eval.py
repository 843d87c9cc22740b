"""SQuAD v1.1 answer quality: the train/held-out split of the shared sample, and EM/F1.

The shared sample (``../shared/data/squad-v1.1-dev-sample.json``) holds 12 articles. The
demo model trains on nine of them and is judged on the other three, which it never sees:
``HELD_OUT_ARTICLES`` are the three smallest articles, from three different fields
(networking, history, earth science), so that most questions are left for training and the
score is not one topic's score.

EM and F1 follow the official SQuAD v1.1 evaluation script (``evaluate-v1.1.py``): answers
are lower-cased, punctuation and the articles a/an/the are removed, whitespace collapsed;
F1 is the token overlap; each question takes the maximum over its reference answers.
"""

from __future__ import annotations

import collections
import dataclasses
import re
import string
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

from devtools.squad import load_articles

HELD_OUT_ARTICLES = ("Packet_switching", "Black_Death", "Geology")


@dataclasses.dataclass(frozen=True)
class SquadQuestion:
    """One question with its context and every reference answer."""

    id: str
    article: str
    question: str
    context: str
    answers: tuple[str, ...]
    answer_starts: tuple[int, ...]


def load_questions(path: Path | None = None) -> list[SquadQuestion]:
    """Every question of the SQuAD sample, in file order.

    Raises:
        FileNotFoundError: with the path looked at and how to point elsewhere.
    """
    questions = []
    for article in load_articles(path):
        for paragraph in article["paragraphs"]:
            for qa in paragraph["qas"]:
                questions.append(SquadQuestion(
                    id=qa["id"], article=article["title"], question=qa["question"],
                    context=paragraph["context"], answers=tuple(a["text"] for a in qa["answers"]),
                    answer_starts=tuple(a["answer_start"] for a in qa["answers"])))
    return questions


def split(questions: Sequence[SquadQuestion]) -> tuple[list[SquadQuestion], list[SquadQuestion]]:
    """``(train, held_out)``: held-out questions are those of ``HELD_OUT_ARTICLES``."""
    train = [q for q in questions if q.article not in HELD_OUT_ARTICLES]
    held_out = [q for q in questions if q.article in HELD_OUT_ARTICLES]
    missing = set(HELD_OUT_ARTICLES) - {q.article for q in held_out}
    if missing:
        raise ValueError(f"the SQuAD sample lacks the held-out articles {sorted(missing)}; "
                         "point QA_SQUAD_PATH at ../shared/data/squad-v1.1-dev-sample.json")
    return train, held_out


# --- the official SQuAD v1.1 metric --------------------------------------------------------

def normalize_answer(text: str) -> str:
    """Lower-cases and drops punctuation, articles and extra whitespace (official v1.1 rules)."""
    text = text.lower()
    text = "".join(ch for ch in text if ch not in set(string.punctuation))
    text = re.sub(r"\b(a|an|the)\b", " ", text)
    return " ".join(text.split())


def f1_score(prediction: str, truth: str) -> float:
    prediction_tokens = normalize_answer(prediction).split()
    truth_tokens = normalize_answer(truth).split()
    common = collections.Counter(prediction_tokens) & collections.Counter(truth_tokens)
    same = sum(common.values())
    if same == 0:
        return 0.0
    precision = same / len(prediction_tokens)
    recall = same / len(truth_tokens)
    return 2 * precision * recall / (precision + recall)


def exact_match(prediction: str, truth: str) -> float:
    return float(normalize_answer(prediction) == normalize_answer(truth))


def _best(metric: Callable[[str, str], float], prediction: str, truths: Iterable[str]) -> float:
    return max(metric(prediction, truth) for truth in truths)


def score(predictions: Sequence[str], questions: Sequence[SquadQuestion]) -> dict[str, float]:
    """EM and F1 in percent over ``questions`` (each the max over its reference answers).

    Args:
        predictions: one answer text per question (empty when there was none).
        questions: the questions, in the same order.
    """
    if len(predictions) != len(questions):
        raise ValueError(f"{len(predictions)} predictions for {len(questions)} questions")
    em = sum(_best(exact_match, p, q.answers) for p, q in zip(predictions, questions))
    f1 = sum(_best(f1_score, p, q.answers) for p, q in zip(predictions, questions))
    count = max(len(questions), 1)
    return {"exact_match": round(100 * em / count, 2), "f1": round(100 * f1 / count, 2),
            "questions": len(questions)}


def predict(handler, model, questions: Sequence[SquadQuestion], batch_size: int = 32,
            progress: bool = False) -> list[str]:
    """Answers ``questions`` with a ``QuestionAnsweringModelHandler`` the way RunInference would.

    Returns:
        One answer text per question; empty for a row error.
    """
    from tqdm import tqdm
    answers: list[str] = []
    batches = range(0, len(questions), batch_size)
    for offset in tqdm(batches, desc="answering", unit="batch", disable=not progress, leave=False):
        chunk = [(q.question, q.context) for q in questions[offset:offset + batch_size]]
        for result in handler.run_inference(chunk, model):
            span = result.inference.span
            answers.append(span.answer if span else "")
    return answers
