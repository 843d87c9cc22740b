-- How an attempt that recorded no outcome ended, so that a file version that fails the same way
-- every time gives up after --max_attempts with that reason ("gave up after 3 attempts; the last
-- one ended with …", beam_qa/store/attempts.py). Set when a worker gives the attempt back (a read
-- or copy that failed); NULL while an attempt runs, and when its worker died (its lease expired).
ALTER TABLE qa_files ADD COLUMN IF NOT EXISTS attempt_error TEXT;
