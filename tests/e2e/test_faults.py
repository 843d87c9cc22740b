"""The fault matrix: nothing lost, nothing doubled, against the real emulators and PostgreSQL.

One stack on free ports (Pub/Sub emulator, fake-gcs-server, PostgreSQL database
``beam_qa_faults_e2e``) and one streaming pipeline, which reaches its dependencies through two
proxies owned by the test:

- ``TcpProxy`` between the pipeline and PostgreSQL, which the test cuts and restores;
- ``GcsProxy``, an HTTP proxy in front of fake-gcs-server that answers 503 to uploads of chosen
  answers CSVs while told to (403 to deletes, or holds downloads, of chosen objects), and forwards
  everything else unchanged.

The pipeline runs with a short sweep (every 5 s, grace 20 s) and a short lease (10 s) so that the
sweeper's retries happen within the test. The GCS proxy can also refuse deletes (403, which the
client does not retry) and hold an object's download until told (a worker that hangs on a file). Deletes and CSV writes are counted from fake-gcs-server's own OBJECT_DELETE and
OBJECT_FINALIZE notifications, read from an extra "audit" subscription on its topic.

The model is the tiny test model with one token, ``qqboomqq``, added to its tokenizer but not to
its embedding matrix: a row containing it makes the real forward pass of the real handler raise
an "index out of range" error, the way a model/tokenizer mismatch would in production; the handler narrows the
failure down to that row. No test-only code path is needed in the pipeline.
"""

from __future__ import annotations

import contextlib
import dataclasses
import http.client
import os
import re
import shutil
import signal
import socket
import threading
import time
import urllib.parse
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from devtools.stack import Stack, StackConfig
from tests.conftest import (
    PG_BASE_DSN, POISON, csv_bytes, fresh_database, poisoned_model, query, read_csv_text, squad_csv)
from tests.e2e.support import (
    answers_name, create_subscription, free_port, publish, pull_all, stack_environment, upload, wait_for_status,
    wait_gone)

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

SWEEP_INTERVAL_SECS = 5
SWEEP_GRACE_SECS = 20
LEASE_SECS = 10
MAX_BATCH_SIZE = 4


class TcpProxy:
    """Forwards a local port to ``target``; ``cut()`` drops every connection and refuses new ones."""

    def __init__(self, target: tuple[str, int]):
        self._target = target
        self._server = socket.create_server(("127.0.0.1", 0))
        self.port = self._server.getsockname()[1]
        self._lock = threading.Lock()
        self._sockets: set[socket.socket] = set()
        self._cut = False
        threading.Thread(target=self._accept_loop, daemon=True).start()

    def _accept_loop(self) -> None:
        while True:
            try:
                client, _ = self._server.accept()
            except OSError:
                return  # closed
            with self._lock:
                cut = self._cut
            if cut:
                # Accept and hang up at once: the client sees the server close the connection.
                client.close()
                continue
            try:
                upstream = socket.create_connection(self._target, timeout=5)
                upstream.settimeout(None)
            except OSError:
                client.close()
                continue
            with self._lock:
                self._sockets.update((client, upstream))
            for source, sink in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(source, sink), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        finally:
            self._drop(source)
            self._drop(sink)

    def _drop(self, sock: socket.socket) -> None:
        with self._lock:
            self._sockets.discard(sock)
        try:
            sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        sock.close()

    def cut(self) -> None:
        with self._lock:
            self._cut = True
            sockets = list(self._sockets)
        for sock in sockets:
            self._drop(sock)

    def restore(self) -> None:
        with self._lock:
            self._cut = False

    def close(self) -> None:
        self._server.close()
        self.cut()


_HOP_HEADERS = {"connection", "keep-alive", "proxy-connection", "transfer-encoding", "te", "trailer",
                "upgrade", "host", "content-length"}
_NAME_IN_BODY = re.compile(rb'"name"\s*:\s*"([^"]*)"')


class GcsProxy:
    """An HTTP proxy in front of fake-gcs-server that fails uploads, denies deletes or stalls downloads by name."""

    def __init__(self, upstream_url: str):
        parsed = urllib.parse.urlsplit(upstream_url)
        self._upstream = (parsed.hostname, parsed.port)
        self._upstream_url = upstream_url.rstrip("/").encode()
        self._lock = threading.Lock()
        self._failing: str | None = None
        self.failures: list[str] = []
        self._denied_deletes: str | None = None
        self._stalled_reads: str | None = None
        self._unstall = threading.Event()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # quiet
                pass

            def forward(self):
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                if proxy._should_fail(self.command, self.path, body):
                    self.send_response(503, "Service Unavailable (injected by the test)")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                if proxy._should_deny(self.command, self.path):
                    self.send_response(403, "Forbidden (injected by the test)")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                proxy._stall_if_asked(self.command, self.path)
                conn = http.client.HTTPConnection(*proxy._upstream, timeout=30)
                try:
                    headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP_HEADERS}
                    conn.request(self.command, self.path, body=body if length else None, headers=headers)
                    response = conn.getresponse()
                    data = response.read()
                finally:
                    conn.close()
                # fake-gcs-server names itself in the links it returns (mediaLink, a resumable
                # upload's Location): name the proxy instead, so that a download goes through it.
                if (response.getheader("Content-Type") or "").startswith("application/json"):
                    data = data.replace(proxy._upstream_url, proxy.url.encode())
                self.send_response(response.status, response.reason)
                for key, value in response.getheaders():
                    if key.lower() not in _HOP_HEADERS | {"date", "server"}:
                        self.send_header(key, value.replace(proxy._upstream_url.decode(), proxy.url))
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)

            do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = forward

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def _should_fail(self, method: str, path: str, body: bytes) -> bool:
        with self._lock:
            prefix = self._failing
        if prefix is None or method != "POST" or not path.startswith("/upload/storage/v1/b/"):
            return False
        names = urllib.parse.parse_qs(urllib.parse.urlsplit(path).query).get("name", [])
        names += [m.decode() for m in _NAME_IN_BODY.findall(body[:4096])]
        hit = next((name for name in names if name.startswith(prefix)), None)
        if hit is None:
            return False
        with self._lock:
            self.failures.append(hit)
        return True

    @staticmethod
    def _object_name(path: str) -> str:
        """The object name of an object URL (``.../b/BUCKET/o/NAME?...``), or ""."""
        parts = urllib.parse.urlsplit(path).path.split("/o/", 1)
        return urllib.parse.unquote(parts[1]) if len(parts) == 2 else ""

    def _should_deny(self, method: str, path: str) -> bool:
        with self._lock:
            prefix = self._denied_deletes
        return prefix is not None and method == "DELETE" and self._object_name(path).startswith(prefix)

    def _stall_if_asked(self, method: str, path: str) -> None:
        """Holds a media download of a stalled object until ``unstall()``: its reader waits, like a worker that hangs."""
        with self._lock:
            prefix = self._stalled_reads
        if (prefix is not None and method == "GET" and "alt=media" in path
                and self._object_name(path).startswith(prefix)):
            self._unstall.wait(timeout=600)

    def deny_deletes(self, prefix: str | None) -> None:
        """Answers 403 (not retried by the client) to deletes of objects under ``prefix``; None stops."""
        with self._lock:
            self._denied_deletes = prefix

    def stall_reads(self, prefix: str) -> None:
        with self._lock:
            self._stalled_reads = prefix
        self._unstall.clear()

    def unstall(self) -> None:
        with self._lock:
            self._stalled_reads = None
        self._unstall.set()

    def fail_uploads(self, prefix: str) -> None:
        with self._lock:
            self._failing = prefix
            self.failures.clear()

    def heal(self) -> None:
        with self._lock:
            self._failing = None

    def failure_count(self) -> int:
        with self._lock:
            return len(self.failures)

    def close(self) -> None:
        self.unstall()
        self._server.shutdown()
        self._server.server_close()


@dataclasses.dataclass
class Faults:
    services: Stack   # emulators and the real database (its config is what the test's clients use)
    pipeline: Stack   # the pipeline, configured to go through the proxies
    model: str
    pg_proxy: TcpProxy
    gcs_proxy: GcsProxy
    bucket: object
    audit_subscription: str
    audit: list = dataclasses.field(default_factory=list)

    @property
    def dsn(self) -> str:
        return self.services.config.pg_dsn

    def uri(self, blob) -> str:
        return f"gs://{self.bucket.name}/{blob.name}"

    def log(self) -> str:
        return (self.services.config.run_dir / "pipeline.log").read_text(errors="replace")

    def events(self, event_type: str, name: str, generation: int | None = None) -> list[dict]:
        """fake-gcs-server's notifications of that type for that object (and generation)."""
        self.audit.extend(pull_all(self.services.config, self.audit_subscription))
        return [m["attributes"] for m in self.audit
                if m.get("attributes", {}).get("eventType") == event_type
                and m["attributes"].get("objectId") == name
                and (generation is None or m["attributes"].get("objectGeneration") == str(generation))]

    def wait_events(self, event_type: str, name: str, generation: int | None, count: int,
                    timeout: float = 10.0) -> list[dict]:
        """Waits until at least ``count`` such events arrived, lets late ones arrive, returns all."""
        deadline = time.monotonic() + timeout
        while len(self.events(event_type, name, generation)) < count and time.monotonic() < deadline:
            time.sleep(0.2)
        time.sleep(1.0)
        return self.events(event_type, name, generation)


@pytest.fixture(scope="module")
def faults(tmp_path_factory, tiny_model):
    if not shutil.which("gcloud"):
        pytest.fail("gcloud (with the Pub/Sub emulator) is required for the end-to-end tests")
    from psycopg.conninfo import conninfo_to_dict, make_conninfo

    from beam_qa.storage import make_gcs_client
    run_dir = tmp_path_factory.mktemp("run-faults")
    config = StackConfig(
        project="local-project", pubsub_host=f"127.0.0.1:{free_port()}", gcs_url=f"http://127.0.0.1:{free_port()}",
        bucket="qa-faults", topic="qa-faults-uploads", subscription="qa-faults-pipeline",
        pg_dsn=fresh_database("beam_qa_faults_e2e"), model=tiny_model, run_dir=run_dir, pipeline_args=[])
    pg = conninfo_to_dict(PG_BASE_DSN)
    pg_proxy = TcpProxy((pg.get("host", "127.0.0.1"), int(pg.get("port", 5432))))
    gcs_proxy = GcsProxy(config.gcs_url)
    model = poisoned_model(tiny_model, run_dir / "poisoned-model")
    pipeline_config = dataclasses.replace(
        config, gcs_url=gcs_proxy.url, model=model,
        pg_dsn=make_conninfo(config.pg_dsn, host="127.0.0.1", port=str(pg_proxy.port)),
        pipeline_args=[f"--sweep_interval_secs={SWEEP_INTERVAL_SECS}", f"--sweep_grace_secs={SWEEP_GRACE_SECS}",
                       f"--max_batch_size={MAX_BATCH_SIZE}", f"--lease_secs={LEASE_SECS}"])
    services, pipeline = Stack(config), Stack(pipeline_config)
    with stack_environment(config):
        try:
            services.start_pubsub()
            services.start_gcs()
            services.ensure_resources()
            audit = create_subscription(config, "qa-faults-audit")
            pipeline.start_pipeline(model)
            yield Faults(services=services, pipeline=pipeline, model=model, pg_proxy=pg_proxy,
                         gcs_proxy=gcs_proxy, bucket=make_gcs_client(anonymous=True).bucket(config.bucket),
                         audit_subscription=audit)
        finally:
            pipeline.stop()
            services.stop()
            pg_proxy.close()
            gcs_proxy.close()


def _notification(faults: Faults, blob, data: bytes, **extra_attributes) -> tuple[dict, dict]:
    attributes = {"eventType": "OBJECT_FINALIZE", "bucketId": faults.bucket.name, "objectId": blob.name,
                  "objectGeneration": str(blob.generation), "payloadFormat": "JSON_API_V1", **extra_attributes}
    resource = {"bucket": faults.bucket.name, "name": blob.name, "generation": str(blob.generation),
                "size": str(len(data))}
    return attributes, resource


def _answers_name(blob) -> str:
    return answers_name(blob.name, blob.generation)


def _row_counts(faults: Faults, uri: str, generation: int | None = None) -> tuple[int, int]:
    sql = "SELECT count(*), count(DISTINCT row_index) FROM qa_answers WHERE source_uri = %s"
    params: tuple = (uri,)
    if generation is not None:
        sql += " AND source_generation = %s"
        params += (generation,)
    return query(faults.dsn, sql, params)[0]


@contextlib.contextmanager
def answers_held(dsn: str) -> Iterator[None]:
    """Holds every write of answers until the block ends: an event to wait for, not a moment to catch.

    The test's own transaction (straight to PostgreSQL, not through the proxy) locks ``qa_answers``
    against writes. A file claimed meanwhile is "received" and its first commit waits on the lock,
    with none of its rows in, for as long as the test needs, however fast the machine.
    """
    import psycopg
    with psycopg.connect(dsn) as conn:
        conn.execute("LOCK TABLE qa_answers IN SHARE MODE")
        try:
            yield
        finally:
            conn.rollback()


def _answer_writes_waiting(dsn: str) -> int:
    """Sessions waiting for the lock ``answers_held`` holds."""
    return query(dsn, "SELECT count(*) FROM pg_locks l JOIN pg_class c ON c.oid = l.relation "
                 "WHERE l.database = (SELECT oid FROM pg_database WHERE datname = current_database()) "
                 "AND c.relname = 'qa_answers' AND NOT l.granted")[0][0]


def _wait_until(check, what: str, timeout: float, faults: Faults) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            pytest.fail(f"{what} within {timeout}s; pipeline log tail:\n{faults.log()[-3000:]}")
        time.sleep(0.2)


def test_repeated_and_doubled_notifications_give_one_set_of_rows_one_csv_one_delete(faults):
    thrice_data, twice_data = squad_csv(500, 6), squad_csv(510, 5)
    thrice = upload(faults.bucket, "incoming/dup/thrice.csv", thrice_data)
    attributes, resource = _notification(faults, thrice, thrice_data)
    publish(faults.services, attributes, resource)  # with fake-gcs-server's own: delivered 3 times
    publish(faults.services, attributes, resource)
    twice = upload(faults.bucket, "incoming/dup/two-configs.csv", twice_data)
    # A second notification configuration on the bucket: a different message, same object version.
    attributes, resource = _notification(
        faults, twice, twice_data, notificationConfig="projects/_/buckets/qa-faults/notificationConfigs/2")
    publish(faults.services, attributes, {**resource, "timeCreated": "2026-01-01T00:00:00Z"})

    for blob in (thrice, twice):
        wait_for_status(faults.services, faults.uri(blob), blob.generation, "done", timeout=30)
        wait_gone(faults.bucket, blob.name, timeout=30)
    publish(faults.services, *_notification(faults, thrice, thrice_data))  # and once more, after it is done
    probe = upload(faults.bucket, "incoming/dup/probe.csv", squad_csv(520, 2))
    wait_for_status(faults.services, faults.uri(probe), probe.generation, "done", timeout=30)
    time.sleep(2)

    for blob, rows in ((thrice, 6), (twice, 5)):
        uri = faults.uri(blob)
        assert _row_counts(faults, uri) == (rows, rows)
        assert query(faults.dsn, "SELECT count(*), min(status) FROM qa_files WHERE source_uri = %s",
                     (uri,)) == [(1, "done")]
        answers = _answers_name(blob)
        assert [b.name for b in faults.bucket.list_blobs(prefix=answers)] == [answers]
        assert query(faults.dsn, "SELECT attempt FROM qa_files WHERE source_uri = %s", (uri,)) == [(1,)]
        assert len(faults.wait_events("OBJECT_FINALIZE", answers, None, 1)) == 1, "answers CSV written more than once"
        assert len(faults.wait_events("OBJECT_DELETE", blob.name, blob.generation, 1)) == 1


def test_a_reupload_is_its_own_generation_and_the_older_event_never_deletes_it(faults):
    name = "incoming/regen/same.csv"
    first_data = csv_bytes(["id", "question", "context"], [
        ["old", "Where is the tower?", "The tower is in Paris."]])
    second_data = squad_csv(610, 4)
    # Hold the first generation between its answers and its delete: its answers CSV fails until the
    # second generation exists (its rows, committed as they were answered, carry every cell, so the
    # CSV needs no source object).
    faults.gcs_proxy.fail_uploads("answers/regen/")
    try:
        first = upload(faults.bucket, name, first_data)
        _wait_until(lambda: faults.gcs_proxy.failure_count() >= 1, "the first generation's CSV was not attempted",
                    60, faults)
        second = upload(faults.bucket, name, second_data)
    finally:
        faults.gcs_proxy.heal()
    assert second.generation != first.generation

    for blob, rows in ((first, 1), (second, 4)):
        wait_for_status(faults.services, f"gs://{faults.bucket.name}/{name}", blob.generation, "done", timeout=60)
        assert _row_counts(faults, faults.uri(blob), blob.generation) == (rows, rows)
    wait_gone(faults.bucket, name, timeout=30)
    assert query(faults.dsn, "SELECT source_generation, row_count FROM qa_files WHERE source_uri = %s "
                 "ORDER BY source_generation", (faults.uri(first),)) == [(first.generation, 1), (second.generation, 4)]
    assert query(faults.dsn, "SELECT id FROM qa_answers WHERE source_uri = %s AND source_generation = %s",
                 (faults.uri(first), first.generation)) == [("old",)]
    # The older version's delete step found a newer (or no) live generation and left it alone ...
    assert f"not deleting {faults.uri(first)}#{first.generation}" in faults.log()
    # ... and the newer object was deleted exactly once, as that generation. (The upload of the
    # second generation itself notifies OBJECT_DELETE for the first, as GCS does on overwrite.)
    assert len(faults.wait_events("OBJECT_DELETE", name, second.generation, 1)) == 1
    assert len(faults.events("OBJECT_DELETE", name, first.generation)) <= 1


def test_a_failing_answers_csv_write_is_retried_and_the_source_stays_until_it_succeeds(faults):
    faults.gcs_proxy.fail_uploads("answers/gcsfail/")
    try:
        blob = upload(faults.bucket, "incoming/gcsfail/retry.csv", squad_csv(700, 5))
        uri, answers = faults.uri(blob), _answers_name(blob)
        # The sink's own retries (5 attempts with backoff) all fail ...
        _wait_until(lambda: f"could not write gs://{faults.bucket.name}/{answers}" in faults.log(),
                    "the CSV sink did not give up", 60, faults)
        assert faults.gcs_proxy.failure_count() >= 5
        # ... and the file is not done nor deleted: it waits under incoming/, its rows in PostgreSQL
        # (they are committed as they are answered), its lease given back for the sweeper.
        assert faults.bucket.get_blob(blob.name).generation == blob.generation
        assert query(faults.dsn, "SELECT status, lease_until <= now() FROM qa_files WHERE source_uri = %s",
                     (uri,)) == [("received", True)]
        assert faults.bucket.get_blob(answers) is None
        assert _row_counts(faults, uri) == (5, 5)
    finally:
        faults.gcs_proxy.heal()
    # The sweeper finds it unfinished with no live lease and starts attempt 2 (a sweep may wait
    # behind the DirectRunner's 30 s Pub/Sub pull).
    wait_for_status(faults.services, uri, blob.generation, "done", timeout=120)
    wait_gone(faults.bucket, blob.name)
    assert _row_counts(faults, uri) == (5, 5)
    assert len(read_csv_text(faults.bucket.blob(answers).download_as_text())) == 5
    assert f"retrying {uri}#{blob.generation} as attempt 2" in faults.log()
    assert len(faults.wait_events("OBJECT_DELETE", blob.name, blob.generation, 1)) == 1


def test_a_row_the_model_fails_on_becomes_a_row_error_and_the_stream_goes_on(faults):
    from devtools.squad import squad_rows
    rows = [[r["id"], r["question"], r["context"]] for r in squad_rows(812)[800:812]]
    rows[6][2] = f"{POISON} {rows[6][2]}"
    blob = upload(faults.bucket, "incoming/model/poisoned.csv", csv_bytes(["id", "question", "context"], rows))
    uri = faults.uri(blob)
    wait_for_status(faults.services, uri, blob.generation, "done", timeout=30)
    wait_gone(faults.bucket, blob.name)
    answers = query(faults.dsn, "SELECT row_index, answer, error FROM qa_answers WHERE source_uri = %s "
                    "ORDER BY row_index", (uri,))
    assert [r[0] for r in answers] == list(range(12))
    # Only the row that makes the model fail: its batch-mates are answered.
    assert [index for index, _, error in answers if error] == [6], answers
    assert answers[6][2].startswith("model failed on this row:") and "index out of range" in answers[6][2]
    assert all(answer is not None for _, answer, error in answers if not error)
    assert len(read_csv_text(faults.bucket.blob(_answers_name(blob)).download_as_text())) == 12
    after = upload(faults.bucket, "incoming/model/after.csv", squad_csv(820, 3))
    wait_for_status(faults.services, faults.uri(after), after.generation, "done", timeout=30)
    assert _row_counts(faults, faults.uri(after)) == (3, 3)


def test_postgres_unreachable_for_30s_delays_but_loses_nothing(faults):
    outage_secs = 30
    rows = 20
    # Cut PostgreSQL while the file is between its "received" record and its answers: its first
    # commit waits on the test's lock when the cut comes, and dies with its connection.
    with answers_held(faults.dsn):
        blob = upload(faults.bucket, "incoming/pgdown/during.csv", squad_csv(900, rows))
        uri = faults.uri(blob)
        _wait_until(lambda: _answer_writes_waiting(faults.dsn) > 0, "the pipeline never wrote answers", 60, faults)
        faults.pg_proxy.cut()
    try:
        started = time.monotonic()
        assert query(faults.dsn, "SELECT status FROM qa_files WHERE source_uri = %s", (uri,)) == [("received",)]
        at_cut = _row_counts(faults, uri)
        assert at_cut == (0, 0)
        while time.monotonic() - started < outage_secs:
            assert faults.bucket.get_blob(blob.name) is not None, "source deleted while PostgreSQL was unreachable"
            assert _row_counts(faults, uri) == at_cut  # nothing can be committed
            time.sleep(1)
    finally:
        faults.pg_proxy.restore()
    assert faults.pipeline.procs["pipeline"].poll() is None, "the pipeline died during the outage"
    # After recovery the rows arrive, and the source goes only after them: once it is gone,
    # the rows must already be there (they are committed before the delete).
    deadline = time.monotonic() + 120
    while faults.bucket.get_blob(blob.name) is not None:
        assert time.monotonic() < deadline, f"not answered after recovery:\n{faults.log()[-3000:]}"
        time.sleep(0.1)
    assert _row_counts(faults, uri) == (rows, rows), "the source was deleted before its rows were committed"
    wait_for_status(faults.services, uri, blob.generation, "done")
    # The pipeline met the outage (a write or a lease renewal) and retried rather than failing.
    assert re.search(r"PostgreSQL unavailable while [a-z ]+ \(\w+\); retrying in|could not renew \d+ leases",
                     faults.log())
    # The pipeline keeps serving.
    after = upload(faults.bucket, "incoming/pgdown/after.csv", squad_csv(990, 3))
    wait_for_status(faults.services, faults.uri(after), after.generation, "done", timeout=60)
    assert faults.pipeline.procs["pipeline"].poll() is None


def test_sigkill_mid_file_then_restart_completes_it_and_answers_what_arrived_while_down(faults):
    rows = 40
    # Killed mid-file: claimed and answered, its commit waiting on the test's lock.
    with answers_held(faults.dsn):
        big = upload(faults.bucket, "incoming/kill/big.csv", squad_csv(1000, rows))
        uri = faults.uri(big)
        _wait_until(lambda: _answer_writes_waiting(faults.dsn) > 0, "the pipeline never wrote answers", 60, faults)
        proc = faults.pipeline.procs.pop("pipeline")
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    assert query(faults.dsn, "SELECT status FROM qa_files WHERE source_uri = %s", (uri,)) == [("received",)]
    assert _row_counts(faults, uri) == (0, 0)

    # Uploaded while the pipeline is down, and its notification lost (the DirectRunner had already
    # acked the big file's on pull; this one is drained here): only the sweeper can find them.
    down_data = squad_csv(1400, 4)
    down = upload(faults.bucket, "incoming/kill/while-down.csv", down_data)
    # fake-gcs-server publishes asynchronously: drain until this object's notification is gone.
    deadline, drained = time.monotonic() + 30, False
    while not drained and time.monotonic() < deadline:
        lost = pull_all(faults.services.config, faults.services.config.subscription_path)
        drained = any(m.get("attributes", {}).get("objectId") == down.name for m in lost)
        time.sleep(0.2)
    assert drained, "the notification for the file uploaded while down never arrived"
    log_size = len(faults.log())

    faults.pipeline.start_pipeline(faults.model)
    for blob, count in ((big, rows), (down, 4)):
        wait_for_status(faults.services, faults.uri(blob), blob.generation, "done", timeout=120)
        wait_gone(faults.bucket, blob.name, timeout=30)
        assert _row_counts(faults, faults.uri(blob)) == (count, count)
        assert query(faults.dsn, "SELECT count(*) FROM qa_files WHERE source_uri = %s",
                     (faults.uri(blob),)) == [(1,)]
    restarted_log = faults.log()[log_size:]
    # The start-up sweep (after the DirectRunner's first 30 s Pub/Sub pull) finds both: the killed
    # attempt's lease has expired with its process, and nothing ever held the other one.
    assert re.search(r"swept gs://qa-faults/incoming/\*\*: 2 to start \(0 not CSV, to be moved under the error prefix\) "
                     r"of 2 files older than 20s",
                     restarted_log), restarted_log[-3000:]
    assert f"retrying {uri}#{big.generation} as attempt 2" in restarted_log
    assert len(read_csv_text(faults.bucket.blob(_answers_name(big)).download_as_text())) == rows


def test_a_done_file_whose_delete_failed_is_deleted_by_the_next_sweep(faults):
    faults.gcs_proxy.deny_deletes("incoming/leftover/")
    try:
        blob = upload(faults.bucket, "incoming/leftover/kept.csv", squad_csv(1500, 3))
        uri = faults.uri(blob)
        wait_for_status(faults.services, uri, blob.generation, "done", timeout=60)
        _wait_until(lambda: f"could not delete {uri}#{blob.generation}" in faults.log(),
                    "the delete did not fail", 30, faults)
        assert faults.bucket.get_blob(blob.name).generation == blob.generation  # answered, left behind
    finally:
        faults.gcs_proxy.deny_deletes(None)
    # Once it is older than the sweep's grace, the next sweep finds it done and deletes it.
    wait_gone(faults.bucket, blob.name, timeout=120)
    # The sweeper logs the delete once it has returned: wait for the line, not for the moment after.
    _wait_until(lambda: f"deleted {uri}#{blob.generation}: it is finished, and its own delete had failed"
                in faults.log(), "the sweep did not say why it deleted the file", 30, faults)
    assert query(faults.dsn, "SELECT status, attempt FROM qa_files WHERE source_uri = %s", (uri,)) == [("done", 1)]
    assert _row_counts(faults, uri) == (3, 3)


def _kill_pipeline(faults: Faults) -> None:
    proc = faults.pipeline.procs.pop("pipeline")
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def test_a_file_that_kills_its_worker_every_time_fails_after_max_attempts_and_the_stream_goes_on(faults):
    """Every attempt at the file hangs reading it and its worker is killed: attempts 1 to 3 end without a word.

    The fourth claim (a restarted pipeline's sweeper) gives up: the file is failed with the reason,
    moved under errors/ and its source deleted, without being read again.
    """
    name = "incoming/poison/kills.csv"
    data = squad_csv(1600, 2)
    faults.gcs_proxy.stall_reads(name)
    try:
        blob = upload(faults.bucket, name, data)
        uri = faults.uri(blob)
        for attempt in (1, 2, 3):
            _wait_until(lambda: query(faults.dsn, "SELECT status, attempt FROM qa_files WHERE source_uri = %s",
                                      (uri,)) == [("received", attempt)],
                        f"attempt {attempt} did not start", 180, faults)
            _kill_pipeline(faults)  # while it waits on the file: the worker dies with the attempt
            faults.pipeline.start_pipeline(faults.model)
        wait_for_status(faults.services, uri, blob.generation, "failed", timeout=180)
    finally:
        faults.gcs_proxy.unstall()
    (kind, error, output, attempt), = query(
        faults.dsn, "SELECT error_kind, error, output_uri, attempt FROM qa_files WHERE source_uri = %s", (uri,))
    assert kind == "gave_up" and attempt == 4
    assert error.startswith("gave up after 3 attempts; the last one ended with its lease expiring"), error
    assert output == f"gs://{faults.bucket.name}/errors/poison/kills.{blob.generation}.csv"
    assert faults.bucket.blob(output.split("/", 3)[3]).download_as_bytes() == data
    wait_gone(faults.bucket, name, timeout=30)
    assert f"giving up on {uri}#{blob.generation} after 3 attempts" in faults.log()
    after = upload(faults.bucket, "incoming/poison/after.csv", squad_csv(1610, 3))
    wait_for_status(faults.services, faults.uri(after), after.generation, "done", timeout=120)
    assert faults.pipeline.procs["pipeline"].poll() is None
