"""Least privilege, as docs/deploy.md writes it down, checked: the IAM and SQL commands it gives the
upload service, the PostgreSQL role they make (on a real server, as the service uses it), and the
requests the service really sends to the bucket (through a recording proxy to fake-gcs-server)."""

from __future__ import annotations

import http.client
import http.server
import json
import os
import re
import shlex
import subprocess
import sys
import threading
import urllib.parse
from pathlib import Path

import psycopg
import pytest

from tests.conftest import PG_BASE_DSN, csv_bytes, fresh_database
from tests.upload.conftest import REPO, PipelineRecords

pytestmark = pytest.mark.integration

DEPLOY = (Path(__file__).resolve().parents[2] / "docs" / "deploy.md").read_text(encoding="utf-8")
GOOD = csv_bytes(["question", "context"], [["Where?", "In Paris."]])


def commands(markdown: str) -> list[list[str]]:
    """Every gcloud command of the ```sh blocks, continuation lines joined, as argv lists."""
    found = []
    for block in re.findall(r"```sh\n(.*?)```", markdown, flags=re.S):
        text = re.sub(r"\\\n\s*", " ", block)
        for line in text.splitlines():
            line = line.split(" #", 1)[0].strip()
            if line.startswith("gcloud "):
                found.append(shlex.split(line))
    return found


def flags(argv: list[str]) -> dict[str, str]:
    return dict(arg[2:].split("=", 1) for arg in argv if arg.startswith("--") and "=" in arg)


def upload_bindings() -> set[tuple[str, str, str | None]]:
    """``(resource, role, condition expression)`` of every binding deploy.md gives the upload SA."""
    bindings = set()
    for argv in commands(DEPLOY):
        if "add-iam-policy-binding" in argv and flags(argv).get("member") == "serviceAccount:${UPLOAD_SA}":
            resource = argv[argv.index("add-iam-policy-binding") + 1]
            condition = flags(argv).get("condition")
            expression = condition.split("expression=", 1)[1].rsplit(",title=", 1)[0] if condition else None
            bindings.add((resource, flags(argv)["role"], expression))
    return bindings


def test_deploy_md_grants_the_upload_service_account_only_its_prefixes_and_its_own_secrets():
    assert upload_bindings() == {
        ("gs://$BUCKET", "roles/storage.objectCreator",
         'resource.name.startsWith("projects/_/buckets/${BUCKET}/objects/incoming/")'),
        ("gs://$BUCKET", "roles/storage.objectViewer",
         'resource.name.startsWith("projects/_/buckets/${BUCKET}/objects/answers/")'),
        ("beam-qa-upload-pg-password", "roles/secretmanager.secretAccessor", None),
        ("beam-qa-api-keys", "roles/secretmanager.secretAccessor", None),
    }
    (deploy,) = [argv for argv in commands(DEPLOY) if argv[:3] == ["gcloud", "run", "deploy"]]
    options = flags(deploy)
    assert options["service-account"] == "$UPLOAD_SA"
    assert set(options["set-secrets"].split(",")) == {"PGPASSWORD=beam-qa-upload-pg-password:latest",
                                                      "QA_API_KEYS=beam-qa-api-keys:latest"}
    assert "--allow-unauthenticated" in deploy  # on purpose: the service's keys guard it (and the guide says so)
    assert "Cloud Run lets every request reach it" in DEPLOY and "open to the internet" in DEPLOY
    assert 'export UPLOAD_PG_DSN="host=${PG_IP} dbname=beam_qa user=beam_qa_upload sslmode=require"' in DEPLOY
    assert 'QA_PG_DSN: "${UPLOAD_PG_DSN}"' in DEPLOY and "QA_AUTH" not in options.get("set-env-vars", "")

    (job,) = [argv for argv in commands(DEPLOY) if argv[:4] == ["gcloud", "run", "jobs", "deploy"]]
    job_options = flags(job)
    assert job_options["args"] == "-m,upload_service.db_role" and job_options["service-account"] == "$WORKER_SA"
    assert job_options["set-secrets"] == "PGPASSWORD=beam-qa-pg-password:latest"


def test_deploy_md_shows_the_grants_the_role_command_runs():
    from upload_service.db_role import script
    (shown,) = re.findall(r"```sql\n(.*?)```", DEPLOY[DEPLOY.index("### Its own PostgreSQL role"):], flags=re.S)[:1]
    assert shown == script("beam_qa", "beam_qa_upload")


@pytest.fixture
def service_role():
    """A PostgreSQL role for the service, made by ``python -m upload_service.db_role`` in a fresh database."""
    from tests.conftest import DB_PREFIX
    dsn = fresh_database("beam_qa_upload_role")
    role = f"{DB_PREFIX}svc_{os.urandom(3).hex()}".lower()
    run = subprocess.run([sys.executable, "-m", "upload_service.db_role", "--role", role, "--dsn", dsn],
                         capture_output=True, text=True, cwd=REPO, timeout=120, check=False)
    try:
        assert run.returncode == 0, run.stderr
        assert "applied the pipeline's schema migrations" in run.stdout and "no DDL" in run.stdout
        again = subprocess.run([sys.executable, "-m", "upload_service.db_role", "--role", role, "--dsn", dsn],
                               capture_output=True, text=True, cwd=REPO, timeout=120, check=False)
        assert again.returncode == 0 and "applied" not in again.stdout, again.stderr  # idempotent
        yield dsn, role, f"{dsn} user={role}"
    finally:
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(f'DROP OWNED BY "{role}"')
        with psycopg.connect(f"{PG_BASE_DSN} dbname=postgres", autocommit=True) as conn:
            conn.execute(f'DROP ROLE IF EXISTS "{role}"')


def test_the_service_works_as_its_own_role_which_cannot_change_the_schema(make_client, service_role):
    owner_dsn, role, role_dsn = service_role
    client = make_client(pg_dsn=role_dsn, apply_migrations=False)
    key = {"Idempotency-Key": "least-privilege"}
    accepted = client.post("/uploads", files={"file": ("q.csv", GOOD, "text/csv")}, headers=key)
    assert accepted.status_code == 201, accepted.text
    again = client.post("/uploads", files={"file": ("q.csv", GOOD, "text/csv")}, headers=key)
    assert again.json()["upload_id"] == accepted.json()["upload_id"]
    assert client.post("/uploads", files={"file": ("x.csv", b"question\nq\n", "text/csv")}).status_code == 422
    PipelineRecords(owner_dsn, accepted.json(), client.settings.bucket).received(1)
    assert client.get(f"/uploads/{accepted.json()['upload_id']}").json()["status"] == "received"
    assert len(client.get("/uploads").json()["uploads"]) == 2
    assert client.get("/readyz").status_code == 200

    with psycopg.connect(role_dsn, autocommit=True) as conn:
        for statement in ("CREATE TABLE intruder (x int)", "ALTER TABLE qa_uploads ADD COLUMN x int",
                          "DROP TABLE qa_answers", "CREATE INDEX ON qa_uploads (filename)",
                          "INSERT INTO qa_files (source_uri, source_generation, status) VALUES ('x', 1, 'done')",
                          "DELETE FROM qa_answers", "UPDATE qa_files SET status = 'done'", "SELECT * FROM qa_chunks",
                          "INSERT INTO beam_qa_schema_migrations (version, name) VALUES (99, 'x')"):
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                conn.execute(statement)
    # The service cannot migrate either: QA_APPLY_MIGRATIONS as this role on an old schema fails.
    from upload_service.db_role import ddl_routes
    with psycopg.connect(owner_dsn, autocommit=True) as conn:
        assert ddl_routes(conn, role) == []
        conn.execute(f'ALTER ROLE "{role}" CREATEDB')
    refused = subprocess.run([sys.executable, "-m", "upload_service.db_role", "--role", role, "--dsn", owner_dsn],
                             capture_output=True, text=True, cwd=REPO, timeout=120, check=False)
    assert refused.returncode == 1 and refused.stderr.strip().splitlines() == [
        f"error: role {role} can still change the schema: CREATEDB; revoke that (for CREATE on schema public "
        "granted to PUBLIC: REVOKE CREATE ON SCHEMA public FROM PUBLIC)"]


class RecordingProxy:
    """Forwards HTTP to fake-gcs-server and records each request as (method, path, query, body)."""

    def __init__(self, target: str):
        self.requests: list[tuple[str, str, dict, bytes]] = []
        parsed = urllib.parse.urlsplit(target)
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _forward(self):
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                split = urllib.parse.urlsplit(self.path)
                proxy.requests.append((self.command, urllib.parse.unquote(split.path),
                                       urllib.parse.parse_qs(split.query), body))
                upstream = http.client.HTTPConnection(parsed.hostname, parsed.port, timeout=30)
                headers = {k: v for k, v in self.headers.items() if k.lower() not in ("host", "connection")}
                upstream.request(self.command, self.path, body=body, headers=headers)
                response = upstream.getresponse()
                data = response.read()
                self.send_response(response.status)
                for name, value in response.getheaders():
                    if name.lower() not in ("transfer-encoding", "connection", "content-length"):
                        self.send_header(name, value)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)
                upstream.close()

            do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _forward  # noqa: N815

            def log_message(self, *args):
                pass
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()


def permission(bucket: str, method: str, path: str, query: dict, body: bytes) -> tuple[str, str]:
    """The IAM permission a GCS JSON API request needs, and the object (or bucket) it is checked on."""
    objects = f"/storage/v1/b/{bucket}/o"
    if path.startswith(f"/upload{objects}") and method in ("POST", "PUT"):
        name = query.get("name", [None])[0] or json.loads(re.search(rb"\{.*?\}", body, flags=re.S).group())["name"]
        return "storage.objects.create", name
    if method == "GET" and path.startswith(f"{objects}/"):
        return "storage.objects.get", path[len(objects) + 1:]
    if method == "GET" and path.startswith(f"/download{objects}/"):
        return "storage.objects.get", path[len(f"/download{objects}/"):]
    if method == "GET" and path == objects:
        return "storage.objects.list", f"projects/_/buckets/{bucket}"
    return f"{method} {path}", f"projects/_/buckets/{bucket}"


def test_the_service_asks_the_bucket_only_for_what_deploy_md_grants(make_client, fake_gcs_url):
    proxy = RecordingProxy(fake_gcs_url)
    try:
        client = make_client(gcs_url=proxy.url, pg_dsn=fresh_database("beam_qa_upload_audit"))
        accepted = client.post("/uploads", files={"file": ("q.csv", GOOD, "text/csv")},
                               headers={"Idempotency-Key": "audit"}).json()
        client.post("/uploads", files={"file": ("q.csv", GOOD, "text/csv")}, headers={"Idempotency-Key": "audit"})
        big = csv_bytes(["question", "context"], [[f"Q{i}?", "context " * 12] for i in range(90_000)])
        assert client.post("/uploads", files={"file": ("big.csv", big, "text/csv")}).status_code == 201  # resumable
        bucket = client.settings.bucket
        name = f"answers/{accepted['upload_id']}/q.{accepted['generation']}.answers.csv"
        from upload_service.services.gcs import make_client as gcs_client
        gcs_client(fake_gcs_url).bucket(bucket).blob(name).upload_from_string("question,context,answer\r\n")
        pipeline = PipelineRecords(client.settings.pg_dsn, accepted, bucket)
        pipeline.received(1)
        pipeline.commit([(0, "", "Where?", "In Paris.", "Paris", 0.9, 3, 8, None)], 1)
        pipeline.done(1, 0, f"gs://{bucket}/{name}")
        assert client.get(f"/uploads/{accepted['upload_id']}").json()["status"] == "done"
        assert client.get(f"/uploads/{accepted['upload_id']}/answers", params={"format": "csv"}).status_code == 200
        assert client.get("/readyz").status_code == 200
        assert client.get("/uploads").status_code == 200
    finally:
        proxy.close()
    used = {permission(bucket, *request) for request in proxy.requests}
    creates = {name for perm, name in used if perm == "storage.objects.create"}
    gets = {name for perm, name in used if perm == "storage.objects.get"}
    assert len(creates) == 2 and all(name.startswith("incoming/") for name in creates), used
    assert gets and all(name.startswith("answers/") for name in gets), used
    assert {perm for perm, _ in used} == {"storage.objects.create", "storage.objects.get"}, used


def test_deploy_md_upload_commands_are_ones_gcloud_accepts(tmp_path):
    """Each gcloud command of the upload service's steps, run offline: gcloud parses every flag and
    stops only because no account is logged in (a misspelt flag or a bad value fails earlier)."""
    from tests.gcloud_cli import run_gcloud
    values = {"PROJECT": "my-project", "REGION": "us-central1", "BUCKET": "my-project-qa-uploads",
              "UPLOAD_SA": "beam-qa-upload@my-project.iam.gserviceaccount.com",
              "WORKER_SA": "beam-qa-worker@my-project.iam.gserviceaccount.com",
              "UPLOAD_IMAGE": "us-central1-docker.pkg.dev/my-project/beam-qa/beam-qa-upload:1",
              "PG_DSN": "host=10.0.0.3 dbname=beam_qa user=beam_qa sslmode=require", "SQL_INSTANCE": "beam-qa-pg",
              "UPLOAD_PG_PASSWORD": "pw", "UPLOAD_PG_DSN": "host=10.0.0.3 dbname=beam_qa user=beam_qa_upload"}
    def expand(text: str) -> str:
        return re.sub(r"\$\{?([A-Z_]+)\}?", lambda m: values[m.group(1)], text)
    # The environment file the deploy command reads, as the guide's here-document writes it.
    (env_file,) = re.findall(r"cat > /tmp/beam-qa-upload-env.yaml <<EOF\n(.*?)\nEOF", DEPLOY, flags=re.S)
    (tmp_path / "env.yaml").write_text(expand(env_file) + "\n", encoding="utf-8")
    upload = [argv for argv in commands(DEPLOY)
              if any(part in " ".join(argv) for part in ("UPLOAD", "beam-qa-upload", "beam_qa_upload"))]
    assert len(upload) >= 8, upload
    for argv in upload:
        expanded = [expand(arg).replace("/tmp/beam-qa-upload-env.yaml", str(tmp_path / "env.yaml")) for arg in argv]
        result = run_gcloud(expanded[1:], tmp_path)
        assert result.returncode == 1 and "active account" in result.stderr, (expanded, result.stderr[-1500:])
