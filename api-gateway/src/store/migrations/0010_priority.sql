-- Priorities: each job keeps the level it was submitted with (`high`, `normal`, `low`), so
-- the relay, a redrive and a release publish it to the same level's queue. Existing jobs are
-- `normal`, as they were published.
ALTER TABLE warren_jobs ADD COLUMN priority text NOT NULL DEFAULT 'normal';
ALTER TABLE warren_schedules ADD COLUMN priority text NOT NULL DEFAULT 'normal';
