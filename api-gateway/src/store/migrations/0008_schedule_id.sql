-- The schedule that made a job, for jobs fired by a recurring schedule; NULL otherwise.
ALTER TABLE warren_jobs ADD COLUMN schedule_id uuid;
