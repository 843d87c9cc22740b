"""AssemblePerFile: all rows of one (uri, generation), in original order."""

from __future__ import annotations

import apache_beam as beam
from apache_beam.coders import PickleCoder, VarIntCoder
from apache_beam.transforms.userstate import BagStateSpec, ReadModifyWriteStateSpec

from beam_qa.records import FileAnswers, RowAnswer


def _key_by_file(answer: RowAnswer) -> tuple[str, RowAnswer]:
    return answer.row.manifest.event.key, answer


class _AssembleFn(beam.DoFn):
    """Buffers a file's row answers until every row index has arrived, then emits them.

    Works in the global window of a streaming job (no window end needed): completion is
    known from the manifest's row count. Repeated rows (a redelivered file) are folded.
    """

    ROWS = BagStateSpec("rows", PickleCoder())
    COUNT = ReadModifyWriteStateSpec("count", VarIntCoder())

    def process(self, element, rows=beam.DoFn.StateParam(ROWS), count=beam.DoFn.StateParam(COUNT)):
        _, answer = element
        rows.add(answer)
        seen = (count.read() or 0) + 1
        count.write(seen)
        expected = answer.row.manifest.row_count
        if seen < expected:
            return
        by_index: dict[int, RowAnswer] = {}
        for item in rows.read():
            by_index.setdefault(item.row.row_index, item)
        if len(by_index) < expected:
            return
        rows.clear()
        count.clear()
        yield FileAnswers(manifest=answer.row.manifest,
                          answers=tuple(by_index[i] for i in sorted(by_index)))


class AssemblePerFile(beam.PTransform):
    """RowAnswers -> one FileAnswers per file version, rows in original order."""

    def expand(self, answers):
        return (answers
                | "KeyByFile" >> beam.Map(_key_by_file)
                | "CollectRows" >> beam.ParDo(_AssembleFn()))
