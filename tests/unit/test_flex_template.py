"""flex_template.json is the metadata file gcloud takes as-is, and matches QaOptions parameter by parameter.

``gcloud dataflow flex-template build --metadata-file=flex_template.json`` reads ``name``,
``description`` and ``parameters`` at the top level (the TemplateMetadata message of the Dataflow
API). Every regex is checked with RE2 (the ``google-re2`` wheel) as well as Python's ``re``: the
engine that validates parameters at launch is not documented to support lookarounds or Python's
Unicode classes, so the regexes use neither.
"""

import argparse
import contextlib
import io
import json
import re
from pathlib import Path

import pytest
import re2

from beam_qa.options import QaOptions
from beam_qa.launch import parse_options
from tests.gcloud_cli import run_gcloud, unrecognized_fields

METADATA_PATH = Path(__file__).resolve().parents[2] / "flex_template.json"
DATAFLOW_MESSAGES = "googlecloudsdk.generated_clients.apis.dataflow.v1b3.dataflow_v1b3_messages"
ENGINES = {"re2": lambda pattern, value: re2.search(pattern, value) is not None,
           "re": lambda pattern, value: re.search(pattern, value) is not None}

# Every parameter's regexes against real values (accepted by both engines and by the option) and
# mistakes (rejected by both engines). A mistake with None is one the option rejects too (checked);
# a mistake with a reason is one only the template rejects, on purpose.
SUBSCRIPTION = "projects/my-project/subscriptions/qa-uploads-pipeline"
CASES: dict[str, tuple[list[str], list[tuple[str, str | None]]]] = {
    "input_subscription": (
        [SUBSCRIPTION, "projects/p-123456/subscriptions/abc"],
        [("qa-uploads-pipeline", None), ("projects/my-project/topics/qa-uploads", None),
         ("projects/My-Project/subscriptions/qa", None), ("projects/my-project/subscriptions/qa uploads", None)]),
    "input_pattern": (
        ["gs://my-bucket/incoming/**.csv", "gs://my-bucket/incoming/*.csv"],
        [("/local/*.csv", "a local path means nothing on Dataflow workers"),
         ("gs://my-bucket", "no object part"), ("my-bucket/incoming/*.csv", "not a gs:// URI"),
         ("gs://My_Bucket/x/*.csv", "not a bucket name")]),
    "input_bucket": (
        ["my-qa-bucket", "qa.example.com"],
        [("gs://my-qa-bucket", None), ("My-Bucket", None), ("ab", None), ("bucket/", None)]),
    "sweep_interval_secs": (["0", "300", "12.5"], [("-1", None), ("5m", None), ("", "empty")]),
    "sweep_grace_secs": (["0", "300", "0.5"], [("-300", None), ("soon", None)]),
    "incoming_prefix": (
        ["incoming/", "uploads/team-a/"],
        [("/incoming/", "object names do not start with /"), ("in coming/", "whitespace in a prefix is a typo")]),
    "answers_prefix": (
        ["answers/", "gs://other-bucket/out/", "g", "gs", "gold/", "gsx/"],
        [("gs://", "an empty gs:// location"), ("gs:/x", "a mistyped gs:// location"),
         ("/abs/dir", "a local path means nothing on Dataflow workers"), ("gs:x/", "a mistyped gs:// location")]),
    "error_prefix": (
        ["errors/", "gs://other-bucket/errors/"],
        [("gs://", "an empty gs:// location"), ("/tmp/errors", "a local path means nothing on Dataflow workers")]),
    "keep_source": (["true", "false"], [("maybe", None), ("yes", "the launcher passes true or false")]),
    "max_file_bytes": (["52428800", "1"], [("0", None), ("-5", None), ("50MiB", None)]),
    "max_rows": (["200000", "1"], [("0", None), ("1e6", None)]),
    "max_context_chars": (["100000", "1"], [("0", None), ("100k", None)]),
    "max_columns": (["1000", "1", "200000"], [("0", None), ("-1", None), ("1k", None)]),
    "chunk_size": (["64", "1", "512"], [("0", None), ("-64", None), ("6.4", None)]),
    "model": (
        ["distilbert/distilbert-base-cased-distilled-squad", "gs://my-bucket/models/qa/", "/opt/beam_qa/model"],
        [("", "empty"), ("my model", "whitespace is never part of a model id or path")]),
    "model_watch_pattern": (
        ["gs://my-models/models/*/beam_qa_manifest.json", "gs://my-models/qa/**/beam_qa_manifest.json"],
        [("gs://my-models/models/*", None), ("gs://my-models/models/*/config.json", None),
         ("/opt/models/*/beam_qa_manifest.json", "a local path"), ("models/*/beam_qa_manifest.json", "not a gs:// URI")]),
    "model_watch_interval_secs": (["60", "0.5"], [("0", None), ("-60", None), ("1m", None)]),
    "device": (["auto", "cpu", "cuda"], [("gpu", None), ("CUDA", None)]),
    "runtime": (["auto", "torch", "onnxruntime"], [("ort", None), ("TORCH", None)]),
    "precision": (["fp32", "bf16", "fp16", "int8", "auto"], [("int4", None), ("none", None), ("FP32", None)]),
    "max_seq_len": (["384", "512"], [("0", None), ("384.0", None)]),
    "doc_stride": (["128", "1"], [("0", None), ("-128", None)]),
    "max_answer_len": (["15"], [("0", None), ("fifteen", None)]),
    "min_batch_size": (["1", "8"], [("0", None)]),
    "max_batch_size": (["64", "256"], [("0", None), ("-1", None)]),
    "max_batch_duration_secs": (["0.5", "2", "10", "0.05"], [("0", None), ("0.0", None), ("00.000", None),
                                                            ("-1", None), ("forever", None)]),
    "pg_dsn": (["host=10.0.0.3 dbname=beam_qa user=beam_qa sslmode=require",
                "postgresql://beam_qa@10.0.0.3/beam_qa"],
               [("", "empty"), ("host=x\ndbname=y", "a line break is never part of a connection string")]),
    "inference_threads": (["0", "1", "8"], [("-1", None), ("auto", None)]),
    "pg_pool_size": (["4", "1"], [("0", None), ("four", None)]),
    "lease_secs": (["120", "0.5", "30.25"], [("0", None), ("0.0", None), ("-5", None), ("2m", None)]),
    "max_attempts": (["3", "1", "10"], [("0", None), ("-3", None), ("three", None)]),
    "pg_password_secret": (
        ["projects/my-project/secrets/beam-qa-pg-password/versions/latest"],
        [("projects/my-project/secrets/beam-qa-pg-password", None), ("beam-qa-pg-password", None)]),
    "gcs_anonymous": (["true", "false"], [("anonymous", None)]),
    "status_interval_secs": (["0", "30", "2.5"], [("-30", None), ("30s", None)]),
    "log_level": (["INFO", "DEBUG", "WARNING"], [("verbose", None), ("", "empty")]),
}

BASE_STREAMING = [f"--input_subscription={SUBSCRIPTION}", "--input_bucket=my-qa-bucket", "--pg_dsn=dbname=x",
                  "--model=/opt/beam_qa/model"]


def qa_option_actions() -> dict[str, argparse.Action]:
    """Every flag QaOptions adds (not Beam's own options), by name."""
    parser = argparse.ArgumentParser(add_help=False)
    QaOptions._add_argparse_args(parser)  # pylint: disable=protected-access
    return {action.dest: action for action in parser._actions}  # pylint: disable=protected-access


def option_accepts(name: str, value: str) -> bool:
    """Whether the launcher's option parsing accepts ``--name=value`` (Flex Templates pass that form)."""
    base = [arg for arg in BASE_STREAMING if not arg.startswith(f"--{name}=")]
    if name == "input_pattern":
        base = [arg for arg in base if not arg.startswith(("--input_subscription=", "--input_bucket="))]
    try:
        with contextlib.redirect_stderr(io.StringIO()):
            parse_options(base + [f"--{name}={value}"])
    except (ValueError, SystemExit):
        return False
    return True


@pytest.fixture(scope="module")
def metadata() -> dict:
    return json.loads(METADATA_PATH.read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def parameters(metadata) -> dict[str, dict]:
    names = [p["name"] for p in metadata["parameters"]]
    assert len(names) == len(set(names)), f"duplicate parameters: {names}"
    return {p["name"]: p for p in metadata["parameters"]}


def test_it_is_a_metadata_file_not_a_template_spec(metadata):
    """The top level is TemplateMetadata: what --metadata-file takes, not the spec gcloud writes."""
    assert set(metadata) == {"name", "description", "streaming", "parameters"}
    assert metadata["name"].strip() and metadata["description"].strip()
    assert metadata["streaming"] is True


def test_every_option_is_a_parameter_and_every_parameter_an_option(parameters):
    options, documented = set(qa_option_actions()), set(parameters)
    problems = [f"QaOptions flag --{name} has no parameter in flex_template.json: add one named {name!r} "
                "(label, helpText, isOptional, regexes) and examples for it in CASES"
                for name in sorted(options - documented)]
    problems += [f"flex_template.json parameter {name!r} is no QaOptions flag: remove it or rename it to the flag"
                 for name in sorted(documented - options)]
    assert not problems, "\n".join(problems)


def test_every_parameter_has_label_help_optionality_and_regexes(parameters):
    for name, param in parameters.items():
        assert param.get("label", "").strip(), name
        assert len(param.get("helpText", "").strip()) > 20, name
        assert isinstance(param.get("isOptional"), bool), name
        assert param.get("regexes"), name


def test_no_regex_needs_more_than_re2(parameters):
    """RE2 (and Java's engine) compile them, and there is no lookaround or Unicode-dependent class."""
    for name, param in parameters.items():
        for pattern in param["regexes"]:
            re2.compile(pattern)
            assert not re.search(r"\(\?[=!<]", pattern), f"{name}: lookaround in {pattern!r}"
            assert not re.search(r"\\[sSwWdDbB]", pattern), (
                f"{name}: {pattern!r} uses a class whose meaning differs between RE2, Java and Python; "
                "spell the characters out")


def test_types_fit_the_options(parameters):
    actions = qa_option_actions()
    for name, param in parameters.items():
        action, kind = actions[name], param.get("paramType", "TEXT")
        if action.choices:
            assert kind == "ENUM", name
            assert [option["value"] for option in param["enumOptions"]] == list(action.choices), name
        elif action.type is not None and action.type.__name__ == "_flag":
            assert kind == "BOOLEAN", name
        elif action.type is not None and action.type.__name__.endswith(("_int", "_float")):
            assert kind == "NUMBER", name
        if "defaultValue" in param:
            default = str(action.default).lower() if isinstance(action.default, bool) else action.default
            assert param["defaultValue"] == str(default).removesuffix(".0"), (name, param["defaultValue"], default)


@pytest.mark.parametrize("engine", sorted(ENGINES))
def test_defaults_and_choices_pass_the_regexes(parameters, engine):
    """A regex that rejected an option's own default or choices would make the template unusable."""
    matches = ENGINES[engine]
    for name, action in qa_option_actions().items():
        if name not in parameters:
            continue  # test_every_option_is_a_parameter_and_every_parameter_an_option names it
        values = list(action.choices or [])
        if action.default is not None:
            values.append(action.default)
        for value in values:
            text = str(value).lower() if isinstance(value, bool) else str(value)
            for pattern in parameters[name]["regexes"]:
                assert matches(pattern, text), (name, text, pattern)


def test_every_parameter_has_examples(parameters):
    missing = sorted(set(parameters) - set(CASES))
    assert not missing, "add valid and invalid examples to CASES for: " + ", ".join(missing)
    assert not set(CASES) - set(parameters), sorted(set(CASES) - set(parameters))


@pytest.mark.parametrize("engine", sorted(ENGINES))
@pytest.mark.parametrize("name", sorted(CASES))
def test_regexes_accept_real_values_and_reject_mistakes(parameters, engine, name):
    if name not in parameters:
        pytest.skip(f"{name} is no parameter (test_every_option_is_a_parameter_... names it)")
    matches = ENGINES[engine]
    patterns = parameters[name]["regexes"]
    good, bad = CASES[name]
    for value in good:
        assert all(matches(p, value) for p in patterns), f"{name}: {engine} rejects the real value {value!r}"
    for value, _ in bad:
        assert not all(matches(p, value) for p in patterns), f"{name}: {engine} accepts the mistake {value!r}"


@pytest.mark.parametrize("name", sorted(CASES))
def test_regexes_agree_with_the_options(name):
    """What the template accepts, the option accepts; mistakes marked None the option rejects too."""
    good, bad = CASES[name]
    for value in good:
        assert option_accepts(name, value), f"--{name}={value!r} passes the template but the option rejects it"
    for value, reason in bad:
        if reason is None:
            assert not option_accepts(name, value), f"--{name}={value!r}: the option accepts it; give a reason"


def test_only_the_connection_string_is_required(parameters):
    required = sorted(name for name, p in parameters.items() if not p["isOptional"])
    assert required == ["pg_dsn"]


def test_boolean_flags_take_the_explicit_values_the_launcher_passes():
    """The Flex Template launcher passes every parameter as --name=value."""
    base = ["--input_pattern=gs://b/incoming/*.csv", "--pg_dsn=dbname=x"]
    assert parse_options(base + ["--keep_source=true"]).keep_source is True
    assert parse_options(base + ["--keep_source=false"]).keep_source is False
    assert parse_options(base + ["--keep_source"]).keep_source is True
    assert parse_options(base).keep_source is False


def test_every_field_is_one_the_dataflow_api_knows(metadata, tmp_path):
    """gcloud keeps unknown keys and enum values (paramType) silently; its own API messages do not."""
    assert unrecognized_fields(DATAFLOW_MESSAGES, "TemplateMetadata", metadata, tmp_path) == []


def flex_template_build(metadata_file: Path, tmp_path: Path):
    return run_gcloud(["dataflow", "flex-template", "build", "gs://offline-check-bucket/templates/beam-qa.json",
                       "--image=us-central1-docker.pkg.dev/offline-check-project/beam-qa/beam-qa-worker:test",
                       "--sdk-language=PYTHON", f"--metadata-file={metadata_file}", "--print-only"], tmp_path)


def test_gcloud_builds_the_template_from_the_unmodified_file(metadata, tmp_path):
    result = flex_template_build(METADATA_PATH, tmp_path)
    assert result.returncode == 0, result.stderr
    # --print-only prints the spec it would upload, as a YAML block scalar ("|-") holding JSON.
    spec = json.loads(result.stdout.strip().removeprefix("|-"))
    assert spec["image"].endswith("beam-qa-worker:test") and spec["sdkInfo"] == {"language": "PYTHON"}
    assert spec["metadata"]["name"] == metadata["name"]
    assert spec["metadata"]["description"] == metadata["description"]
    built = {p["name"]: p for p in spec["metadata"]["parameters"]}
    assert list(built) == [p["name"] for p in metadata["parameters"]]
    for param in metadata["parameters"]:
        assert {k: v for k, v in built[param["name"]].items() if k != "isOptional"} == \
            {k: v for k, v in param.items() if k != "isOptional"}, param["name"]


def test_gcloud_rejects_a_template_spec_as_metadata(metadata, tmp_path):
    """The shape this file had before (a spec wrapping "metadata") is refused: the test above can fail."""
    wrapped = tmp_path / "spec-shaped.json"
    wrapped.write_text(json.dumps({"image": "x", "sdkInfo": {"language": "PYTHON"}, "metadata": metadata}),
                       encoding="utf-8")
    result = flex_template_build(wrapped, tmp_path)
    assert result.returncode != 0 and "Name field is empty" in result.stderr
