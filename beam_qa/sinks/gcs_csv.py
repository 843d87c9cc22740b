"""The answers CSV written for each source file version."""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable, Sequence

from beam_qa.csv_rows import question_and_context_at, row_values
from beam_qa.events import ANSWERS_SUFFIX

ANSWER_COLUMNS = ("answer", "score", "answer_start", "answer_end", "error", "model")

__all__ = ["ANSWERS_SUFFIX", "ANSWER_COLUMNS", "neutralise_formula", "render_answers_csv"]

# A cell starting with one of these is a formula in Excel, LibreOffice and Google Sheets.
_FORMULA_PREFIXES = ("=", "+", "-", "@", "\t", "\r")


def neutralise_formula(cell: str) -> str:
    """Prefixes ``'`` to a cell a spreadsheet would run as a formula (OWASP CSV injection)."""
    return "'" + cell if cell.startswith(_FORMULA_PREFIXES) else cell


def render_answers_csv(header: Sequence[str], rows: Iterable[Sequence]) -> str:
    """The input columns plus answer, score, answer_start, answer_end, error and model, in row order.

    Args:
        header: the input file's header cells.
        rows: as stored in qa_answers, in row order: ``(row_index, question, context, other_cells,
            answer, score, start, end, error, model)``.
    """
    q_at, c_at = question_and_context_at(header)
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\r\n")
    writer.writerow([neutralise_formula(h) for h in header] + list(ANSWER_COLUMNS))
    for _, question, context, others, answer, score, start, end, error, model in rows:
        values = row_values(len(header), q_at, c_at, question, context, others or ())
        extra = [
            answer if answer is not None else "",
            f"{score:.6g}" if score is not None else "",
            "" if start is None else start,
            "" if end is None else end,
            error or "",
            model or "",
        ]
        writer.writerow([neutralise_formula(str(v)) for v in (*values, *extra)])
    return buffer.getvalue()
