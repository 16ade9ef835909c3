-- The search index: what each current resource version contributes to its search parameters,
-- written in the same transaction as the version. No column holds PHI in the clear (see
-- ARCHITECTURE.md, "Search over encrypted data"): strings, tokens, uris and units are keyed blind
-- indexes (HMAC-SHA-256, 128 bits, one key per parameter class), dates are shifted by a secret
-- per-parameter offset, references are (type, id) pairs of opaque ids.

-- Strings (every normalised prefix up to 32 characters), tokens, uris, composite pairs, presence.
CREATE TABLE search_hash (
    resource_type TEXT NOT NULL,
    id            TEXT NOT NULL,
    param         TEXT NOT NULL,
    h             BYTEA NOT NULL
);
CREATE INDEX search_hash_lookup ON search_hash (resource_type, param, h, id);
CREATE INDEX search_hash_resource ON search_hash (resource_type, id, param, h);

-- References: target_type is '' for a canonical or external URL kept in target_id.
CREATE TABLE search_ref (
    resource_type TEXT NOT NULL,
    id            TEXT NOT NULL,
    param         TEXT NOT NULL,
    target_type   TEXT NOT NULL,
    target_id     TEXT NOT NULL
);
CREATE INDEX search_ref_lookup ON search_ref (resource_type, param, target_id, target_type, id);
CREATE INDEX search_ref_resource ON search_ref (resource_type, id, param);
CREATE INDEX search_ref_target ON search_ref (target_id, target_type);

-- Dates (shifted, inclusive milliseconds), numbers and quantities (with blind unit indexes);
-- comp is a composite's first (token) component.
CREATE TABLE search_range (
    resource_type TEXT NOT NULL,
    id            TEXT NOT NULL,
    param         TEXT NOT NULL,
    lo            DOUBLE PRECISION NOT NULL,
    hi            DOUBLE PRECISION NOT NULL,
    unit_sc       BYTEA,
    unit_c        BYTEA,
    comp          BYTEA
);
CREATE INDEX search_range_lookup ON search_range (resource_type, param, lo, hi);
CREATE INDEX search_range_resource ON search_range (resource_type, id, param);
