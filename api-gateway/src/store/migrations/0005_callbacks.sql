-- Webhook deliveries: the callback a finished job owes (armed in the same write as its
-- terminal status), the due time the deliverers claim by, and every attempt.
ALTER TABLE warren_jobs ADD COLUMN callback jsonb, ADD COLUMN callback_due timestamptz;
CREATE INDEX warren_jobs_callback_due ON warren_jobs (callback_due)
    WHERE callback_due IS NOT NULL;
CREATE TABLE warren_deliveries (
    job_id          uuid        NOT NULL REFERENCES warren_jobs (id) ON DELETE CASCADE,
    webhook_id      text        NOT NULL,
    attempt         integer     NOT NULL,
    at              timestamptz NOT NULL,
    duration_ms     bigint      NOT NULL,
    status_code     integer,
    error           text,
    callback_state  text        NOT NULL,
    next_attempt_at timestamptz,
    PRIMARY KEY (job_id, webhook_id, attempt)
);
