-- API keys and tenants: every job belongs to a tenant (`default` for jobs submitted without a
-- tenant's key, including every job from before keys existed) and remembers the key that
-- submitted it, whose cap on jobs in flight counts them.
ALTER TABLE warren_jobs ADD COLUMN tenant text NOT NULL DEFAULT 'default',
    ADD COLUMN key_id uuid;
CREATE INDEX warren_jobs_tenant ON warren_jobs (tenant, id DESC);
CREATE INDEX warren_jobs_key_in_flight ON warren_jobs (key_id)
    WHERE key_id IS NOT NULL AND status IN ('scheduled', 'queued', 'running', 'retrying');
ALTER TABLE warren_schedules ADD COLUMN tenant text NOT NULL DEFAULT 'default';
-- Keys: the secret itself is never stored, only its SHA-256.
CREATE TABLE warren_api_keys (
    id            uuid PRIMARY KEY,
    tenant        text        NOT NULL,
    name          text,
    rights        text[]      NOT NULL,
    rate_per_sec  double precision,
    burst         integer,
    max_in_flight integer,
    secret_sha256 bytea       NOT NULL,
    created_at    timestamptz NOT NULL,
    revoked_at    timestamptz
);
