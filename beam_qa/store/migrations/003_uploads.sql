-- The upload service's history: one row per file it stored or refused, so that GET /uploads lists a
-- file before the pipeline recorded it and after the pipeline deleted its object. Written only by the
-- upload service; the pipeline neither reads nor writes it. (Earlier releases created it from the
-- service itself; IF NOT EXISTS keeps such databases as they are.)
CREATE TABLE IF NOT EXISTS qa_uploads (
    upload_id         TEXT        PRIMARY KEY,           -- 32 hex digits: the folder under the incoming prefix
    filename          TEXT        NOT NULL,              -- the sanitised file name
    source_uri        TEXT,                              -- gs://BUCKET/<prefix><upload_id>/<filename>; NULL if refused
    source_generation BIGINT,                            -- the object's generation; NULL if refused
    size_bytes        BIGINT,                            -- bytes received; NULL if cut off over the limit
    row_count         INTEGER,                           -- data rows the service counted; NULL if refused
    rejected          TEXT,                              -- the error kind when the service refused the file, else NULL
    error             TEXT,                              -- why it was refused
    uploaded_at       TIMESTAMPTZ NOT NULL DEFAULT now()
);
-- GET /uploads pages newest first by (uploaded_at, upload_id).
CREATE INDEX IF NOT EXISTS qa_uploads_newest_idx ON qa_uploads (uploaded_at DESC, upload_id DESC);
