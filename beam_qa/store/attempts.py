"""Attempts at a file version: claims, leases, the manifest and the final record.

A file version has at most one attempt in flight. Every statement is keyed by
``(source_uri, source_generation)`` and the attempt number, so doing it twice changes nothing;
the decisions that must be taken exactly once (start an attempt, record the final status) are
single conditional statements on the file's ``qa_files`` row.
"""

from __future__ import annotations

from collections.abc import Iterable

from beam_qa.records import AnsweredFile, FileEvent, FileFailure

# A new attempt starts when there is no record, or the record is unfinished and its lease
# has expired (the attempt ended without a final record, or its worker died). Every attempt
# counts, a silent one too: after max_attempts the next claim is number max_attempts + 1 and
# stays so, and it only records the failure (``gave_up``); it keeps attempt_error, how the last
# real attempt ended.
CLAIM = """
INSERT INTO qa_files (source_uri, source_generation, status, attempt, claim_token, lease_until,
                      chunks_done, received_at)
VALUES (%(uri)s, %(generation)s, 'received', 1, %(token)s, now() + make_interval(secs => %(lease)s), 0, now())
ON CONFLICT (source_uri, source_generation) DO UPDATE SET
    attempt = LEAST(qa_files.attempt + 1, %(give_up_at)s), claim_token = EXCLUDED.claim_token,
    lease_until = EXCLUDED.lease_until, chunk_count = NULL, chunks_done = 0, row_count = NULL,
    attempt_error = CASE WHEN qa_files.attempt + 1 >= %(give_up_at)s THEN qa_files.attempt_error END
WHERE qa_files.status = 'received' AND (qa_files.lease_until IS NULL OR qa_files.lease_until < now())
RETURNING attempt
"""

# A retried bundle finds its own claim (same token) still current and carries on with it.
OWN_CLAIM = """
SELECT attempt FROM qa_files
WHERE source_uri = %(uri)s AND source_generation = %(generation)s AND status = 'received'
  AND claim_token = %(token)s
"""

# An attempt that was given back (``RELEASE``) is over: its lease is set to the epoch, a mark no
# lease of now() + lease_secs ever holds, so the statements that extend a lease (below, and the
# commit of a chunk in answers.py) tell it from a live one whatever their transactions' start
# times, and a late chunk, a retried bundle or the lease keeper never revives it. (Not
# '-infinity': psycopg cannot read it back into a datetime.) It stays claimable: the sweeper or
# the next claim starts the next attempt (or gives up after max_attempts).
ENDED = "'epoch'::timestamptz"

RECORD_MANIFEST = f"""
UPDATE qa_files SET header = %s, row_count = %s, chunk_count = %s, chunks_done = 0,
                    lease_until = now() + make_interval(secs => %s)
WHERE source_uri = %s AND source_generation = %s AND attempt = %s AND status = 'received'
  AND lease_until IS DISTINCT FROM {ENDED}
"""

# An expired lease that nobody has claimed again is still renewed (the worker was slow, or
# PostgreSQL was away): only an ended attempt is refused.
HEARTBEAT = f"""
UPDATE qa_files SET lease_until = now() + make_interval(secs => %s)
WHERE source_uri = %s AND source_generation = %s AND attempt = %s AND status = 'received'
  AND lease_until IS DISTINCT FROM {ENDED}
"""

# Renew only leases that are still live: a released (or expired) attempt stays claimable.
RENEW_LEASES = """
UPDATE qa_files f SET lease_until = now() + make_interval(secs => %s)
FROM unnest(%s::text[], %s::bigint[], %s::int[]) AS held(uri, generation, attempt)
WHERE f.source_uri = held.uri AND f.source_generation = held.generation AND f.attempt = held.attempt
  AND f.status = 'received' AND f.lease_until > now()
RETURNING f.source_uri, f.source_generation, f.attempt
"""

RELEASE = f"""
UPDATE qa_files SET lease_until = {ENDED}, attempt_error = coalesce(%s, attempt_error)
WHERE source_uri = %s AND source_generation = %s AND attempt = %s AND status = 'received'
  AND lease_until IS DISTINCT FROM {ENDED}
"""

FILE_STATE = """
SELECT status, attempt FROM qa_files WHERE source_uri = %s AND source_generation = %s
"""

ATTEMPT_ERROR = """
SELECT attempt_error FROM qa_files WHERE source_uri = %s AND source_generation = %s
"""

# How an attempt that recorded no outcome ended, for the give-up reason ("the last one ended with …").
LEASE_EXPIRED = ("its lease expiring: its worker stopped renewing it (killed, out of memory or stalled) "
                 "before it recorded an outcome")
GIVEN_BACK = "its worker giving the file back after a failure (see the worker log)"


def gave_up_reason(attempts: int, ending: str | None) -> str:
    """The ``gave_up`` failure's message: how many attempts, and how the last one ended."""
    return (f"gave up after {attempts} attempts; the last one ended with {ending or LEASE_EXPIRED}; "
            "the file is kept under the error prefix: check it, then upload a fixed copy")

MARK_DONE = """
UPDATE qa_files SET status = 'done', row_count = %s, error = NULL, output_uri = %s, model = %s,
                    completed_at = now(), lease_until = NULL, claim_token = NULL
WHERE source_uri = %s AND source_generation = %s AND attempt = %s AND status = 'received'
RETURNING completed_at
"""

MARK_FAILED = """
UPDATE qa_files SET status = 'failed', error = %s, error_kind = %s, output_uri = %s, model = %s,
                    completed_at = now(), lease_until = NULL, claim_token = NULL
WHERE source_uri = %s AND source_generation = %s AND attempt = %s AND status = 'received'
RETURNING completed_at
"""

DROP_CHUNKS = "DELETE FROM qa_chunks WHERE source_uri = %s AND source_generation = %s"



class AttemptQueries:
    """The attempt statements of ``PostgresStore`` (needs its ``settings`` and ``_run``)."""

    def claim(self, event: FileEvent) -> int | None:
        """Starts an attempt at ``event``'s version, or finds this trigger's own (a retried bundle).

        Returns:
            The attempt number, or None when the version is finished or held by a live attempt.
            A number over ``settings.max_attempts`` means: give up (``gave_up_reason``).
        """
        params = {"uri": event.uri, "generation": event.generation, "token": event.trigger or None,
                  "lease": self.settings.lease_secs, "give_up_at": self.settings.max_attempts + 1}

        def work(conn) -> int | None:
            row = conn.execute(CLAIM, params).fetchone()
            if row is None and event.trigger:
                row = conn.execute(OWN_CLAIM, params).fetchone()
            return row[0] if row else None
        return self._run("claiming a file", work)

    def record_manifest(self, event: FileEvent, attempt: int, header: Iterable[str], row_count: int,
                        chunk_count: int) -> bool:
        """Records the header and how many rows and chunks the attempt has; False if it is no longer current."""
        return self._run("recording a received file", lambda conn: conn.execute(
            RECORD_MANIFEST, (list(header), row_count, chunk_count, self.settings.lease_secs, event.uri,
                              event.generation, attempt)).rowcount == 1)

    def heartbeat(self, event: FileEvent, attempt: int) -> bool:
        """Extends the attempt's lease; False when it is no longer the current unfinished attempt."""
        return self._run("renewing a lease", lambda conn: conn.execute(
            HEARTBEAT, (self.settings.lease_secs, event.uri, event.generation, attempt)).rowcount == 1)

    def renew(self, held: Iterable[tuple[str, int, int]]) -> set[tuple[str, int, int]]:
        """Renews the live leases among ``held`` ``(uri, generation, attempt)``; returns those renewed."""
        held = list(held)
        if not held:
            return set()
        uris, generations, attempts = (list(column) for column in zip(*held))
        return self._run("renewing leases", lambda conn: {
            (uri, int(generation), int(attempt)) for uri, generation, attempt in conn.execute(
                RENEW_LEASES, (self.settings.lease_secs, uris, generations, attempts)).fetchall()},
            retry_secs=min(self.settings.retry_secs, self.settings.lease_secs / 3))

    def release(self, event: FileEvent, attempt: int, ending: str | None = GIVEN_BACK) -> bool:
        """Ends the attempt now, for good, so that the sweeper may start another one.

        Nothing renews an ended attempt's lease again (``ENDED``): its remaining chunks are
        dropped as superseded and its rows as stale.

        Args:
            ending: how the attempt ended, a phrase that completes "the last one ended with …";
                None keeps what is recorded (a give-up attempt keeps the last real attempt's).

        Returns:
            True when this call ended it; False when it had ended already, or was no longer
            the current unfinished attempt (then nothing changed: the first ending is kept).
        """
        return self._run("releasing a lease", lambda conn: conn.execute(
            RELEASE, (ending, event.uri, event.generation, attempt)).rowcount == 1)

    def attempt_ending(self, event: FileEvent) -> str | None:
        """How the version's last attempt ended when its worker gave it back; None when its lease expired."""
        row = self._run("reading how an attempt ended", lambda conn: conn.execute(
            ATTEMPT_ERROR, (event.uri, event.generation)).fetchone())
        return row[0] if row else None

    # -- answers ----------------------------------------------------------------------------
    def file_state(self, event: FileEvent) -> tuple[str, int] | None:
        """``(status, attempt)`` of the version, or None when it has no record."""
        return self._run("reading a file's status", lambda conn: conn.execute(
            FILE_STATE, (event.uri, event.generation)).fetchone())

    # -- final records ------------------------------------------------------------------------
    def mark_done(self, answered: AnsweredFile) -> float | None:
        """Marks the attempt done; returns its completion time, or None if it was not current."""
        event = answered.event

        def work(conn):
            row = conn.execute(MARK_DONE, (answered.row_count, answered.output_uri, answered.models or None,
                                           event.uri, event.generation, answered.attempt)).fetchone()
            if row is not None:
                conn.execute(DROP_CHUNKS, (event.uri, event.generation))
            return row[0].timestamp() if row else None
        return self._run("marking a file done", work)

    def mark_failed(self, failure: FileFailure, model: str | None = None) -> bool:
        """Marks the attempt failed with its reason; False if it was not the current one."""
        event = failure.event

        def work(conn) -> bool:
            row = conn.execute(MARK_FAILED, (failure.reason, failure.kind, failure.error_uri or None, model, event.uri,
                                             event.generation, failure.attempt)).fetchone()
            if row is not None:
                conn.execute(DROP_CHUNKS, (event.uri, event.generation))
            return row is not None
        return self._run("recording a failed file", work)

    # -- the sweeper --------------------------------------------------------------------------
