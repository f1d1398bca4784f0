-- Jobs submitted for later: `scheduled` until `run_at`, then released by any gateway.
ALTER TABLE warren_jobs ADD COLUMN run_at timestamptz;
CREATE INDEX warren_jobs_due ON warren_jobs (run_at) WHERE status = 'scheduled';
