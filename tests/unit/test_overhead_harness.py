"""The cost-per-row benchmark's pure parts: shapes, the steady state, the per-stage table."""

import pytest

from benchmarks import overhead


def test_shapes_are_files_by_rows():
    assert overhead.parse_shape("200x100") == (200, 100)
    assert overhead.parse_shape("1X20000") == (1, 20000)
    with pytest.raises(ValueError):
        overhead.parse_shape("200")


def test_the_steady_state_takes_the_start_up_run_out():
    startup = {"rows": 100, "elapsed_s": 8.0, "cpu_s": 9.0}
    run = {"rows": 20100, "elapsed_s": 18.0, "cpu_s": 29.0}
    figures = overhead.steady(run, startup)
    assert figures["steady_rows_per_s"] == 2000.0          # 20,000 rows in 10 s beyond start-up
    assert figures["steady_cpu_us_per_row"] == 1000         # 20 CPU seconds over 20,000 rows
    assert figures["whole_run_rows_per_s"] == round(20100 / 18.0, 1)
    assert overhead.steady({**run, "elapsed_s": 7.0}, startup)["steady_rows_per_s"] is None  # noise, not a rate


def test_beam_is_what_the_pipeline_spent_beyond_the_stages():
    stages = {"cpu_us_per_row": {"reading": 10.0, "model": 300.0, "decoding": 20.0, "postgres": 30.0,
                                 "postgres_server": 15.0}}
    table = overhead.breakdown(stages, 500.0)
    assert table["beam"] == 140.0 and table["postgres_server"] == 15.0
    assert table["share_of_pipeline_cpu"]["model"] == 0.6
    assert "postgres_server" not in table["share_of_pipeline_cpu"]  # another process's CPU
    assert "beam" not in overhead.breakdown(stages, None)
