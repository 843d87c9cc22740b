"""CSV reading: file errors, row errors and what is kept."""

import pytest

from beam_qa.csv_rows import FileError, parse_csv
from beam_qa.events import FileEvent

EVENT = FileEvent(uri="gs://b/incoming/x.csv", generation=1, size=-1, root="gs://b/",
                  relative_name="x.csv", event_time=0.0)


def parse(data: bytes, **limits):
    return parse_csv(data, EVENT, max_bytes=limits.get("max_bytes", 10_000_000),
                     max_rows=limits.get("max_rows", 1000))


def kind_of(data: bytes, **limits) -> str:
    with pytest.raises(FileError) as info:
        parse(data, **limits)
    return info.value.kind


def test_header_is_case_and_space_insensitive_and_other_columns_are_kept():
    parsed = parse(b" ID ,Question , CONTEXT,extra\nr1,What?,Some text,keep me\n")
    row = parsed.rows[0]
    assert (row.question, row.context, row.row_id) == ("What?", "Some text", "r1")
    assert parsed.manifest.header == (" ID ", "Question ", " CONTEXT", "extra")
    assert row.values == ("r1", "What?", "Some text", "keep me")


def test_bom_crlf_and_quoted_newlines():
    data = "\ufeffquestion,context\r\n\"Multi\r\nline?\",\"a, b\r\nc\"\r\n".encode()
    parsed = parse(data)
    assert parsed.rows[0].question == "Multi\r\nline?"
    assert parsed.rows[0].context == "a, b\r\nc"


def test_empty_question_and_context_are_row_errors_others_answered():
    parsed = parse(b"question,context\nq1,c1\n,c2\n  ,c3\nq4,\n")
    errors = [r.error for r in parsed.rows]
    assert errors == ["", "empty question", "empty question", "empty context"]
    assert parsed.manifest.row_count == 4


def test_blank_lines_are_skipped_and_short_rows_padded():
    parsed = parse(b"question,context,extra\n\nq1,c1\n\n")
    assert parsed.manifest.row_count == 1
    assert parsed.rows[0].values == ("q1", "c1", "")


def test_extra_fields_are_a_row_error():
    parsed = parse(b"question,context\nq1,c1,surplus\n")
    assert parsed.rows[0].error.startswith("row has 3 fields")


@pytest.mark.parametrize("data, kind", [
    (b"", "empty"),
    (b"\n\n", "empty"),
    (b"question,context\n", "no_rows"),
    (b"question,ctx\nq,c\n", "missing_columns"),
    (b"foo,bar\n1,2\n", "missing_columns"),
    (b"question,context,question\nq,c,q\n", "duplicate_columns"),
    ("question,context\nqu\u00e9,c\n".encode("latin-1"), "not_utf8"),
    (b"question,context\nq\x00,c\n", "binary"),
    (bytes(range(256)) * 4, "not_utf8"),
])
def test_file_errors(data, kind):
    assert kind_of(data) == kind


def test_missing_column_message_names_the_column():
    with pytest.raises(FileError, match="missing column\\(s\\) context"):
        parse(b"question,ctx\nq,c\n")


def test_size_and_row_limits():
    assert kind_of(b"question,context\nq,c\n", max_bytes=5) == "too_large"
    assert kind_of(b"question,context\nq,c\nq,c\nq,c\n", max_rows=2) == "too_many_rows"


def test_a_one_megabyte_cell_is_read():
    big = "word " * 200_000
    parsed = parse(f"question,context\nq,\"{big}\"\n".encode())
    assert len(parsed.rows[0].context) == len(big)
