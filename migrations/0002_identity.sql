-- Identity: registered backend clients (SMART Backend Services), opaque access tokens (stored only as
-- SHA-256), client-assertion replay protection, and people (admins, practitioners, patients).

CREATE TABLE clients (
    client_id  TEXT PRIMARY KEY,
    name       TEXT NOT NULL,
    -- 'backend': SMART Backend Services (private_key_jwt); 'app': a user-facing app using the
    -- authorization-code flow with PKCE, redirected only to its registered URIs.
    kind       TEXT NOT NULL DEFAULT 'backend' CHECK (kind IN ('backend', 'app')),
    jwks       JSONB,
    redirect_uris TEXT[] NOT NULL DEFAULT '{}',
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

-- Browser sign-in sessions for the authorization-code flow: only the SHA-256 of the cookie value.
CREATE TABLE web_sessions (
    token_hash BYTEA PRIMARY KEY,
    user_id    BIGINT NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    -- false until the second factor is done (for roles that need it)
    verified   BOOLEAN NOT NULL,
    csrf       TEXT NOT NULL,
    created_at TIMESTAMPTZ NOT NULL,
    last_seen  TIMESTAMPTZ NOT NULL,
    revoked_at TIMESTAMPTZ
);
CREATE INDEX web_sessions_user ON web_sessions (user_id);

CREATE TABLE authorization_codes (
    code_hash      BYTEA PRIMARY KEY,
    client_id      TEXT NOT NULL REFERENCES clients (client_id),
    user_id        BIGINT NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    redirect_uri   TEXT NOT NULL,
    code_challenge TEXT NOT NULL,
    scopes         TEXT[] NOT NULL,
    patient        TEXT,
    expires_at     TIMESTAMPTZ NOT NULL,
    used_at        TIMESTAMPTZ
);

-- Refresh tokens rotate on use; reusing a rotated one revokes its whole family.
CREATE TABLE refresh_tokens (
    token_hash BYTEA PRIMARY KEY,
    family     UUID NOT NULL,
    -- when the sign-in that started this family happened: the family's absolute limit counts from it
    family_started TIMESTAMPTZ NOT NULL,
    client_id  TEXT NOT NULL REFERENCES clients (client_id),
    user_id    BIGINT NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    scopes     TEXT[] NOT NULL,
    patient    TEXT,
    expires_at TIMESTAMPTZ NOT NULL,
    used_at    TIMESTAMPTZ,
    revoked_at TIMESTAMPTZ
);
CREATE INDEX refresh_tokens_family ON refresh_tokens (family);
