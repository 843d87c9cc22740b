"""The password from --pg_password_secret reaches libpq (real PostgreSQL; trust auth accepts any)."""

import pytest

from beam_qa import runtime, secret_manager
from beam_qa.settings import PostgresSettings
from tests.conftest import fresh_database

pytestmark = pytest.mark.integration

SECRET = "projects/p/secrets/pg-password/versions/latest"
PASSWORD = "from-secret-manager-7c1d"


def test_connections_use_the_password_from_the_secret(monkeypatch):
    dsn = fresh_database("beam_qa_metrics_secret")
    monkeypatch.setattr(secret_manager, "access_secret_version", lambda name: PASSWORD if name == SECRET else "")
    store = runtime.postgres(PostgresSettings(dsn, password_secret=SECRET, retry_secs=10))
    try:
        with store._pool.connection() as conn:  # pylint: disable=protected-access
            assert conn.info.password == PASSWORD
            assert PASSWORD not in conn.info.dsn  # libpq never echoes it back
            assert conn.execute("SELECT count(*) FROM qa_files").fetchone() == (0,)
    finally:
        runtime.close()
