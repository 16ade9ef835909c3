-- The prefix dictionary (see ARCHITECTURE.md, "Search over encrypted data"): a value searched by
-- prefix (a string, a token's display text, a uri under :below) is indexed on its resource once,
-- by the blind index of the whole; this table leads from the blind index of each prefix to it.
-- Rows are shared by every resource with the value and never removed (a row names no resource).
CREATE TABLE search_prefix (
    prefix BYTEA NOT NULL,
    whole  BYTEA NOT NULL,
    PRIMARY KEY (prefix, whole)
);

-- Resources indexed before this migration hold one row per prefix and a presence row per
-- parameter; the server re-indexes them at start-up (search_reindex holds what is left to do).
CREATE TABLE search_reindex (
    resource_type TEXT NOT NULL,
    id            TEXT NOT NULL,
    PRIMARY KEY (resource_type, id)
);
INSERT INTO search_reindex (resource_type, id) SELECT resource_type, id FROM resources WHERE NOT deleted;
