-- Workflows: named steps that may depend on one another, each a job. A step's job carries
-- its workflow and step name; a step with dependencies is stored `waiting` and released
-- (`queued`, its dependencies' results in `parents`, an outbox mark) once they succeed.
CREATE TABLE warren_workflows (
    id               uuid PRIMARY KEY,     -- UUIDv7: ordering by id is ordering by age
    tenant           text        NOT NULL,
    key_id           uuid,
    status           text        NOT NULL,
    steps            jsonb       NOT NULL, -- [{name, depends_on, job_id}], in the client's order
    callback_url     text,
    callback         jsonb,
    callback_due     timestamptz,
    cancel_requested boolean     NOT NULL DEFAULT false,
    -- `marks` counts step jobs that finished, bumped in the same transaction; `settled` is
    -- the count the last complete settle saw. marks > settled: the workflow owes a settle
    -- (a gateway died between a step's outcome and the release of its dependents).
    marks            bigint      NOT NULL DEFAULT 0,
    settled          bigint      NOT NULL DEFAULT 0,
    marked_at        timestamptz,          -- when `marks` last moved
    version          bigint      NOT NULL,
    created_at       timestamptz NOT NULL,
    updated_at       timestamptz NOT NULL,
    finished_at      timestamptz
);
CREATE INDEX warren_workflows_status ON warren_workflows (status, id DESC);
CREATE INDEX warren_workflows_unsettled ON warren_workflows (marked_at) WHERE marks > settled;
CREATE INDEX warren_workflows_callback_due ON warren_workflows (callback_due)
    WHERE callback_due IS NOT NULL;

ALTER TABLE warren_jobs ADD COLUMN workflow_id uuid, ADD COLUMN step text,
    ADD COLUMN parents jsonb;
CREATE INDEX warren_jobs_workflow ON warren_jobs (workflow_id) WHERE workflow_id IS NOT NULL;
-- A waiting step counts against its API key's cap on jobs in flight, as any unfinished job.
DROP INDEX warren_jobs_key_in_flight;
CREATE INDEX warren_jobs_key_in_flight ON warren_jobs (key_id)
    WHERE key_id IS NOT NULL
      AND status IN ('waiting', 'scheduled', 'queued', 'running', 'retrying');
