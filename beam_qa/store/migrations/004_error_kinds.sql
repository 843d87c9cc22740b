-- The kind of each error beside its message (beam_qa/errors.py: FileErrorKind, RowErrorKind), so that
-- what a failure is never depends on how its message is worded.
ALTER TABLE qa_files   ADD COLUMN IF NOT EXISTS error_kind TEXT;  -- FileErrorKind value when status = failed
ALTER TABLE qa_answers ADD COLUMN IF NOT EXISTS error_kind TEXT;  -- RowErrorKind value when error is set
