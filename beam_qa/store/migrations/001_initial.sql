-- beam-qa schema, version 1: the tables as first released. Applied by beam_qa.store.schema.ensure_schema
-- (migrations run in order, once, under an advisory lock); every statement is idempotent. Every side
-- effect is keyed by (source_uri, source_generation[, row_index]) so that re-processing changes nothing.

CREATE TABLE IF NOT EXISTS qa_files (
    source_uri        TEXT        NOT NULL,              -- gs://bucket/incoming/... or a local path
    source_generation BIGINT      NOT NULL,              -- GCS generation (local: mtime in ns)
    status            TEXT        NOT NULL CHECK (status IN ('received', 'done', 'failed')),
    row_count         INTEGER,                           -- data rows in the file
    error             TEXT,                              -- why the file failed (status = failed)
    output_uri        TEXT,                              -- the answers CSV (done) or the quarantined copy (failed)
    model             TEXT,
    received_at       TIMESTAMPTZ NOT NULL DEFAULT now(),
    completed_at      TIMESTAMPTZ,
    PRIMARY KEY (source_uri, source_generation)
);

CREATE TABLE IF NOT EXISTS qa_answers (
    source_uri        TEXT             NOT NULL,
    source_generation BIGINT           NOT NULL,
    row_index         INTEGER          NOT NULL,         -- 0-based data row in the file
    id                TEXT,                              -- the row's id column, if the file had one
    question          TEXT             NOT NULL,
    context           TEXT             NOT NULL,
    answer            TEXT,
    score             DOUBLE PRECISION,
    answer_start      INTEGER,                           -- character offsets into context
    answer_end        INTEGER,
    error             TEXT,                              -- row error (empty question, ...) or NULL
    model             TEXT,
    processed_at      TIMESTAMPTZ      NOT NULL DEFAULT now(),
    PRIMARY KEY (source_uri, source_generation, row_index)
);

CREATE INDEX IF NOT EXISTS qa_files_status_idx ON qa_files (status);
-- The upload service finds a file by its object-name prefix (incoming/<upload_id>/):
-- LIKE 'prefix%' uses this index whatever the database's collation.
CREATE INDEX IF NOT EXISTS qa_files_source_uri_prefix_idx ON qa_files (source_uri text_pattern_ops);

-- qa_uploads, the upload service's history, is migration 003.
