"""The SQL of the upload service: its own ``qa_uploads`` rows, and the pipeline's tables read.

Every statement here is DML or a read; the schema is the pipeline's (``beam_qa/store/migrations``),
and ``python -m upload_service.db_role`` grants exactly the rights these statements use.
"""

from __future__ import annotations

RECORD_UPLOAD = """
INSERT INTO qa_uploads (upload_id, owner, filename, source_uri, source_generation, size_bytes, row_count, uploaded_at)
VALUES (%s, %s, %s, %s, %s, %s, %s, %s) ON CONFLICT (upload_id) DO NOTHING
"""

RECORD_REJECTION = """
INSERT INTO qa_uploads (upload_id, owner, filename, size_bytes, rejected, error)
VALUES (%s, %s, %s, %s, %s, %s) ON CONFLICT (upload_id) DO NOTHING
"""

# A keyed POST first claims (client, key) with a row whose object is not stored yet
# (source_generation NULL); the one request whose claim lands stores the object, retries find it.
RESERVE = """
INSERT INTO qa_uploads (upload_id, owner, idempotency_key, request_sha256, filename, source_uri, size_bytes,
                        row_count, uploaded_at)
VALUES (%(upload_id)s, %(owner)s, %(key)s, %(sha256)s, %(filename)s, %(uri)s, %(size)s, %(rows)s, %(uploaded_at)s)
ON CONFLICT (owner, idempotency_key) WHERE idempotency_key IS NOT NULL DO NOTHING
"""

_KEYED = """
SELECT upload_id, request_sha256, filename, source_uri, source_generation, size_bytes, row_count
FROM qa_uploads WHERE idempotency_key = %(key)s AND {owner}
"""
# `owner = NULL` matches nothing, and IS NOT DISTINCT FROM cannot use the index.
FIND_KEYED = _KEYED.format(owner="owner = %(owner)s")
FIND_KEYED_ANONYMOUS = _KEYED.format(owner="owner IS NULL")

COMPLETE = "UPDATE qa_uploads SET source_generation = %s WHERE upload_id = %s AND source_generation IS NULL"

RELEASE = "DELETE FROM qa_uploads WHERE upload_id = %s AND source_generation IS NULL"

# One upload with the pipeline's view of it: its qa_files row (the exact object version) and
# how many of its rows qa_answers holds, which grows while the file is `received` (the
# pipeline commits answers chunk by chunk). `stalled`: not recorded by the pipeline in time.
UPLOAD_VIEW = """
SELECT u.upload_id, u.filename, u.source_uri, u.source_generation, u.size_bytes, u.row_count, u.rejected,
       u.error, u.uploaded_at, f.status, f.row_count, f.error, f.output_uri, f.received_at, f.completed_at,
       a.processed, a.answered, a.errored,
       (u.rejected IS NULL AND f.status IS NULL
        AND u.uploaded_at < now() - make_interval(secs => %(stall_secs)s)) AS stalled
FROM qa_uploads u
LEFT JOIN qa_files f ON f.source_uri = u.source_uri AND f.source_generation = u.source_generation
LEFT JOIN LATERAL (
    SELECT count(*) AS processed, count(q.answer) AS answered, count(q.error) AS errored
    FROM qa_answers q WHERE q.source_uri = u.source_uri AND q.source_generation = u.source_generation
) a ON u.source_uri IS NOT NULL
"""

OWNED = "u.owner = %(owner)s"

ONE_UPLOAD = "u.upload_id = %(upload_id)s"

# Keyset paging: the page after the (uploaded_at, upload_id) of the previous page's last item,
# which the indexes on (owner, uploaded_at, upload_id) serve without sorting the whole table.
AFTER = "(u.uploaded_at, u.upload_id) < (%(after_at)s, %(after_id)s)"

NEWEST_FIRST = """
ORDER BY u.uploaded_at DESC, u.upload_id DESC
LIMIT %(limit)s
"""


def upload_query(*conditions: str, paged: bool = False) -> str:
    """``UPLOAD_VIEW`` restricted by ``conditions`` (joined with AND), newest first when ``paged``."""
    where = f"WHERE {' AND '.join(conditions)}\n" if conditions else ""
    return UPLOAD_VIEW + where + (NEWEST_FIRST if paged else "")


FIND_FILE = """
SELECT source_uri, source_generation, status, row_count, error, output_uri, received_at, completed_at
FROM qa_files WHERE source_uri LIKE %s ESCAPE '\\'
ORDER BY received_at DESC LIMIT 1
"""

COUNT_ANSWERS = """
SELECT count(*), count(answer), count(error) FROM qa_answers
WHERE source_uri = %s AND source_generation = %s
"""

# Up to `limit` rows from `offset`, cut after the row that brings the page's text past
# `max_bytes` (the first row always comes, so paging never stalls).
ANSWERS_PAGE = """
WITH page AS (
    SELECT row_index, id, question, context, answer, score, answer_start, answer_end, error,
           octet_length(question) + octet_length(context) + coalesce(octet_length(answer), 0)
           + coalesce(octet_length(error), 0) + coalesce(octet_length(id), 0) AS bytes
    FROM qa_answers WHERE source_uri = %(uri)s AND source_generation = %(generation)s
    ORDER BY row_index OFFSET %(offset)s LIMIT %(limit)s
)
SELECT row_index,
       CASE WHEN bytes > %(max_bytes)s THEN left(id, %(cut)s) ELSE id END AS id,
       CASE WHEN bytes > %(max_bytes)s THEN left(question, %(cut)s) ELSE question END AS question,
       CASE WHEN bytes > %(max_bytes)s THEN left(context, %(cut)s) ELSE context END AS context,
       CASE WHEN bytes > %(max_bytes)s THEN left(answer, %(cut)s) ELSE answer END AS answer,
       score, answer_start, answer_end,
       CASE WHEN bytes > %(max_bytes)s THEN left(error, %(cut)s) ELSE error END AS error,
       bytes > %(max_bytes)s AS truncated
FROM (SELECT *, sum(bytes) OVER (ORDER BY row_index) - bytes AS before FROM page) sized
WHERE before < %(max_bytes)s
ORDER BY row_index
"""
