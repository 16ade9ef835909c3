-- Identity: registered backend clients (SMART Backend Services), opaque access tokens (stored only as
-- SHA-256), client-assertion replay protection, and people (admins, practitioners, patients).

CREATE TABLE clients (
    client_id  TEXT PRIMARY KEY,
    name       TEXT NOT NULL,
    jwks       JSONB NOT NULL,
    scopes     TEXT[] NOT NULL,
    disabled   BOOLEAN NOT NULL DEFAULT false,
    created_at TIMESTAMPTZ NOT NULL
);

-- `jti` of every accepted client assertion until it expires: a replay is refused.
CREATE TABLE client_assertions_seen (
    client_id  TEXT NOT NULL REFERENCES clients (client_id),
    jti        TEXT NOT NULL,
    expires_at TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (client_id, jti)
);
CREATE INDEX client_assertions_seen_expiry ON client_assertions_seen (expires_at);

CREATE TABLE access_tokens (
    token_hash BYTEA PRIMARY KEY,
    subject    TEXT NOT NULL,
    role       TEXT NOT NULL,
    scopes     TEXT[] NOT NULL,
    patient    TEXT,
    issued_at  TIMESTAMPTZ NOT NULL,
    expires_at TIMESTAMPTZ NOT NULL,
    revoked_at TIMESTAMPTZ
);
CREATE INDEX access_tokens_subject ON access_tokens (subject);
CREATE INDEX access_tokens_expiry ON access_tokens (expires_at);

CREATE TABLE users (
    id              BIGSERIAL PRIMARY KEY,
    username        TEXT NOT NULL UNIQUE,
    role            TEXT NOT NULL CHECK (role IN ('admin', 'practitioner', 'patient', 'analytics')),
    patient_id      TEXT,
    practitioner_id TEXT,
    password_hash   TEXT NOT NULL,
    -- TOTP seed, sealed under the identity data key; NULL until enrolled.
    totp_sealed     BYTEA,
    totp_last_step  BIGINT NOT NULL DEFAULT 0,
    failed_logins   INTEGER NOT NULL DEFAULT 0,
    locked_until    TIMESTAMPTZ,
    admin_locked    BOOLEAN NOT NULL DEFAULT false,
    created_at      TIMESTAMPTZ NOT NULL
);

CREATE TABLE recovery_codes (
    user_id   BIGINT NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    code_hash TEXT NOT NULL,
    used_at   TIMESTAMPTZ
);
