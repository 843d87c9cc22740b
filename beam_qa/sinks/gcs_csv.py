"""The answers CSV written for each source file."""

from __future__ import annotations

import csv
import io

from beam_qa.records import FileAnswers

ANSWER_COLUMNS = ("answer", "score", "answer_start", "answer_end", "error")
ANSWERS_SUFFIX = ".answers.csv"

# A cell starting with one of these is a formula in Excel, LibreOffice and Google Sheets.
_FORMULA_PREFIXES = ("=", "+", "-", "@", "\t", "\r")


def neutralise_formula(cell: str) -> str:
    """Prefixes ``'`` to a cell a spreadsheet would run as a formula (OWASP CSV injection)."""
    return "'" + cell if cell.startswith(_FORMULA_PREFIXES) else cell


def render_answers_csv(result: FileAnswers) -> str:
    """The input columns plus answer, score, answer_start, answer_end and error, in row order."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\r\n")
    writer.writerow([neutralise_formula(h) for h in result.manifest.header] + list(ANSWER_COLUMNS))
    for item in result.answers:
        extra = [
            item.answer if item.answer is not None else "",
            f"{item.score:.6g}" if item.score is not None else "",
            "" if item.start is None else item.start,
            "" if item.end is None else item.end,
            item.error,
        ]
        writer.writerow([neutralise_formula(str(v)) for v in (*item.row.values, *extra)])
    return buffer.getvalue()
