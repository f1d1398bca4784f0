-- The outbox mark (crash-consistent accept): set while RabbitMQ has not confirmed the current
-- attempt's message. A gateway that dies between storing and publishing leaves it set, and
-- every gateway's relay republishes records marked for longer than its grace period.
ALTER TABLE warren_jobs ADD COLUMN unconfirmed_since timestamptz;
CREATE INDEX warren_jobs_unconfirmed ON warren_jobs (unconfirmed_since)
    WHERE unconfirmed_since IS NOT NULL;

-- A key is now stored in the same transaction as its job, so it is never "in progress".
ALTER TABLE warren_idempotency DROP COLUMN accepted;
