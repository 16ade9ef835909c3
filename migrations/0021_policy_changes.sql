-- Every server keeps what the access policy read for a practitioner or analytics user (their
-- actor references, and the consents that may name them) in memory between their requests
-- (store/policy_inputs.rs, `PolicyInputs`), and forgets it all when told that it may have
-- changed: a Consent, PractitionerRole or CareTeam written, deleted or re-indexed, or a user's
-- practitioner or role changed — whichever process, path or DBA did it. The telling is here, in
-- the database, so that no path can forget it: triggers NOTIFY `carapace_policy` when the
-- transaction commits. Notifications with one payload coalesce within a transaction, so a bundle
-- of a thousand CareTeams notifies once. What bypasses triggers (ALTER TABLE ... DISABLE TRIGGER,
-- session_replication_role = replica, as pg_restore --disable-triggers sets) tells no one: a
-- server keeps what it read for at most 60 s then, and an operator who does so restarts them.
CREATE FUNCTION carapace_policy_changed() RETURNS trigger
    LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    PERFORM pg_notify('carapace_policy', TG_TABLE_NAME);
    RETURN NULL;
END
$$;

-- The current version of a consent (a new one, a deletion, an erasure) and the membership rows.
CREATE TRIGGER resources_policy_added AFTER INSERT ON resources FOR EACH ROW
    WHEN (NEW.resource_type IN ('Consent', 'PractitionerRole', 'CareTeam'))
    EXECUTE FUNCTION carapace_policy_changed();
-- Either side: a row changed away from one of those types (only a DBA would) counts too.
CREATE TRIGGER resources_policy_written AFTER UPDATE ON resources FOR EACH ROW
    WHEN (OLD.resource_type IN ('Consent', 'PractitionerRole', 'CareTeam')
          OR NEW.resource_type IN ('Consent', 'PractitionerRole', 'CareTeam'))
    EXECUTE FUNCTION carapace_policy_changed();
CREATE TRIGGER resources_policy_removed AFTER DELETE ON resources FOR EACH ROW
    WHEN (OLD.resource_type IN ('Consent', 'PractitionerRole', 'CareTeam'))
    EXECUTE FUNCTION carapace_policy_changed();
CREATE TRIGGER resources_policy_truncated AFTER TRUNCATE ON resources
    FOR EACH STATEMENT EXECUTE FUNCTION carapace_policy_changed();

-- Who a consent names and who a role or care team holds are read from the index rows, which
-- re-indexing rewrites without a new version.
CREATE TRIGGER search_ref_policy_added AFTER INSERT ON search_ref FOR EACH ROW
    WHEN (NEW.resource_type IN ('Consent', 'PractitionerRole', 'CareTeam'))
    EXECUTE FUNCTION carapace_policy_changed();
CREATE TRIGGER search_ref_policy_written AFTER UPDATE ON search_ref FOR EACH ROW
    WHEN (OLD.resource_type IN ('Consent', 'PractitionerRole', 'CareTeam')
          OR NEW.resource_type IN ('Consent', 'PractitionerRole', 'CareTeam'))
    EXECUTE FUNCTION carapace_policy_changed();
CREATE TRIGGER search_ref_policy_removed AFTER DELETE ON search_ref FOR EACH ROW
    WHEN (OLD.resource_type IN ('Consent', 'PractitionerRole', 'CareTeam'))
    EXECUTE FUNCTION carapace_policy_changed();
CREATE TRIGGER search_ref_policy_truncated AFTER TRUNCATE ON search_ref
    FOR EACH STATEMENT EXECUTE FUNCTION carapace_policy_changed();

-- A user's practitioner and role decide their actor references (keyed by user name).
CREATE TRIGGER users_policy_changed AFTER UPDATE ON users FOR EACH ROW
    WHEN (OLD.practitioner_id IS DISTINCT FROM NEW.practitioner_id OR OLD.role IS DISTINCT FROM NEW.role
          OR OLD.username IS DISTINCT FROM NEW.username)
    EXECUTE FUNCTION carapace_policy_changed();
CREATE TRIGGER users_policy_added_or_removed AFTER INSERT OR DELETE ON users FOR EACH ROW
    EXECUTE FUNCTION carapace_policy_changed();
CREATE TRIGGER users_policy_truncated AFTER TRUNCATE ON users
    FOR EACH STATEMENT EXECUTE FUNCTION carapace_policy_changed();
