-- AuditEvents sealed like resources (see ARCHITECTURE.md, "Audit trail"): the event itself is
-- AES-256-GCM under the data key of scope `audit/events`; only what the trail is searched by stays
-- in the clear: when, action, outcome, who, the patient whose data it was, the interaction and the
-- purpose of use. Events written before this migration keep their plaintext `event`.
ALTER TABLE audit_events
    ADD COLUMN patient TEXT,
    ADD COLUMN subtype TEXT,
    ADD COLUMN purpose TEXT,
    ADD COLUMN dek_id  BIGINT REFERENCES data_keys (id),
    ADD COLUMN sealed  BYTEA,
    ALTER COLUMN event DROP NOT NULL,
    ADD CONSTRAINT audit_events_sealed_or_plain CHECK ((event IS NULL) <> (sealed IS NULL)),
    ADD CONSTRAINT audit_events_sealed_key CHECK (sealed IS NULL OR dek_id IS NOT NULL);
CREATE INDEX audit_events_patient ON audit_events (patient, id) WHERE patient IS NOT NULL;
CREATE INDEX audit_events_principal ON audit_events (principal, id);

-- Patients read the events of their own compartment ("who accessed my record"); everything else
-- needs reach `all` (administrators).
DROP POLICY reach ON audit_events;
CREATE POLICY reach ON audit_events FOR SELECT
    USING (pg_catalog.current_setting('carapace.reach', true) OPERATOR(pg_catalog.=) 'all'
           OR (patient IS NOT NULL AND carapace_reaches(patient)));
