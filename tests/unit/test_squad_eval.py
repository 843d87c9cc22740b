"""SQuAD v1.1 EM/F1 with the official normalisation, and the demo model's train/held-out split."""

from __future__ import annotations

import pytest

from devtools import squad_eval
from devtools.squad_eval import SquadQuestion


def question(*answers: str) -> SquadQuestion:
    return SquadQuestion(id="q", article="A", question="?", context="", answers=answers,
                         answer_starts=tuple(0 for _ in answers))


@pytest.mark.parametrize("text, normalized", [
    ("The Champ de Mars.", "champ de mars"),
    ("  an   Apple, a pear  ", "apple pear"),
    ("Theatre", "theatre"),  # "the" only as a whole word
    ("1,000", "1000"),
])
def test_normalisation_follows_the_official_script(text, normalized):
    assert squad_eval.normalize_answer(text) == normalized


def test_em_and_f1_take_the_best_reference_answer():
    questions = [question("Champ de Mars", "the Champ de Mars in Paris"), question("Denver Broncos"),
                 question("1973")]
    scores = squad_eval.score(["the Champ de Mars", "Broncos", "in 1974"], questions)
    # EM: 1 of 3. F1: 1.0; Broncos vs Denver Broncos = 2*(1*0.5)/(1.5) = 2/3; "in 1974" vs "1973" = 0.
    assert scores == {"exact_match": 33.33, "f1": round(100 * (1 + 2 / 3) / 3, 2), "questions": 3}


def test_an_empty_prediction_scores_zero():
    assert squad_eval.score([""], [question("Paris")])["f1"] == 0.0


def test_the_held_out_articles_are_never_trained_on():
    train, held_out = squad_eval.split(squad_eval.load_questions())
    assert {q.article for q in held_out} == set(squad_eval.HELD_OUT_ARTICLES)
    assert not {q.article for q in train} & set(squad_eval.HELD_OUT_ARTICLES)
    assert not {q.context for q in train} & {q.context for q in held_out}
    assert len(train) + len(held_out) == 2881 and len(held_out) == 330
    assert all(q.answers and q.context[s:s + len(a)] == a
               for q in train[:200] for a, s in zip(q.answers, q.answer_starts))
