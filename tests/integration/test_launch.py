"""The launcher resolves a run once: one parse of the options, one configuration for every step."""

import pytest

from beam_qa import cli, launch
from beam_qa.options import QaOptions
from tests.conftest import csv_bytes, fresh_database, query

pytestmark = pytest.mark.integration


def test_a_run_from_the_command_line_parses_its_options_once(tmp_path, write_file, tiny_model, monkeypatch):
    dsn = fresh_database("beam_qa_it_launch_once")
    write_file("once.csv", csv_bytes(["question", "context", "kind"],
                                     [["Who?", "Alice wrote it.", "a"], ["", "no question", "b"]]))
    parses, validations = [], []
    real_parse, real_validate = launch.parse_options, QaOptions.validate_qa

    def counting_parse(argv=None):
        parses.append(list(argv or []))
        return real_parse(argv)

    def counting_validate(self):
        validations.append(self)
        return real_validate(self)
    monkeypatch.setattr(launch, "parse_options", counting_parse)
    monkeypatch.setattr(QaOptions, "validate_qa", counting_validate)
    argv = [f"--input_pattern={tmp_path / 'in' / '*.csv'}", f"--model={tiny_model}", f"--pg_dsn={dsn}",
            "--status_interval_secs=0"]

    assert cli.main(argv) == 0

    assert len(parses) == 1 and len(validations) == 1, (parses, validations)
    # And that one configuration ran the job: the file is done with both rows, one a row error with its kind.
    assert query(dsn, "SELECT status, row_count FROM qa_files") == [("done", 2)]
    assert query(dsn, "SELECT row_index, error_kind FROM qa_answers ORDER BY row_index") == [
        (0, None), (1, "empty_question")]
