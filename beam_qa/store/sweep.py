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

# Unfinished versions under a prefix whose lease expired more than the grace ago: those whose
# source object is no longer listed are abandoned. Oldest lease first and bounded, so that one
# statement never carries more than a page; the next sweep takes the rest.
STALE = """
SELECT source_uri, source_generation FROM qa_files
WHERE status = 'received' AND source_uri LIKE %s
  AND (lease_until IS NULL OR lease_until < now() - make_interval(secs => %s))
ORDER BY lease_until NULLS FIRST, source_uri, source_generation
LIMIT %s
"""

# Fails those of them that the listing did not find, if they are still unfinished and stale.
ABANDON = """
UPDATE qa_files f SET status = 'failed', error = %s, error_kind = 'source_gone', completed_at = now(),
                      lease_until = NULL, claim_token = NULL
FROM unnest(%s::text[], %s::bigint[]) AS gone(uri, generation)
WHERE f.source_uri = gone.uri AND f.source_generation = gone.generation AND f.status = 'received'
  AND (f.lease_until IS NULL OR f.lease_until < now() - make_interval(secs => %s))
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

    def stale_versions(self, uri_prefix: str, grace_secs: float, limit: int,
                       retry_secs: float) -> list[tuple[str, int]]:
        """At most ``limit`` unfinished versions under ``uri_prefix`` whose lease expired over ``grace_secs`` ago."""
        return self._run("listing stale files", lambda conn: [
            (uri, int(generation)) for uri, generation in conn.execute(
                STALE, (_like_prefix(uri_prefix), grace_secs, limit)).fetchall()], retry_secs=retry_secs)

    def abandon(self, gone: list[tuple[str, int]], grace_secs: float, retry_secs: float) -> list[tuple[str, int]]:
        """Fails the versions in ``gone`` (their source is not listed) that are still unfinished and stale."""
        uris = [uri for uri, _ in gone]
        generations = [generation for _, generation in gone]

        def work(conn):
            abandoned = [(uri, int(generation)) for uri, generation in conn.execute(
                ABANDON, (ABANDONED_REASON, uris, generations, grace_secs)).fetchall()]
            for uri, generation in abandoned:
                conn.execute(DROP_CHUNKS, (uri, generation))
            return abandoned
        return self._run("abandoning vanished files", work, retry_secs=retry_secs)
