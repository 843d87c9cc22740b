"""The sweeper's queries: which incoming versions are finished or held, and which are abandoned."""

from __future__ import annotations

from beam_qa.store.attempts import DROP_CHUNKS

# Versions the sweeper must leave alone: finished, or held by a live attempt.
NOT_CLAIMABLE = """
SELECT source_uri, source_generation FROM qa_files
WHERE source_uri = ANY(%s) AND (status IN ('done', 'failed') OR lease_until > now())
"""

# Unfinished versions under a prefix whose lease expired and whose source object is gone
# (not among the live objects listed): nothing can finish them any more.
ABANDON = """
UPDATE qa_files f SET status = 'failed', error = %s, error_kind = 'source_gone', completed_at = now(),
                      lease_until = NULL,
                      claim_token = NULL
WHERE f.status = 'received' AND f.source_uri LIKE %s
  AND (f.lease_until IS NULL OR f.lease_until < now() - make_interval(secs => %s))
  AND NOT EXISTS (SELECT 1 FROM unnest(%s::text[], %s::bigint[]) AS live(uri, generation)
                  WHERE live.uri = f.source_uri AND live.generation = f.source_generation)
RETURNING f.source_uri, f.source_generation
"""

ABANDONED_REASON = ("the source object was deleted (or replaced by a newer upload) before it was "
                    "answered; upload it again")


def _like_prefix(prefix: str) -> str:
    return prefix.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"



class SweepQueries:
    """The sweeper's statements of ``PostgresStore`` (needs its ``_run``)."""

    def not_claimable(self, uris: list[str], retry_secs: float) -> set[tuple[str, int]]:
        """The ``(uri, generation)`` pairs among ``uris`` that are finished or held by a live lease."""
        return self._run("listing finished files", lambda conn: {
            (uri, int(generation)) for uri, generation in conn.execute(NOT_CLAIMABLE, (uris,)).fetchall()},
            retry_secs=retry_secs)

    def abandon_missing(self, uri_prefix: str, live: list[tuple[str, int]], grace_secs: float,
                        retry_secs: float) -> list[tuple[str, int]]:
        """Fails unfinished versions under ``uri_prefix`` whose lease expired and whose source is gone."""
        uris = [uri for uri, _ in live]
        generations = [generation for _, generation in live]

        def work(conn):
            gone = [(uri, int(generation)) for uri, generation in conn.execute(
                ABANDON, (ABANDONED_REASON, _like_prefix(uri_prefix), grace_secs, uris, generations)).fetchall()]
            for uri, generation in gone:
                conn.execute(DROP_CHUNKS, (uri, generation))
            return gone
        return self._run("abandoning vanished files", work, retry_secs=retry_secs)


