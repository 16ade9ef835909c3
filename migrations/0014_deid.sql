-- The de-identification rule sets a server has run with (by the SHA-256 of their text), each
-- with when it last took effect: a set other than the latest is recorded again, and is also an
-- administrative AuditEvent, so every change of what analytics callers receive is on record.
-- Names and digests only; no PHI.
CREATE TABLE deid_rules_seen (
    digest     text PRIMARY KEY,
    name       text NOT NULL,
    first_seen timestamptz NOT NULL
);
GRANT SELECT, INSERT, UPDATE ON deid_rules_seen TO carapace_app;
