-- Every attempt's error, oldest first (the newest 25), for a job's error history; NULL when
-- no attempt failed.
ALTER TABLE warren_jobs ADD COLUMN errors jsonb;
