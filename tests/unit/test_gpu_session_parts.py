"""The GPU session's pieces that need no GPU: busy time, nvidia-smi samples, the summary, the smoke preset."""

from __future__ import annotations

import threading

from benchmarks import gpu_bench, gpu_session


def test_the_union_of_passes_counts_overlapping_time_once():
    assert gpu_bench.union_seconds([]) == 0.0
    assert gpu_bench.union_seconds([(0.0, 1.0), (2.0, 3.0)]) == 2.0
    assert gpu_bench.union_seconds([(2.0, 3.0), (0.0, 1.5), (1.0, 2.5)]) == 3.0  # unsorted, chained overlaps
    assert gpu_bench.union_seconds([(0.0, 4.0), (1.0, 2.0)]) == 4.0  # nested


def test_timed_forward_passes_outputs_through_and_counts_every_pass_since_reset():
    calls = []

    def forward(**inputs):
        calls.append(inputs)
        return {"logits": inputs["input_ids"] * 2}

    timed = gpu_bench.TimedForward(forward, "cpu")
    assert timed(input_ids=3) == {"logits": 6}
    timed.reset()
    threads = [threading.Thread(target=timed, kwargs={"input_ids": i}) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    busy, passes = timed.busy()
    assert passes == 4 and len(calls) == 5 and busy >= 0.0


def test_nvidia_smi_samples_skip_what_is_not_a_number():
    text = "37, 1024\n[N/A], 5\n12, 2048\n4"
    assert gpu_bench.parse_smi_samples(text) == [(37.0, 1024.0), (12.0, 2048.0)]


def test_a_sampler_without_nvidia_smi_or_a_gpu_reports_nothing():
    with gpu_bench.GpuSampler(enabled=False) as sampler:
        pass
    assert sampler.summary() is None
    sampler.samples = [(50.0, 100.0), (70.0, 300.0)]
    assert sampler.summary() == {"samples": 2, "interval_ms": gpu_bench.SMI_INTERVAL_MS,
                                 "mean_utilization_pct": 60.0, "max_memory_used_mib": 300.0}


def _config(precision, rows_per_s, identical, batch=256):
    return {"precision": precision, "batch_size": batch, "tokens_per_forward": 65536, "rows_per_s": rows_per_s,
            "busy_share": 0.8, "vs_fp32": {"identical_share": identical}}


def test_the_handler_target_takes_the_fastest_bf16_configuration_within_the_agreement_bound():
    handler = {"configs": [_config("bf16", 20000, 0.95, 1024), _config("bf16", 12000, 0.99, 256),
                           _config("fp16", 30000, 0.99), {"precision": "bf16", "batch_size": 64, "error": "boom"}]}
    summary = gpu_session.summarize({"handler": {"status": "ok"}}, handler, None)
    target = summary["targets"][0]
    assert (target["measured_rows_per_s"], target["identical_share"], target["config"], target["met"]) == (
        12000, 0.99, {"batch_size": 256, "tokens_per_forward": 65536}, True)
    slow = gpu_session.summarize({}, {"configs": [_config("bf16", 9000, 0.99)]}, None)["targets"][0]
    assert slow["met"] is False
    disagreeing = gpu_session.summarize({}, {"configs": [_config("bf16", 50000, 0.5)]}, None)["targets"][0]
    assert disagreeing["met"] is False and disagreeing["measured_rows_per_s"] == 50000
    assert gpu_session.summarize({}, None, None)["targets"][0]["met"] is None


def test_the_pipeline_targets_need_every_row_stored_and_name_failed_parts():
    pipeline = {"runners": {"default": {
        "flags": [], "startup_run": {"rows": 100, "all_stored_and_done": True},
        "1x20000": {"steady_rows_per_s": 3500.0, "whole_run_rows_per_s": 900.0, "all_stored_and_done": True},
        "200x100": {"steady_rows_per_s": 4000.0, "whole_run_rows_per_s": 800.0, "all_stored_and_done": False},
        "9x9": {"files": 9, "rows_per_file": 9, "error": "exited with 2"}}}}
    parts = {"pipeline": {"status": "failed"}, "handler": {"status": "ok"}, "model": {"status": "skipped"}}
    summary = gpu_session.summarize(parts, None, pipeline)
    met = {t["what"].split(", ")[1]: t["met"] for t in summary["targets"][1:]}
    assert met == {"1x20000 (files x rows)": True, "200x100 (files x rows)": False, "9x9 (files x rows)": None}
    assert summary["failed_parts"] == ["pipeline"]
    lines = gpu_session.summary_lines(summary)
    assert "part pipeline: failed (see session.log)" in lines and "part handler: ok" in lines
    assert any(line.endswith("(target 3000): NOT MET") for line in lines)


def test_smoke_replaces_the_defaults_but_not_what_was_given():
    args = gpu_session.parse_args(["--smoke", "--rows", "50"])
    assert (args.device, args.model_size, args.rows, args.runners) == ("cpu", "tiny", 50, "default")
    plain = gpu_session.parse_args([])
    assert (plain.device, plain.model_size, plain.rows, plain.runners) == ("cuda", "base", 20000, "default,procs4")
    assert set(gpu_session._csv(plain.runners)) <= set(gpu_bench.RUNNERS)  # pylint: disable=protected-access


def test_failures_name_the_configurations_and_runs_that_hold_an_error():
    handler = {"part": "handler", "configs": [{"precision": "bf16", "batch_size": 64, "tokens_per_forward": 1,
                                               "error": "x"}, _config("bf16", 1, 1.0)]}
    assert gpu_bench.failures(handler) == ["bf16/64/1"]
    pipeline = {"part": "pipeline", "runners": {"default": {"flags": [], "startup_run": {"error": "x"}}}}
    assert gpu_bench.failures(pipeline) == ["default/startup_run"]
