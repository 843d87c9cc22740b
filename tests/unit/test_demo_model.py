"""The demo model's training labels, its cache, and the local stack's choice of model."""

from __future__ import annotations

import json
import logging
import random

import pytest

from devtools import demo_model, squad_eval
from devtools.stack import Stack, StackConfig


@pytest.fixture(scope="module")
def tokenizer(tiny_model):
    from transformers import AutoTokenizer
    return AutoTokenizer.from_pretrained(tiny_model)


def test_training_labels_point_at_the_answer_tokens(tokenizer):
    train, _ = squad_eval.split(squad_eval.load_questions())
    questions = train[:150]
    recipe = demo_model.Recipe()
    encoded = tokenizer([q.question for q in questions], [q.context for q in questions], truncation="only_second",
                        max_length=recipe.max_seq_len, stride=recipe.doc_stride, return_overflowing_tokens=True,
                        return_offsets_mapping=True)
    features = demo_model.training_features(tokenizer, questions, recipe)
    assert len(features) == len(encoded["input_ids"])
    labelled = 0
    for index, feature in enumerate(features):
        q = questions[encoded["overflow_to_sample_mapping"][index]]
        start, end = feature["start_positions"], feature["end_positions"]
        if start == 0:
            continue  # the answer is not in this window: the CLS label
        labelled += 1
        offsets = encoded["offset_mapping"][index]
        span = q.context[offsets[start][0]:offsets[end][1]]
        assert q.answers[0].strip() in span and len(span) <= len(q.answers[0]) + 10, (span, q.answers[0])
        assert len(feature["input_ids"]) <= recipe.max_seq_len
    assert labelled >= len(questions)


def test_every_reference_answer_is_a_target_weighted_by_its_annotators(tokenizer):
    train, _ = squad_eval.split(squad_eval.load_questions())
    several = [q for q in train if len(set(zip(q.answer_starts, q.answers))) >= 2][:40]
    encoded = tokenizer([q.question for q in several], [q.context for q in several], truncation="only_second",
                        max_length=384, stride=128, return_overflowing_tokens=True, return_offsets_mapping=True)
    features = demo_model.training_features(tokenizer, several, demo_model.Recipe())
    firsts = demo_model.training_features(tokenizer, several, demo_model.Recipe(references="first"))
    spread = 0
    for index, (feature, first) in enumerate(zip(features, firsts)):
        q = several[encoded["overflow_to_sample_mapping"][index]]
        offsets = encoded["offset_mapping"][index]
        assert abs(sum(w for _, _, w in feature["targets"]) - 1) < 1e-9
        assert first["targets"] == [(feature["start_positions"], feature["end_positions"], 1.0)]
        for start, end, weight in feature["targets"]:
            if start:
                span = q.context[offsets[start][0]:offsets[end][1]]
                assert any(a.strip() in span and len(span) <= len(a) + 10 for a in q.answers), span
            # Annotators who marked the same span add up.
            assert weight * len(q.answers) == pytest.approx(round(weight * len(q.answers)))
        spread += len(feature["targets"]) >= 2
    assert spread >= len(several) // 2


def test_the_loss_with_one_reference_is_the_models_own(tiny_model):
    import torch
    from transformers import AutoModelForQuestionAnswering
    torch.manual_seed(0)
    model = AutoModelForQuestionAnswering.from_pretrained(tiny_model)
    batch = demo_model.collate([
        {"input_ids": [101, 7, 8, 9, 102], "token_type_ids": [0] * 5, "targets": [(2, 3, 1.0)]},
        {"input_ids": [101, 7, 8, 102], "token_type_ids": [0] * 4, "targets": [(0, 0, 1.0)]}])
    inputs = {k: batch[k] for k in ("input_ids", "token_type_ids", "attention_mask")}
    outputs = model(**inputs, start_positions=torch.tensor([2, 0]), end_positions=torch.tensor([3, 0]))
    assert demo_model.qa_loss(outputs, batch).item() == pytest.approx(outputs.loss.item(), rel=1e-5)


def test_batches_cover_every_feature_once_and_are_reproducible():
    features = [{"input_ids": [0] * (10 + i % 37)} for i in range(500)]
    first = demo_model.batches(features, 16, random.Random(0))
    again = demo_model.batches(features, 16, random.Random(0))
    assert first == again
    assert sorted(id(f) for batch in first for f in batch) == sorted(id(f) for f in features)
    # Similar lengths within a batch keep padding small.
    assert max(max(len(f["input_ids"]) for f in b) - min(len(f["input_ids"]) for f in b) for b in first) <= 5


def test_a_changed_recipe_is_a_different_cache_entry(tmp_path, monkeypatch):
    monkeypatch.setenv("QA_DEMO_MODEL_CACHE", str(tmp_path))
    assert demo_model.model_dir() != demo_model.model_dir(demo_model.Recipe(epochs=9))
    assert demo_model.built_model() is None
    demo_model.model_dir().mkdir(parents=True)
    (demo_model.model_dir() / demo_model.INFO_FILE).write_text("{}")
    assert demo_model.built_model() == demo_model.model_dir()


def test_the_full_build_is_preferred_and_the_quick_one_stands_in(tmp_path, monkeypatch):
    monkeypatch.setenv("QA_DEMO_MODEL_CACHE", str(tmp_path))

    def fake_build(name: str):
        path = demo_model.model_dir(demo_model.RECIPES[name])
        path.mkdir(parents=True)
        (path / demo_model.INFO_FILE).write_text("{}")
        return path
    assert demo_model.built_model() is None
    quick = fake_build("quick")
    assert demo_model.built_model() == quick
    full = fake_build("full")
    assert demo_model.built_model() == full
    assert demo_model.built_model(demo_model.RECIPES["quick"]) == quick
    assert full != quick


def test_the_quick_recipe_trains_the_same_model_on_less():
    full, quick = demo_model.RECIPES["full"], demo_model.RECIPES["quick"]
    assert full == demo_model.Recipe()
    assert (quick.base, quick.max_seq_len, quick.doc_stride, quick.references) == \
        (full.base, full.max_seq_len, full.doc_stride, full.references)
    train, _ = squad_eval.split(squad_eval.load_questions())
    assert quick.epochs * (quick.train_questions or len(train)) < full.epochs * (full.train_questions or len(train))
    assert [demo_model.recipe_name(r) for r in (full, quick, demo_model.Recipe(seed=7))] == ["full", "quick", "custom"]


def fake_demo_build(tmp_path, monkeypatch, f1: float = 61.2):
    monkeypatch.setenv("QA_DEMO_MODEL_CACHE", str(tmp_path / "demo-cache"))
    path = demo_model.model_dir()
    path.mkdir(parents=True)
    (path / demo_model.INFO_FILE).write_text(json.dumps({"held_out": {"f1": f1, "exact_match": 50.0}}))
    return path


@pytest.fixture
def offline_stack(tmp_path, monkeypatch):
    """A stack whose Hub lookups fail at once (as on a machine without the Hub)."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("QA_DEMO_MODEL_CACHE", str(tmp_path / "empty-cache"))
    return Stack(StackConfig(model="", run_dir=tmp_path / "run"))


def test_qa_model_wins(offline_stack, tmp_path, monkeypatch):
    fake_demo_build(tmp_path, monkeypatch)
    offline_stack.config.model = "/models/mine"
    assert offline_stack.ensure_model() == "/models/mine"
    assert "QA_MODEL" in offline_stack.model_description


def test_the_production_default_when_the_hub_is_reachable(offline_stack, tmp_path, monkeypatch):
    from beam_qa.options import DEFAULT_MODEL
    fake_demo_build(tmp_path, monkeypatch)
    monkeypatch.setattr("beam_qa.qa.model_store.check_model_available", lambda model: None)
    assert offline_stack.ensure_model() == DEFAULT_MODEL
    assert "production default" in offline_stack.model_description


def test_the_demo_model_when_built_and_the_hub_is_unreachable(offline_stack, tmp_path, monkeypatch):
    path = fake_demo_build(tmp_path, monkeypatch, f1=61.2)
    assert offline_stack.ensure_model() == str(path)
    assert "demo model" in offline_stack.model_description and "61.2" in offline_stack.model_description


def test_the_random_model_says_how_to_get_real_answers(offline_stack, caplog):
    with caplog.at_level(logging.WARNING, logger="beam_qa.stack"):
        path = offline_stack.ensure_model()
    assert path.endswith("tiny-model")
    assert "RANDOM" in offline_stack.model_description
    assert "make demo-model" in caplog.text and "QA_MODEL" in caplog.text
