-- Consent and break-the-glass (see ARCHITECTURE.md, "Access policy").

-- The patient compartment (`Patient/<id>`) each resource is sealed in, or NULL outside any: what
-- searches narrow by, in SQL, for callers who may see only some compartments. Kept by a trigger
-- from the data key of the version the head points at, so no write path can forget it.
ALTER TABLE resources ADD COLUMN compartment TEXT;
UPDATE resources h SET compartment = k.scope
  FROM resource_versions v JOIN data_keys k ON k.id = v.dek_id
 WHERE v.resource_type = h.resource_type AND v.id = h.id AND v.version_id = h.version_id
   AND k.scope LIKE 'Patient/%';
CREATE INDEX resources_compartment ON resources (compartment, resource_type, id) WHERE compartment IS NOT NULL;

CREATE FUNCTION resources_set_compartment() RETURNS trigger
    LANGUAGE plpgsql SET search_path = public, pg_catalog AS $$
BEGIN
    SELECT CASE WHEN k.scope LIKE 'Patient/%' THEN k.scope END INTO NEW.compartment
      FROM resource_versions v JOIN data_keys k ON k.id = v.dek_id
     WHERE v.resource_type = NEW.resource_type AND v.id = NEW.id AND v.version_id = NEW.version_id;
    RETURN NEW;
END
$$;
CREATE TRIGGER resources_compartment BEFORE INSERT OR UPDATE OF version_id ON resources
    FOR EACH ROW EXECUTE FUNCTION resources_set_compartment();

-- Break-the-glass assertions: who, why (sealed: free text may hold PHI), for how long, and their
-- review. Open until reviewed; the console lists the queue.
CREATE TABLE btg_grants (
    id            BIGSERIAL PRIMARY KEY,
    principal     TEXT NOT NULL,
    role          TEXT NOT NULL,
    reason_sealed BYTEA NOT NULL,
    started_at    TIMESTAMPTZ NOT NULL,
    expires_at    TIMESTAMPTZ NOT NULL,
    accesses      BIGINT NOT NULL DEFAULT 0,
    reviewed_at   TIMESTAMPTZ,
    reviewed_by   TEXT,
    note_sealed   BYTEA
);
CREATE INDEX btg_grants_open ON btg_grants (principal, expires_at);
CREATE INDEX btg_grants_unreviewed ON btg_grants (started_at) WHERE reviewed_at IS NULL;
