-- The data's end of life (ARCHITECTURE.md, "Retention, legal holds and erasure"): legal holds,
-- purging history past its retention, and erasing a patient by crypto-shredding. Versions stay
-- append-only for the application and the console: the only ways to remove one are the two
-- functions below, owned by the owner, which check holds themselves — the database is where the
-- hold is enforced, whichever process asks. Each is SECURITY DEFINER with its search_path pinned
-- (pg_temp last) and every name qualified, so nothing a caller creates can stand in for a table.

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
-- The console places and releases holds (only those columns); the server only asks
-- `carapace_held` about one patient at a time (it cannot list holds or read their reasons).
GRANT SELECT, INSERT ON legal_holds TO carapace_console;
GRANT UPDATE (released_by, released_at) ON legal_holds TO carapace_console;
GRANT USAGE ON SEQUENCE legal_holds_id_seq TO carapace_console;

-- Is this compartment (`Patient/<id>`) under a hold in force? Every function below asks this.
-- (search_path pinned and every name qualified: a SECURITY DEFINER function must not resolve a
-- name to something its caller made, such as a temporary table.)
CREATE FUNCTION carapace_held(scope TEXT) RETURNS BOOLEAN
    LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
    SELECT EXISTS (SELECT 1 FROM public.legal_holds h
                    WHERE h.patient = scope AND h.released_at IS NULL)
$$;
REVOKE ALL ON FUNCTION carapace_held(TEXT) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION carapace_held(TEXT) TO carapace_app, carapace_console;

-- When each patient's data key got a key-encryption key of its own: backups taken before then
-- hold it wrapped by the main key (which erasure cannot destroy).
ALTER TABLE data_keys ADD COLUMN kek_since TIMESTAMPTZ;

-- Erased patients: one row per erasure, with the key-encryption key still to destroy in the key
-- provider (kek_destroyed NULL until it is; kek NULL when the data key had none of its own).
CREATE TABLE erasures (
    scope          TEXT PRIMARY KEY CHECK (scope LIKE 'Patient/%'),
    erased_at      TIMESTAMPTZ NOT NULL,
    erased_by      TEXT NOT NULL,
    resources      BIGINT NOT NULL,
    versions       BIGINT NOT NULL,
    kek            TEXT,
    kek_since      TIMESTAMPTZ,
    kek_destroyed  TIMESTAMPTZ
);
-- Tombstones: an erased resource's id answers 410 Gone and is never used again.
CREATE TABLE erased_resources (
    resource_type TEXT NOT NULL,
    id            TEXT NOT NULL,
    PRIMARY KEY (resource_type, id)
);
GRANT SELECT ON erasures, erased_resources TO carapace_app;
GRANT UPDATE (kek_destroyed) ON erasures TO carapace_console;

-- Nothing is keyed for an erased patient again (a first write racing the erasure included).
CREATE FUNCTION data_keys_refuse_erased() RETURNS trigger
    LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF EXISTS (SELECT 1 FROM public.erasures e WHERE e.scope = NEW.scope) THEN
        RAISE EXCEPTION 'this patient record was erased' USING ERRCODE = 'CH003';
    END IF;
    RETURN NEW;
END
$$;
CREATE TRIGGER data_keys_refuse_erased BEFORE INSERT OR UPDATE ON data_keys
    FOR EACH ROW EXECUTE FUNCTION data_keys_refuse_erased();

-- An erased resource's id is never used again, whoever writes.
CREATE FUNCTION resources_refuse_erased() RETURNS trigger
    LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF EXISTS (SELECT 1 FROM public.erased_resources e
                WHERE e.resource_type = NEW.resource_type AND e.id = NEW.id) THEN
        RAISE EXCEPTION 'this resource was erased' USING ERRCODE = 'CH003';
    END IF;
    RETURN NEW;
END
$$;
CREATE TRIGGER resources_refuse_erased BEFORE INSERT OR UPDATE OF resource_type, id ON resources
    FOR EACH ROW EXECUTE FUNCTION resources_refuse_erased();

-- Every patient record a resource has ever been in — its key scope (through `resources`) and the
-- other patients it names (its `_compartment` index rows) — kept when the resource is updated or
-- deleted and its index rows replaced, so that a hold reaches every version that was ever in the
-- held record. Written by triggers (no role writes or changes it); removed only by erasure.
CREATE TABLE resource_compartments (
    resource_type TEXT NOT NULL,
    id            TEXT NOT NULL,
    patient       TEXT NOT NULL,
    PRIMARY KEY (resource_type, id, patient)
);
INSERT INTO resource_compartments
    SELECT resource_type, id, compartment FROM resources WHERE compartment IS NOT NULL
    UNION
    SELECT resource_type, id, 'Patient/' || target_id FROM search_ref
     WHERE param = '_compartment' AND target_type = 'Patient'
    ON CONFLICT DO NOTHING;
CREATE FUNCTION resource_compartments_record() RETURNS trigger
    LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF TG_TABLE_NAME = 'resources' THEN
        IF NEW.compartment IS NOT NULL THEN
            INSERT INTO public.resource_compartments VALUES (NEW.resource_type, NEW.id, NEW.compartment)
                ON CONFLICT DO NOTHING;
        END IF;
    ELSIF NEW.param = '_compartment' AND NEW.target_type = 'Patient' THEN
        INSERT INTO public.resource_compartments
            VALUES (NEW.resource_type, NEW.id, 'Patient/' || NEW.target_id)
            ON CONFLICT DO NOTHING;
    END IF;
    RETURN NULL;
END
$$;
CREATE TRIGGER resources_compartments_record AFTER INSERT OR UPDATE ON resources
    FOR EACH ROW EXECUTE FUNCTION resource_compartments_record();
CREATE TRIGGER search_ref_compartments_record AFTER INSERT ON search_ref
    FOR EACH ROW WHEN (NEW.param = '_compartment') EXECUTE FUNCTION resource_compartments_record();

-- A data key's scope never changes, and the application deletes only export keys (at a job's
-- expiry): every other key's row goes only with an erasure (as the owner, in its function). A
-- scope renamed or a key deleted could otherwise hide a hold, or lose the audit archive's or
-- the KEK names' key.
CREATE FUNCTION data_keys_guard() RETURNS trigger
    LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF TG_OP = 'UPDATE' THEN
        IF NEW.scope IS DISTINCT FROM OLD.scope THEN
            RAISE EXCEPTION 'a data key''s scope never changes' USING ERRCODE = 'insufficient_privilege';
        END IF;
        RETURN NEW;
    END IF;
    IF OLD.scope NOT LIKE 'export/%'
       AND current_user IN ('carapace_app', 'carapace_console', 'carapace_audit_writer') THEN
        RAISE EXCEPTION 'only an erasure removes this data key' USING ERRCODE = 'insufficient_privilege';
    END IF;
    RETURN OLD;
END
$$;
CREATE TRIGGER data_keys_guard BEFORE UPDATE OR DELETE ON data_keys
    FOR EACH ROW EXECUTE FUNCTION data_keys_guard();

-- Is a resource in a held patient's record: its version's key scope, its current compartment, or
-- any patient record it has ever been in (`resource_compartments`)?
CREATE FUNCTION carapace_resource_held(rtype TEXT, rid TEXT, compartment TEXT, key_scope TEXT)
    RETURNS BOOLEAN
    LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
    SELECT (compartment IS NOT NULL AND public.carapace_held(compartment))
        OR (key_scope IS NOT NULL AND public.carapace_held(key_scope))
        OR EXISTS (SELECT 1 FROM public.resource_compartments c
                    WHERE c.resource_type = rtype AND c.id = rid AND public.carapace_held(c.patient))
$$;
REVOKE ALL ON FUNCTION carapace_resource_held(TEXT, TEXT, TEXT, TEXT) FROM PUBLIC;

-- Remove non-current versions superseded before `before` (of one type, or of one resource when
-- `one_id` is given), at most `max_rows`, skipping every version of a resource in a held record.
-- `dry_run` counts without removing. Current versions (deletions included) are never removed, so
-- every id keeps its head. Holds are read under a share lock: a hold placed meanwhile waits for
-- this batch, or this batch sees it.
CREATE FUNCTION carapace_purge_versions(
    one_type TEXT, one_id TEXT, before TIMESTAMPTZ, max_rows INTEGER, dry_run BOOLEAN)
    RETURNS BIGINT
    LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    n BIGINT;
    prev_reach TEXT := current_setting('carapace.reach', true);
BEGIN
    -- The reach this needs, set here and put back before returning (a function-level SET of a
    -- custom setting would need a superuser owner).
    PERFORM set_config('carapace.reach', 'all', true);
    LOCK TABLE public.legal_holds IN SHARE MODE;
    WITH victims AS (
        SELECT v.resource_type, v.id, v.version_id
          FROM public.resources r
          JOIN public.resource_versions v
            ON v.resource_type = r.resource_type AND v.id = r.id AND v.version_id < r.version_id
          LEFT JOIN public.data_keys k ON k.id = v.dek_id
         WHERE r.resource_type = one_type
           AND (one_id IS NULL OR r.id = one_id)
           AND EXISTS (SELECT 1 FROM public.resource_versions s
                        WHERE s.resource_type = v.resource_type AND s.id = v.id
                          AND s.version_id > v.version_id AND s.last_updated < before)
           AND NOT public.carapace_resource_held(r.resource_type, r.id, r.compartment, k.scope)
         ORDER BY v.resource_type, v.id, v.version_id
         LIMIT max_rows),
    gone AS (
        DELETE FROM public.resource_versions v USING victims p
         WHERE NOT dry_run
           AND v.resource_type = p.resource_type AND v.id = p.id AND v.version_id = p.version_id
        RETURNING 1)
    SELECT CASE WHEN dry_run THEN (SELECT count(*) FROM victims) ELSE (SELECT count(*) FROM gone) END
      INTO n;
    PERFORM set_config('carapace.reach', coalesce(prev_reach, ''), true);
    RETURN n;
END
$$;
REVOKE ALL ON FUNCTION carapace_purge_versions(TEXT, TEXT, TIMESTAMPTZ, INTEGER, BOOLEAN) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION carapace_purge_versions(TEXT, TEXT, TIMESTAMPTZ, INTEGER, BOOLEAN)
    TO carapace_app, carapace_console;

-- Erase a patient's record: every resource whose current version is in the compartment (all its
-- versions, its head, its index rows) and every other version sealed under the compartment's data
-- key; then that key's row. Tombstones are left for the ids. Refused under a legal hold of this
-- patient or of another patient one of those resources is also in (SQLSTATE CH001), or when a user
-- account belongs to the patient (CH002). `kek` is the name of the key-encryption key the caller
-- expects for this patient (derived from the scope, not read from the row: a row copied from
-- another patient must not make the caller destroy that patient's key); a row naming another is
-- refused (CH004). Returns the counts, the KEK, when the key got it and when the key was made.
CREATE FUNCTION carapace_erase_patient(p_scope TEXT, p_by TEXT, p_at TIMESTAMPTZ, p_kek TEXT)
    RETURNS TABLE (erased_resources_n BIGINT, erased_versions_n BIGINT, erased_kek TEXT,
                   erased_kek_since TIMESTAMPTZ, erased_key_created TIMESTAMPTZ)
    LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    prev_reach TEXT := current_setting('carapace.reach', true);
    key_id BIGINT;
    key_wrapped TEXT;
    key_since TIMESTAMPTZ;
    key_created TIMESTAMPTZ;
    row_kek TEXT;
    v_types TEXT[];
    v_ids TEXT[];
    n_versions BIGINT;
BEGIN
    IF p_scope NOT LIKE 'Patient/%' THEN
        RAISE EXCEPTION 'not a patient compartment' USING ERRCODE = '22023';
    END IF;
    PERFORM set_config('carapace.reach', 'all', true);
    -- Serialise with hold placement (which takes the same lock) and purges.
    PERFORM pg_advisory_xact_lock(hashtextextended('carapace-hold:' || p_scope, 0));
    LOCK TABLE public.legal_holds IN SHARE MODE;
    IF public.carapace_held(p_scope) THEN
        RAISE EXCEPTION 'under legal hold' USING ERRCODE = 'CH001';
    END IF;
    IF EXISTS (SELECT 1 FROM public.users u WHERE 'Patient/' || u.patient_id = p_scope) THEN
        RAISE EXCEPTION 'a user account belongs to this patient' USING ERRCODE = 'CH002';
    END IF;
    SELECT k.id, k.wrapped, k.kek_since, k.created_at INTO key_id, key_wrapped, key_since, key_created
      FROM public.data_keys k WHERE k.scope = p_scope FOR UPDATE;
    IF key_wrapped LIKE 'kek:%' THEN
        row_kek := split_part(key_wrapped, ':', 2);
        IF row_kek IS DISTINCT FROM p_kek THEN
            RAISE EXCEPTION 'the data key row names another key-encryption key'
                USING ERRCODE = 'CH004';
        END IF;
    END IF;

    SELECT coalesce(array_agg(x.resource_type), '{}'), coalesce(array_agg(x.id), '{}')
      INTO v_types, v_ids
      FROM (SELECT r.resource_type, r.id FROM public.resources r WHERE r.compartment = p_scope
            UNION
            SELECT v.resource_type, v.id FROM public.resource_versions v
              JOIN public.resources r ON r.resource_type = v.resource_type AND r.id = v.id
             WHERE v.dek_id = key_id AND r.version_id = v.version_id) x;
    IF EXISTS (SELECT 1 FROM unnest(v_types, v_ids) AS e(resource_type, id)
                 JOIN public.resource_compartments c
                   ON c.resource_type = e.resource_type AND c.id = e.id
                WHERE public.carapace_held(c.patient)) THEN
        RAISE EXCEPTION 'a resource of this record is in a held patient''s record too'
            USING ERRCODE = 'CH001';
    END IF;

    INSERT INTO public.erased_resources (resource_type, id)
        SELECT e.resource_type, e.id FROM unnest(v_types, v_ids) AS e(resource_type, id)
        ON CONFLICT DO NOTHING;
    DELETE FROM public.search_hash h USING unnest(v_types, v_ids) AS e(resource_type, id)
     WHERE h.resource_type = e.resource_type AND h.id = e.id;
    DELETE FROM public.search_range h USING unnest(v_types, v_ids) AS e(resource_type, id)
     WHERE h.resource_type = e.resource_type AND h.id = e.id;
    DELETE FROM public.search_ref h USING unnest(v_types, v_ids) AS e(resource_type, id)
     WHERE h.resource_type = e.resource_type AND h.id = e.id;
    DELETE FROM public.search_reindex h USING unnest(v_types, v_ids) AS e(resource_type, id)
     WHERE h.resource_type = e.resource_type AND h.id = e.id;
    DELETE FROM public.resource_compartments h USING unnest(v_types, v_ids) AS e(resource_type, id)
     WHERE h.resource_type = e.resource_type AND h.id = e.id;
    DELETE FROM public.resources r USING unnest(v_types, v_ids) AS e(resource_type, id)
     WHERE r.resource_type = e.resource_type AND r.id = e.id;
    WITH gone AS (
        DELETE FROM public.resource_versions v
         WHERE v.dek_id = key_id
            OR (v.resource_type, v.id) IN (SELECT * FROM unnest(v_types, v_ids))
        RETURNING 1)
    SELECT count(*) INTO n_versions FROM gone;
    DELETE FROM public.data_keys k WHERE k.id = key_id;

    INSERT INTO public.erasures (scope, erased_at, erased_by, resources, versions, kek, kek_since)
        VALUES (p_scope, p_at, p_by, cardinality(v_ids), n_versions, row_kek, key_since);
    PERFORM set_config('carapace.reach', coalesce(prev_reach, ''), true);
    RETURN QUERY SELECT cardinality(v_ids)::BIGINT, n_versions, row_kek, key_since, key_created;
END
$$;
REVOKE ALL ON FUNCTION carapace_erase_patient(TEXT, TEXT, TIMESTAMPTZ, TEXT) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION carapace_erase_patient(TEXT, TEXT, TIMESTAMPTZ, TEXT) TO carapace_console;
