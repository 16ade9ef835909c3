-- Bulk Data export jobs (Bulk Data Access IG 2.0.0). A job runs under the authority of the token
-- that started it (its principal, role, scopes and launch patient, kept here), in the background,
-- and writes NDJSON files sealed under the job's own data key (scope `export/<id>`, in
-- data_keys). Nothing here is PHI: the kick-off request (which may hold a `_typeFilter` naming a
-- patient) is kept sealed, errors are fixed words, counts are counts.
CREATE TABLE export_jobs (
    id               text PRIMARY KEY,
    -- Who may see the job: the token's subject and the client it was issued to.
    principal        text NOT NULL,
    client_id        text,
    role             text NOT NULL,
    scopes           text[] NOT NULL,
    patient          text,
    -- system | patient | group, and the Group of a group export.
    level            text NOT NULL,
    group_id         text,
    -- The kick-off URL and parameters as the server understood them, sealed under the job's key.
    request          bytea NOT NULL,
    -- queued | running | complete | failed | cancelled
    state            text NOT NULL,
    progress         text NOT NULL DEFAULT '',
    resources        bigint NOT NULL DEFAULT 0,
    bytes            bigint NOT NULL DEFAULT 0,
    members_left_out integer,
    error            text,
    attempts         integer NOT NULL DEFAULT 0,
    created_at       timestamptz NOT NULL,
    started_at       timestamptz,
    -- The snapshot the files reflect (Bulk Data `transactionTime`).
    transaction_time timestamptz,
    finished_at      timestamptz,
    -- A running job's worker says it is alive; a job whose heartbeat stopped is run again.
    heartbeat        timestamptz,
    -- Files (and the job) are removed at this time; set when the job ends.
    expires_at       timestamptz
);
CREATE INDEX export_jobs_waiting ON export_jobs (created_at) WHERE state IN ('queued', 'running');
CREATE INDEX export_jobs_owner ON export_jobs (principal, client_id) WHERE state IN ('queued', 'running');

-- The finished files of a job: registered only once written whole, so a file the manifest lists
-- is always complete.
CREATE TABLE export_files (
    job_id        text NOT NULL REFERENCES export_jobs (id) ON DELETE CASCADE,
    name          text NOT NULL,
    -- The order the job wrote it in (the manifest's order).
    position      integer NOT NULL,
    -- output | error | deleted
    kind          text NOT NULL,
    resource_type text NOT NULL,
    count         bigint NOT NULL,
    bytes         bigint NOT NULL,
    PRIMARY KEY (job_id, name)
);

GRANT SELECT, INSERT, UPDATE, DELETE ON export_jobs, export_files TO carapace_app;
