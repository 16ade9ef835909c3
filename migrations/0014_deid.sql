-- The de-identification rule sets a server has run with (by the SHA-256 of their text): a set
-- seen for the first time is also an administrative AuditEvent, so a change of what analytics
-- callers receive is on record. Names and digests only; no PHI.
CREATE TABLE deid_rules_seen (
    digest     text PRIMARY KEY,
    name       text NOT NULL,
    first_seen timestamptz NOT NULL
);
GRANT SELECT, INSERT ON deid_rules_seen TO carapace_app;
