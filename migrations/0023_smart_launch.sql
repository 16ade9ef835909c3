-- SMART App Launch: what an authorization code and a refresh token carry besides their scopes
-- (the OpenID Connect nonce, echoed in the id_token; the launch encounter), and EHR launch
-- contexts: a short-lived, single-use opaque `launch` id (only its SHA-256 is stored) bound to a
-- patient and, optionally, an encounter, made by an administrator or an EHR backend client.
ALTER TABLE authorization_codes ADD COLUMN nonce TEXT, ADD COLUMN encounter TEXT;
ALTER TABLE refresh_tokens ADD COLUMN encounter TEXT;

CREATE TABLE launch_contexts (
    launch_hash BYTEA PRIMARY KEY,
    patient     TEXT NOT NULL,
    encounter   TEXT,
    -- who made it (an administrator's user name or a backend client's id), for the audit trail
    created_by  TEXT NOT NULL,
    created_at  TIMESTAMPTZ NOT NULL,
    expires_at  TIMESTAMPTZ NOT NULL,
    used_at     TIMESTAMPTZ
);
CREATE INDEX launch_contexts_expires ON launch_contexts (expires_at);
GRANT SELECT, INSERT, UPDATE, DELETE ON launch_contexts TO carapace_app;
