"""The sweeper's queries: which incoming versions are finished or held, and which are abandoned."""

from __future__ import annotations

from beam_qa.store.attempts import DROP_CHUNKS

# Versions the sweeper must not start: finished, or held by a live attempt. ``leftover``: the
# version is finished and its outcome is kept elsewhere (the answers, or the copy under the error
# prefix), so a source still listed is one whose delete failed.
NOT_CLAIMABLE = """
SELECT source_uri, source_generation,
       status = 'done' OR (status = 'failed' AND output_uri IS NOT NULL) AS leftover
FROM qa_files
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

    def not_claimable(self, uris: list[str], retry_secs: float) -> dict[tuple[str, int], bool]:
        """The ``(uri, generation)`` pairs among ``uris`` that are finished or held by a live lease.

        Returns:
            Each pair, with True when it is finished and its source may be deleted (its answers, or
            its copy under the error prefix, are kept).
        """
        return self._run("listing finished files", lambda conn: {
            (uri, int(generation)): bool(leftover)
            for uri, generation, leftover in conn.execute(NOT_CLAIMABLE, (uris,)).fetchall()},
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


