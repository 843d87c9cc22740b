-- Attempts with leases, per-chunk progress and the input columns (README "Guarantees").
--
-- A file version has at most one attempt in flight: ClaimFiles bumps qa_files.attempt and sets
-- a lease that the claiming worker renews while it lives; the sweeper and repeated
-- notifications start a new attempt only once the lease has expired. Rows are committed to
-- qa_answers chunk by chunk as they are answered; qa_chunks records which rows of each chunk of
-- the current attempt are committed, so that exactly one commit sees the file complete.

ALTER TABLE qa_files ADD COLUMN IF NOT EXISTS attempt     INTEGER NOT NULL DEFAULT 0;  -- attempts started
ALTER TABLE qa_files ADD COLUMN IF NOT EXISTS claim_token TEXT;         -- what started the current attempt
ALTER TABLE qa_files ADD COLUMN IF NOT EXISTS lease_until TIMESTAMPTZ;  -- the current attempt's lease
ALTER TABLE qa_files ADD COLUMN IF NOT EXISTS chunk_count INTEGER;      -- chunks of the current attempt
ALTER TABLE qa_files ADD COLUMN IF NOT EXISTS chunks_done INTEGER NOT NULL DEFAULT 0;
ALTER TABLE qa_files ADD COLUMN IF NOT EXISTS header      TEXT[];       -- the input header, as written

-- The row's cells other than question and context, in column order: the answers CSV repeats
-- every input column from here, so it needs no source object (a re-upload may have replaced it).
ALTER TABLE qa_answers ADD COLUMN IF NOT EXISTS other_cells TEXT[];

CREATE TABLE IF NOT EXISTS qa_chunks (
    source_uri        TEXT    NOT NULL,
    source_generation BIGINT  NOT NULL,
    attempt           INTEGER NOT NULL,
    chunk_index       INTEGER NOT NULL,
    rows_done         BYTEA   NOT NULL,   -- bitmap of the chunk's rows committed (bit i = row first_row + i)
    PRIMARY KEY (source_uri, source_generation, attempt, chunk_index)
);

-- The sweeper looks for unfinished versions whose lease has expired.
CREATE INDEX IF NOT EXISTS qa_files_received_lease_idx ON qa_files (lease_until) WHERE status = 'received';
