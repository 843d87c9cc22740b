"""flex_template.json matches QaOptions: one parameter per option, each with help and regexes."""

import argparse
import json
import re
from pathlib import Path

import pytest

from beam_qa.options import QaOptions

SPEC_PATH = Path(__file__).resolve().parents[2] / "flex_template.json"


def qa_option_actions() -> dict[str, argparse.Action]:
    """Every flag QaOptions adds (not Beam's own options), by name."""
    parser = argparse.ArgumentParser(add_help=False)
    QaOptions._add_argparse_args(parser)  # pylint: disable=protected-access
    return {action.dest: action for action in parser._actions}  # pylint: disable=protected-access


@pytest.fixture(scope="module")
def spec() -> dict:
    return json.loads(SPEC_PATH.read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def parameters(spec) -> dict[str, dict]:
    params = spec["metadata"]["parameters"]
    names = [p["name"] for p in params]
    assert len(names) == len(set(names)), f"duplicate parameters: {names}"
    return {p["name"]: p for p in params}


def test_spec_names_the_image_and_python_sdk(spec):
    assert spec["sdkInfo"] == {"language": "PYTHON"}
    assert spec["image"].endswith(":TAG") and "beam-qa-worker" in spec["image"]
    assert spec["metadata"]["name"] and spec["metadata"]["description"]


def test_every_option_is_a_parameter_and_every_parameter_an_option(parameters):
    options = set(qa_option_actions())
    documented = set(parameters)
    assert not options - documented, f"QaOptions flags missing from flex_template.json: {sorted(options - documented)}"
    assert not documented - options, f"flex_template.json parameters that are no QaOptions flag: {sorted(documented - options)}"


def test_every_parameter_has_label_help_optionality_and_valid_regexes(parameters):
    for name, param in parameters.items():
        assert param.get("label", "").strip(), name
        assert len(param.get("helpText", "").strip()) > 20, name
        assert isinstance(param.get("isOptional"), bool), name
        assert param.get("regexes"), name
        for pattern in param["regexes"]:
            re.compile(pattern)


def test_defaults_and_choices_pass_the_regexes(parameters):
    """A regex that rejected an option's own default or choices would make the template unusable."""
    for name, action in qa_option_actions().items():
        values = list(action.choices or [])
        if action.default is not None:
            values.append(action.default)
        for value in values:
            text = str(value).lower() if isinstance(value, bool) else str(value)
            for pattern in parameters[name]["regexes"]:
                assert re.match(pattern, text), (name, text, pattern)


@pytest.mark.parametrize("name, good, bad", [
    ("input_subscription", "projects/p-1/subscriptions/qa-uploads", "qa-uploads"),
    ("input_subscription", "projects/p/subscriptions/s", "projects/p/topics/t"),
    ("input_pattern", "gs://bucket/incoming/**.csv", "/local/*.csv"),
    ("answers_prefix", "gs://other-bucket/out/", "/abs/dir"),
    ("answers_prefix", "answers/", "gs://"),
    ("pg_password_secret", "projects/p/secrets/pg/versions/latest", "projects/p/secrets/pg"),
    ("keep_source", "true", "yes please"),
    ("max_batch_size", "64", "0"),
])
def test_regexes_accept_real_values_and_reject_mistakes(parameters, name, good, bad):
    patterns = parameters[name]["regexes"]
    assert all(re.match(p, good) for p in patterns)
    assert not all(re.match(p, bad) for p in patterns)


def test_only_the_connection_string_is_required(parameters):
    required = sorted(name for name, p in parameters.items() if not p["isOptional"])
    assert required == ["pg_dsn"]


def test_boolean_flags_take_the_explicit_values_the_launcher_passes():
    """The Flex Template launcher passes every parameter as --name=value."""
    from beam_qa.pipeline import parse_options
    base = ["--input_pattern=gs://b/incoming/*.csv", "--pg_dsn=dbname=x"]
    assert parse_options(base + ["--keep_source=true"]).keep_source is True
    assert parse_options(base + ["--keep_source=false"]).keep_source is False
    assert parse_options(base + ["--keep_source"]).keep_source is True
    assert parse_options(base).keep_source is False
