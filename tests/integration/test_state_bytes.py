"""The per-file assembly holds a small fraction of the state per row it used to (issue 10)."""

import pytest

from benchmarks.state_bytes import measure
from devtools.squad import squad_rows
from tests.conftest import fresh_database

pytestmark = pytest.mark.integration


def test_assembly_state_per_row_is_at_most_a_quarter_of_the_old_bag_state():
    result = measure(fresh_database("beam_qa_state_bytes"), squad_rows(1000), chunk_size=64)
    before, now = result["before_bytes_per_row"], result["now"]["bytes_per_row"]
    # The old bag held the manifest, the cells and the context per row: about a kilobyte or more.
    assert before > 500, result
    assert result["now"]["qa_chunks_rows"] == 1000 // 64  # every chunk but the last, before it commits
    assert now <= 0.25 * before, result
