"""The answers CSV written for each source file version."""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable, Sequence

from beam_qa.csv_rows import question_and_context_at
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
    width = len(header)
    others_width = width - 2
    # The question and context go back where they were (``row_values``), lower position first.
    (first_at, first_is_question), (second_at, _) = sorted(((q_at, True), (c_at, False)))
    formula = _FORMULA_PREFIXES

    def cells(row: Sequence) -> list[str]:
        _, question, context, others, answer, score, start, end, error, model = row
        values = list(others or ())[:others_width]
        if len(values) < others_width:
            values += [""] * (others_width - len(values))
        values.insert(first_at, question if first_is_question else context)
        values.insert(second_at, context if first_is_question else question)
        values += ["" if answer is None else answer, "" if score is None else f"{score:.6g}",
                   "" if start is None else str(start), "" if end is None else str(end), error or "", model or ""]
        return ["'" + v if v.startswith(formula) else v for v in values]

    buffer = io.StringIO()
    # Every cell quoted, not only those holding a comma: a spreadsheet that splits on ";" (or a
    # tab) would otherwise read `x;=1+1` as two cells, the second a formula that the prefix check
    # never saw (OWASP CSV injection: quote every field, besides the prefix).
    writer = csv.writer(buffer, lineterminator="\r\n", quoting=csv.QUOTE_ALL)
    writer.writerow([neutralise_formula(h) for h in header] + list(ANSWER_COLUMNS))
    # One writerows call over a generator: the csv module's C writer does the quoting per cell.
    writer.writerows(map(cells, rows))
    return buffer.getvalue()
