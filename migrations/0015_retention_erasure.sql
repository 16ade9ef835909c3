-- The data's end of life (ARCHITECTURE.md, "Retention, legal holds and erasure"): legal holds,
-- purging history past its retention, and erasing a patient by crypto-shredding. Versions stay
-- append-only for the application and the console: the only ways to remove one are the two
-- functions below, owned by the owner, which check holds themselves — the database is where the
-- hold is enforced, whichever process asks.

-- A patient's data (their key scope, `Patient/<id>`) and audit events are exempt from every purge
-- and from erasure while a hold is in force. The reason is sealed (it may name a case or a person).
CREATE TABLE legal_holds (
    id            BIGSERIAL PRIMARY KEY,
    patient       TEXT NOT NULL CHECK (patient LIKE 'Patient/%'),
    reason_sealed BYTEA NOT NULL,
    placed_by     TEXT NOT NULL,
    placed_at     TIMESTAMPTZ NOT NULL,
    released_by   TEXT,
    released_at   TIMESTAMPTZ,
    CHECK ((released_by IS NULL) = (released_at IS NULL))
);
CREATE INDEX legal_holds_in_force ON legal_holds (patient) WHERE released_at IS NULL;
GRANT SELECT ON legal_holds TO carapace_app;
GRANT SELECT, INSERT, UPDATE ON legal_holds TO carapace_console;
GRANT USAGE ON SEQUENCE legal_holds_id_seq TO carapace_console;

CREATE FUNCTION carapace_held(scope TEXT) RETURNS BOOLEAN
    LANGUAGE sql STABLE AS $$
    SELECT EXISTS (SELECT 1 FROM public.legal_holds h
                    WHERE h.patient OPERATOR(pg_catalog.=) scope AND h.released_at IS NULL)
$$;

-- Erased patients: one row per erasure, with the key-encryption key still to destroy in the key
-- provider (NULL once destroyed, or when the patient's data key was wrapped by the main key).
CREATE TABLE erasures (
    scope          TEXT PRIMARY KEY CHECK (scope LIKE 'Patient/%'),
    erased_at      TIMESTAMPTZ NOT NULL,
    erased_by      TEXT NOT NULL,
    resources      BIGINT NOT NULL,
    versions       BIGINT NOT NULL,
    kek            TEXT,
    kek_destroyed  TIMESTAMPTZ
);
-- Tombstones: an erased resource's id answers 410 Gone and is never used again.
CREATE TABLE erased_resources (
    resource_type TEXT NOT NULL,
    id            TEXT NOT NULL,
    PRIMARY KEY (resource_type, id)
);
GRANT SELECT ON erasures, erased_resources TO carapace_app;
GRANT SELECT, UPDATE ON erasures TO carapace_console;

-- Remove non-current versions superseded before `before` (of one type, or of one resource when
-- `one_id` is given), at most `max_rows`, skipping every version in a held compartment (the
-- version's key scope or the resource's current one). `dry_run` counts without removing.
-- Current versions (deletions included) are never removed, so every id keeps its head.
CREATE FUNCTION carapace_purge_versions(
    one_type TEXT, one_id TEXT, before TIMESTAMPTZ, max_rows INTEGER, dry_run BOOLEAN)
    RETURNS BIGINT
    LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, public AS $$
DECLARE
    n BIGINT;
BEGIN
    PERFORM set_config('carapace.reach', 'all', true);
    CREATE TEMPORARY TABLE IF NOT EXISTS purge_victims (resource_type TEXT, id TEXT, version_id BIGINT)
        ON COMMIT DROP;
    TRUNCATE purge_victims;
    INSERT INTO purge_victims
    SELECT v.resource_type, v.id, v.version_id
      FROM resources r
      JOIN resource_versions v ON v.resource_type = r.resource_type AND v.id = r.id
                              AND v.version_id < r.version_id
      LEFT JOIN data_keys k ON k.id = v.dek_id
     WHERE r.resource_type = one_type
       AND (one_id IS NULL OR r.id = one_id)
       AND EXISTS (SELECT 1 FROM resource_versions s
                    WHERE s.resource_type = v.resource_type AND s.id = v.id
                      AND s.version_id > v.version_id AND s.last_updated < before)
       AND NOT (r.compartment IS NOT NULL AND carapace_held(r.compartment))
       AND NOT (k.scope IS NOT NULL AND carapace_held(k.scope))
     ORDER BY v.resource_type, v.id, v.version_id
     LIMIT max_rows;
    SELECT count(*) INTO n FROM purge_victims;
    IF NOT dry_run THEN
        DELETE FROM resource_versions v USING purge_victims p
         WHERE v.resource_type = p.resource_type AND v.id = p.id AND v.version_id = p.version_id;
    END IF;
    RETURN n;
END
$$;
REVOKE ALL ON FUNCTION carapace_purge_versions(TEXT, TEXT, TIMESTAMPTZ, INTEGER, BOOLEAN) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION carapace_purge_versions(TEXT, TEXT, TIMESTAMPTZ, INTEGER, BOOLEAN)
    TO carapace_app, carapace_console;

-- Erase a patient's record: every resource whose current version is in the compartment (all its
-- versions, its head, its index rows) and every other version sealed under the compartment's data
-- key; then that key's row. Tombstones are left for the ids. Refused under a legal hold (SQLSTATE
-- CH001) or when a user account belongs to the patient (CH002). Returns what was removed and the
-- wrapped key (whose key-encryption key the caller destroys in the key provider after commit).
CREATE FUNCTION carapace_erase_patient(p_scope TEXT, p_by TEXT, p_at TIMESTAMPTZ)
    RETURNS TABLE (erased_resources_n BIGINT, erased_versions_n BIGINT, erased_wrapped TEXT)
    LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, public AS $$
DECLARE
    key_id BIGINT;
    key_wrapped TEXT;
    n_resources BIGINT;
    n_versions BIGINT;
BEGIN
    IF p_scope NOT LIKE 'Patient/%' THEN
        RAISE EXCEPTION 'not a patient compartment' USING ERRCODE = '22023';
    END IF;
    -- Serialise with hold placement (which locks the same advisory key).
    PERFORM pg_advisory_xact_lock(hashtextextended('carapace-hold:' || p_scope, 0));
    IF carapace_held(p_scope) THEN
        RAISE EXCEPTION 'under legal hold' USING ERRCODE = 'CH001';
    END IF;
    IF EXISTS (SELECT 1 FROM users u WHERE 'Patient/' || u.patient_id = p_scope) THEN
        RAISE EXCEPTION 'a user account belongs to this patient' USING ERRCODE = 'CH002';
    END IF;
    PERFORM set_config('carapace.reach', 'all', true);
    SELECT k.id, k.wrapped INTO key_id, key_wrapped FROM data_keys k WHERE k.scope = p_scope FOR UPDATE;

    CREATE TEMPORARY TABLE erase_victims ON COMMIT DROP AS
        SELECT r.resource_type, r.id FROM resources r WHERE r.compartment = p_scope
        UNION
        SELECT v.resource_type, v.id FROM resource_versions v
          JOIN resources r ON r.resource_type = v.resource_type AND r.id = v.id
         WHERE v.dek_id = key_id AND r.version_id = v.version_id;
    SELECT count(*) INTO n_resources FROM erase_victims;

    INSERT INTO erased_resources (resource_type, id)
        SELECT e.resource_type, e.id FROM erase_victims e ON CONFLICT DO NOTHING;
    DELETE FROM search_hash h USING erase_victims e WHERE h.resource_type = e.resource_type AND h.id = e.id;
    DELETE FROM search_range h USING erase_victims e WHERE h.resource_type = e.resource_type AND h.id = e.id;
    DELETE FROM search_ref h USING erase_victims e WHERE h.resource_type = e.resource_type AND h.id = e.id;
    DELETE FROM search_reindex h USING erase_victims e WHERE h.resource_type = e.resource_type AND h.id = e.id;
    DELETE FROM resources r USING erase_victims e WHERE r.resource_type = e.resource_type AND r.id = e.id;
    WITH gone AS (
        DELETE FROM resource_versions v
         WHERE v.dek_id = key_id
            OR EXISTS (SELECT 1 FROM erase_victims e
                        WHERE e.resource_type = v.resource_type AND e.id = v.id)
        RETURNING 1)
    SELECT count(*) INTO n_versions FROM gone;
    DELETE FROM data_keys k WHERE k.id = key_id;

    INSERT INTO erasures (scope, erased_at, erased_by, resources, versions, kek)
        VALUES (p_scope, p_at, p_by, n_resources, n_versions,
                CASE WHEN key_wrapped LIKE 'kek:%' THEN split_part(key_wrapped, ':', 2) END);
    RETURN QUERY SELECT n_resources, n_versions, key_wrapped;
END
$$;
REVOKE ALL ON FUNCTION carapace_erase_patient(TEXT, TEXT, TIMESTAMPTZ) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION carapace_erase_patient(TEXT, TEXT, TIMESTAMPTZ) TO carapace_console;
