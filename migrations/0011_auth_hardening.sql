-- Authentication hardening (issue 13, defects 7 and 13): clients registered to introspect tokens,
-- access tokens bound to their client and refresh family, sign-in failures that decay, and a
-- per-address limit on sign-in failures.

-- RFC 7662 introspection maps tokens to people: only administrators and the backend clients an
-- operator registered for it (`carapace-console client register ... --introspect`) may call it.
ALTER TABLE clients ADD COLUMN introspect BOOLEAN NOT NULL DEFAULT false;

-- The client an access token was issued to (a backend client, or the user app of the
-- authorization-code flow; NULL for operator tokens) and, for user apps, the refresh-token family
-- it belongs to. Token lookup refuses a token whose client is disabled or whose family was revoked,
-- so disabling an app or replaying a rotated refresh token ends the access tokens too.
ALTER TABLE access_tokens
    ADD COLUMN client_id TEXT REFERENCES clients (client_id),
    ADD COLUMN refresh_family UUID;
CREATE INDEX access_tokens_client ON access_tokens (client_id);

-- When the last counted sign-in failure happened: older failures stop counting (decay).
ALTER TABLE users ADD COLUMN last_failed_at TIMESTAMPTZ;

-- Sign-in failures per client address (an IPv4 address, or an IPv6 /64), whatever the username:
-- password spraying across accounts backs off per address. A fixed window: the count starts over
-- once `window_started` is older than the configured window. Not PHI; never logged.
CREATE TABLE sign_in_addresses (
    address        TEXT PRIMARY KEY,
    failures       INTEGER NOT NULL,
    window_started TIMESTAMPTZ NOT NULL
);
CREATE INDEX sign_in_addresses_window ON sign_in_addresses (window_started);

GRANT SELECT, INSERT, UPDATE, DELETE ON sign_in_addresses TO carapace_app;
