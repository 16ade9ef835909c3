-- Encrypted, versioned resource store. No column holds PHI in the clear: resource bodies are sealed
-- (AES-256-GCM) under per-compartment data keys, which are stored only wrapped by the key provider.

-- Data keys, one per key scope: a patient compartment (`Patient/<id>`) or, for resources outside any
-- patient compartment, the resource type (`type/<ResourceType>`).
CREATE TABLE data_keys (
    id           BIGSERIAL PRIMARY KEY,
    scope        TEXT NOT NULL UNIQUE,
    wrapped      TEXT NOT NULL,
    key_version  INTEGER NOT NULL,
    created_at   TIMESTAMPTZ NOT NULL,
    rewrapped_at TIMESTAMPTZ
);
CREATE INDEX data_keys_key_version ON data_keys (key_version);

-- Every version of every resource. A deletion is a version with no body.
CREATE TABLE resource_versions (
    resource_type TEXT NOT NULL,
    id            TEXT NOT NULL,
    version_id    BIGINT NOT NULL CHECK (version_id > 0),
    last_updated  TIMESTAMPTZ NOT NULL,
    -- 'POST', 'PUT' or 'DELETE': the interaction that made this version (history's request.method).
    method        TEXT NOT NULL CHECK (method IN ('POST', 'PUT', 'DELETE')),
    dek_id        BIGINT REFERENCES data_keys (id),
    sealed        BYTEA,
    PRIMARY KEY (resource_type, id, version_id),
    CHECK ((method = 'DELETE') = (sealed IS NULL)),
    -- Deletions keep the key reference of the version they end: it places them in a compartment.
    CHECK (sealed IS NULL OR dek_id IS NOT NULL)
);
CREATE INDEX resource_versions_type_time ON resource_versions (resource_type, last_updated, id, version_id);
CREATE INDEX resource_versions_time ON resource_versions (last_updated, resource_type, id, version_id);

-- The current version of each resource (the head of its history).
CREATE TABLE resources (
    resource_type TEXT NOT NULL,
    id            TEXT NOT NULL,
    version_id    BIGINT NOT NULL,
    deleted       BOOLEAN NOT NULL,
    PRIMARY KEY (resource_type, id),
    FOREIGN KEY (resource_type, id, version_id) REFERENCES resource_versions (resource_type, id, version_id)
        DEFERRABLE INITIALLY DEFERRED
);

-- AuditEvent (R4, IHE BALP shapes) for every interaction. Events carry references and codes, never
-- resource content.
CREATE TABLE audit_events (
    id        BIGSERIAL PRIMARY KEY,
    recorded  TIMESTAMPTZ NOT NULL,
    action    CHAR(1) NOT NULL,
    outcome   TEXT NOT NULL,
    principal TEXT NOT NULL,
    event     JSONB NOT NULL
);
CREATE INDEX audit_events_recorded ON audit_events (recorded);
