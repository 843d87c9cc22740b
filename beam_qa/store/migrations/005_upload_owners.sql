-- Who made each upload, and the Idempotency-Key it came with (docs/upload-service.md). The upload
-- service shows a client only the rows it owns; a POST retried with the same key by the same client
-- finds its first row here instead of storing the file again.
ALTER TABLE qa_uploads ADD COLUMN IF NOT EXISTS owner           TEXT;  -- the client's name; NULL: made with authentication off (or before owners existed)
ALTER TABLE qa_uploads ADD COLUMN IF NOT EXISTS idempotency_key TEXT;  -- the client's Idempotency-Key header, if it sent one
ALTER TABLE qa_uploads ADD COLUMN IF NOT EXISTS request_sha256  TEXT;  -- hash of the keyed request's file name and bytes: a reused key with another file is refused

-- One upload per (client, key). NULLS NOT DISTINCT: with authentication off every caller is the one client NULL.
CREATE UNIQUE INDEX IF NOT EXISTS qa_uploads_idempotency_idx ON qa_uploads (owner, idempotency_key) NULLS NOT DISTINCT
    WHERE idempotency_key IS NOT NULL;
-- GET /uploads pages one client's uploads newest first.
CREATE INDEX IF NOT EXISTS qa_uploads_owner_newest_idx ON qa_uploads (owner, uploaded_at DESC, upload_id DESC);
