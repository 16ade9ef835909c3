-- Defense in depth in the database (see ARCHITECTURE.md, "Database roles and row-level security").
--
-- Roles: the owner (whoever runs the migrations) owns every table; the server works as
-- `carapace_app`, the console as `carapace_console`, and both write the audit trail through
-- `carapace_audit_writer`, which may only INSERT events (and advance the chain head). None of
-- them is a superuser, bypasses row-level security or owns anything; the owner's sessions switch to
-- them with SET ROLE. Roles are cluster-wide, so each is created once (a DBA may create them
-- beforehand when the owner may not create roles).
DO $$
DECLARE
    r TEXT;
BEGIN
    FOREACH r IN ARRAY ARRAY['carapace_app', 'carapace_console', 'carapace_audit_writer'] LOOP
        IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = r) THEN
            BEGIN
                EXECUTE pg_catalog.format(
                    'CREATE ROLE %I NOLOGIN NOSUPERUSER NOBYPASSRLS NOCREATEDB NOCREATEROLE INHERIT', r);
            EXCEPTION WHEN duplicate_object OR unique_violation THEN
                NULL; -- created meanwhile by another database's migration
            END;
        END IF;
    END LOOP;
END
$$;

DO $$
BEGIN
    GRANT carapace_app, carapace_console TO CURRENT_USER;
    GRANT carapace_audit_writer TO carapace_app, carapace_console;
EXCEPTION WHEN unique_violation THEN
    NULL; -- granted meanwhile by another database's migration
END
$$;

GRANT USAGE ON SCHEMA public TO carapace_app, carapace_console, carapace_audit_writer;

-- The application: data and identity tables. Versions are never changed or removed; heads are
-- never removed (a deletion is a new version).
GRANT SELECT, INSERT, UPDATE, DELETE ON
    data_keys, resources, clients, client_assertions_seen, access_tokens, users, recovery_codes,
    web_sessions, authorization_codes, refresh_tokens, search_hash, search_ref, search_range,
    search_prefix, search_reindex, btg_grants
    TO carapace_app;
GRANT SELECT, INSERT ON resource_versions TO carapace_app;
-- Read only where row-level security lets it (the AuditEvent API sets the reach).
GRANT SELECT ON audit_events TO carapace_app;
REVOKE DELETE ON resources FROM carapace_app;
GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA public TO carapace_app, carapace_console;

-- The console does what the application does, and reads the audit trail to verify it.
GRANT carapace_app TO carapace_console;
GRANT SELECT ON audit_events, audit_chain_head TO carapace_console;

-- The audit writer appends events and advances the chain head; nobody changes or removes events.
GRANT INSERT ON audit_events TO carapace_audit_writer;
GRANT SELECT, UPDATE ON audit_chain_head TO carapace_audit_writer;
GRANT USAGE ON SEQUENCE audit_events_id_seq TO carapace_audit_writer;
REVOKE UPDATE, DELETE, TRUNCATE ON audit_events
    FROM PUBLIC, carapace_app, carapace_console, carapace_audit_writer;

-- Row-level security, keyed to the request's access, set by the store at the start of each
-- transaction with set_config(..., true) (so it ends with the transaction and a pooled connection
-- never carries it to the next request):
--   carapace.reach         'all' | 'listed' (only the compartments listed) | 'all-but' (all but them)
--   carapace.compartments  comma-separated `Patient/<id>` key scopes
--   carapace.others        'on' when resources outside any patient compartment are visible
-- Without the settings every policy denies. Written in SQL without SET so the planner inlines it.
CREATE FUNCTION carapace_reaches(compartment TEXT) RETURNS BOOLEAN
    LANGUAGE sql STABLE PARALLEL SAFE AS $$
    SELECT CASE pg_catalog.current_setting('carapace.reach', true)
        WHEN 'all' THEN true
        WHEN 'listed' THEN
            CASE WHEN compartment IS NULL
                 THEN pg_catalog.current_setting('carapace.others', true) OPERATOR(pg_catalog.=) 'on'
                 ELSE compartment OPERATOR(pg_catalog.=) ANY (pg_catalog.string_to_array(
                          pg_catalog.current_setting('carapace.compartments', true), ','))
            END
        WHEN 'all-but' THEN
            CASE WHEN compartment IS NULL
                 THEN pg_catalog.current_setting('carapace.others', true) OPERATOR(pg_catalog.=) 'on'
                 ELSE NOT COALESCE(compartment OPERATOR(pg_catalog.=) ANY (pg_catalog.string_to_array(
                          pg_catalog.current_setting('carapace.compartments', true), ',')), false)
            END
        ELSE false
    END
$$;

ALTER TABLE resources ENABLE ROW LEVEL SECURITY;
ALTER TABLE resources FORCE ROW LEVEL SECURITY;
CREATE POLICY reach ON resources
    USING (carapace_reaches(compartment)) WITH CHECK (carapace_reaches(compartment));

ALTER TABLE resource_versions ENABLE ROW LEVEL SECURITY;
ALTER TABLE resource_versions FORCE ROW LEVEL SECURITY;
-- Versions are keyed by their data key's scope. Written out (not a function) so the planner sees
-- it: reach `all` costs a comparison per row, and the keys in reach are found once per statement
-- (uncorrelated subqueries, hashed), not once per row.
CREATE INDEX data_keys_outside_patients ON data_keys (id) WHERE scope NOT LIKE 'Patient/%';
CREATE POLICY reach ON resource_versions
    USING (pg_catalog.current_setting('carapace.reach', true) OPERATOR(pg_catalog.=) 'all'
     OR (pg_catalog.current_setting('carapace.reach', true) OPERATOR(pg_catalog.=) 'listed'
         AND dek_id IN (SELECT k.id FROM public.data_keys k
                WHERE k.scope OPERATOR(pg_catalog.=) ANY (pg_catalog.string_to_array(
                          pg_catalog.current_setting('carapace.compartments', true), ','))
               UNION ALL
               SELECT k.id FROM public.data_keys k
                WHERE k.scope NOT LIKE 'Patient/%'
                  AND pg_catalog.current_setting('carapace.others', true) OPERATOR(pg_catalog.=) 'on'))
     OR (pg_catalog.current_setting('carapace.reach', true) OPERATOR(pg_catalog.=) 'all-but'
         AND dek_id NOT IN (SELECT k.id FROM public.data_keys k
                WHERE k.scope OPERATOR(pg_catalog.=) ANY (pg_catalog.string_to_array(
                          pg_catalog.current_setting('carapace.compartments', true), ','))
               UNION ALL
               SELECT k.id FROM public.data_keys k
                WHERE k.scope NOT LIKE 'Patient/%'
                  AND pg_catalog.current_setting('carapace.others', true) OPERATOR(pg_catalog.<>) 'on')))
    WITH CHECK (pg_catalog.current_setting('carapace.reach', true) OPERATOR(pg_catalog.=) 'all'
     OR (pg_catalog.current_setting('carapace.reach', true) OPERATOR(pg_catalog.=) 'listed'
         AND dek_id IN (SELECT k.id FROM public.data_keys k
                WHERE k.scope OPERATOR(pg_catalog.=) ANY (pg_catalog.string_to_array(
                          pg_catalog.current_setting('carapace.compartments', true), ','))
               UNION ALL
               SELECT k.id FROM public.data_keys k
                WHERE k.scope NOT LIKE 'Patient/%'
                  AND pg_catalog.current_setting('carapace.others', true) OPERATOR(pg_catalog.=) 'on'))
     OR (pg_catalog.current_setting('carapace.reach', true) OPERATOR(pg_catalog.=) 'all-but'
         AND dek_id NOT IN (SELECT k.id FROM public.data_keys k
                WHERE k.scope OPERATOR(pg_catalog.=) ANY (pg_catalog.string_to_array(
                          pg_catalog.current_setting('carapace.compartments', true), ','))
               UNION ALL
               SELECT k.id FROM public.data_keys k
                WHERE k.scope NOT LIKE 'Patient/%'
                  AND pg_catalog.current_setting('carapace.others', true) OPERATOR(pg_catalog.<>) 'on')));

ALTER TABLE audit_events ENABLE ROW LEVEL SECURITY;
ALTER TABLE audit_events FORCE ROW LEVEL SECURITY;
CREATE POLICY append ON audit_events FOR INSERT WITH CHECK (true);
CREATE POLICY verify ON audit_events FOR SELECT TO carapace_console USING (true);
CREATE POLICY reach ON audit_events FOR SELECT
    USING (pg_catalog.current_setting('carapace.reach', true) OPERATOR(pg_catalog.=) 'all');
