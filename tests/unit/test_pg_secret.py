"""--pg_password_secret: validated up front, resolved on the worker, never in the job graph.

The Secret Manager call is ``beam_qa.secret_manager.access_secret_version``; these tests replace
it (or the client class it uses), so they need no credentials and no network.
"""

import pickle

import pytest
from apache_beam.internal import pickler

from beam_qa import runtime, secret_manager
from beam_qa.errors import UsageError
from beam_qa.launch import parse_options
from beam_qa.settings import PostgresSettings
from beam_qa.store.postgres import PostgresStore
from beam_qa.sinks.transforms import WriteAnswersPostgres

SECRET = "projects/p/secrets/pg-password/versions/4"
PASSWORD = "s3cr3t-Δ-value"


@pytest.fixture
def fake_secret(monkeypatch):
    calls = []

    def fetch(name: str) -> str:
        calls.append(name)
        return PASSWORD
    monkeypatch.setattr(secret_manager, "access_secret_version", fetch)
    return calls


@pytest.fixture
def no_connection(monkeypatch):
    """The store's pool is never opened: these tests only look at what it would connect with."""
    monkeypatch.setattr(PostgresStore, "open", lambda self: None)
    yield
    runtime.close()


def test_the_worker_fetches_the_password_when_it_opens_its_pool(fake_secret, no_connection):
    settings = PostgresSettings("host=db dbname=beam_qa user=beam_qa", password_secret=SECRET)
    assert fake_secret == []  # nothing read when the settings are built
    store = runtime.postgres(settings)
    assert store._connect_kwargs == {"password": PASSWORD}  # pylint: disable=protected-access
    assert runtime.postgres(settings) is store  # one store (and one read) per process
    assert fake_secret == [SECRET]


def test_a_store_without_a_secret_adds_no_password(fake_secret, no_connection):
    store = runtime.postgres(PostgresSettings("host=db dbname=beam_qa user=beam_qa"))
    assert store._connect_kwargs == {}  # pylint: disable=protected-access
    assert fake_secret == []


def test_the_sink_pickles_the_secret_name_not_the_password(fake_secret, no_connection):
    settings = PostgresSettings("host=db dbname=beam_qa user=beam_qa", password_secret=SECRET)
    # This process already holds the password (its store fetched it, as a worker's does), so the
    # password is there to be captured: the pickled sink must still carry only the name.
    assert runtime.postgres(settings)._connect_kwargs == {"password": PASSWORD}  # pylint: disable=protected-access
    transform = WriteAnswersPostgres(settings)
    assert PASSWORD.encode() not in pickle.dumps(transform._fn)  # pylint: disable=protected-access
    restored = pickler.loads(pickler.dumps(transform._fn))  # pylint: disable=protected-access
    assert restored._pg_settings.password_secret == SECRET  # pylint: disable=protected-access
    # Building and pickling the sink fetched nothing more: the one read was the store's.
    assert fake_secret == [SECRET]


def test_access_secret_version_reads_the_payload(monkeypatch):
    from google.cloud import secretmanager

    class FakeTransport:
        closed = False

        def close(self):
            FakeTransport.closed = True

    class FakeClient:
        def __init__(self):
            self.transport = FakeTransport()

        def access_secret_version(self, request):
            assert request == {"name": SECRET}
            return secretmanager.AccessSecretVersionResponse(
                name=SECRET, payload=secretmanager.SecretPayload(data=PASSWORD.encode("utf-8")))
    monkeypatch.setattr(secretmanager, "SecretManagerServiceClient", FakeClient)
    assert secret_manager.access_secret_version(SECRET) == PASSWORD
    assert FakeTransport.closed


@pytest.mark.parametrize("argv, message", [
    (["--pg_password_secret=projects/p/secrets/s"], "projects/PROJECT/secrets/NAME/versions/VERSION"),
    (["--pg_password_secret=" + SECRET, "--pg_dsn=host=db user=u password=x dbname=d"], "must not contain a password"),
    (["--pg_password_secret=" + SECRET, "--pg_dsn=postgresql://u:x@db/d"], "must not contain a password"),
])
def test_bad_secret_options_are_rejected(argv, message):
    with pytest.raises(ValueError, match=message):
        parse_options(["--input_pattern=x", "--pg_dsn=host=db dbname=d user=u"] + argv)


def test_the_secret_name_is_the_only_trace_in_the_options(fake_secret):
    opts = parse_options(["--input_pattern=x", "--pg_dsn=host=db dbname=d user=u", f"--pg_password_secret={SECRET}"])
    assert opts.pg_password_secret == SECRET
    # Validating the options reads no secret: the password cannot reach them (or the job graph).
    assert fake_secret == []


DATAFLOW = ["--input_pattern=gs://b/incoming/*.csv", "--runner=DataflowRunner", "--project=p", "--region=us-central1",
            "--temp_location=gs://b/tmp", "--sdk_container_image=example.com/beam-qa-worker:1"]


@pytest.mark.parametrize("dsn", ["host=db dbname=d user=u password=hunter2", "postgresql://u:hunter2@db/d",
                                 "postgresql://u@db/d?password=hunter2"])
def test_a_dsn_with_a_password_is_refused_on_dataflow(dsn):
    """Dataflow stores the job's options and shows them in its console: the password goes to Secret Manager."""
    with pytest.raises(UsageError) as info:
        parse_options(DATAFLOW + [f"--pg_dsn={dsn}"])
    assert "--pg_password_secret" in str(info.value) and "hunter2" not in str(info.value)
    assert parse_options(DATAFLOW + ["--pg_dsn=host=db dbname=d user=u", f"--pg_password_secret={SECRET}"])
    assert parse_options(["--input_pattern=x", f"--pg_dsn={dsn}"]).pg_dsn == dsn  # a local run may


def test_a_dsn_that_is_not_one_is_a_usage_error():
    with pytest.raises(UsageError, match="--pg_dsn is not a libpq connection string"):
        parse_options(DATAFLOW + ["--pg_dsn=host='unterminated"])
