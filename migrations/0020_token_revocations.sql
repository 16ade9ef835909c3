-- Every server keeps the access tokens it has verified in memory (identity/tokens.rs,
-- `TokenCache`) and forgets them all when told that any token may have stopped being live: a
-- token revoked or deleted, a refresh family revoked, a client disabled — whichever process,
-- path or DBA did it. The telling is here, in the database, so that no path can forget it:
-- triggers NOTIFY `carapace_tokens` when the transaction commits. Issuing (INSERT) says
-- nothing: a new token is not in any cache yet.
CREATE FUNCTION carapace_tokens_changed() RETURNS trigger
    LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    PERFORM pg_notify('carapace_tokens', TG_TABLE_NAME);
    RETURN NULL;
END
$$;

-- Row-level, and only when something that decides liveness changed: a refresh rotation (which
-- stamps `used_at`) or a revocation of nothing (an unknown token sent to /auth/revoke) tells no
-- one. Notifications with one payload coalesce within a transaction, so a bulk DELETE notifies once.
CREATE TRIGGER access_tokens_changed AFTER UPDATE ON access_tokens FOR EACH ROW
    WHEN (OLD.revoked_at IS DISTINCT FROM NEW.revoked_at OR OLD.expires_at IS DISTINCT FROM NEW.expires_at
          OR OLD.scopes IS DISTINCT FROM NEW.scopes OR OLD.role IS DISTINCT FROM NEW.role
          OR OLD.subject IS DISTINCT FROM NEW.subject OR OLD.patient IS DISTINCT FROM NEW.patient
          OR OLD.client_id IS DISTINCT FROM NEW.client_id
          OR OLD.refresh_family IS DISTINCT FROM NEW.refresh_family)
    EXECUTE FUNCTION carapace_tokens_changed();
CREATE TRIGGER access_tokens_removed AFTER DELETE ON access_tokens FOR EACH ROW
    EXECUTE FUNCTION carapace_tokens_changed();
CREATE TRIGGER access_tokens_truncated AFTER TRUNCATE ON access_tokens
    FOR EACH STATEMENT EXECUTE FUNCTION carapace_tokens_changed();
CREATE TRIGGER refresh_tokens_changed AFTER UPDATE ON refresh_tokens FOR EACH ROW
    WHEN (OLD.revoked_at IS DISTINCT FROM NEW.revoked_at OR OLD.family IS DISTINCT FROM NEW.family)
    EXECUTE FUNCTION carapace_tokens_changed();
CREATE TRIGGER refresh_tokens_removed AFTER DELETE ON refresh_tokens FOR EACH ROW
    EXECUTE FUNCTION carapace_tokens_changed();
CREATE TRIGGER refresh_tokens_truncated AFTER TRUNCATE ON refresh_tokens
    FOR EACH STATEMENT EXECUTE FUNCTION carapace_tokens_changed();
CREATE TRIGGER clients_changed AFTER UPDATE ON clients FOR EACH ROW
    WHEN (OLD.disabled IS DISTINCT FROM NEW.disabled OR OLD.client_id IS DISTINCT FROM NEW.client_id)
    EXECUTE FUNCTION carapace_tokens_changed();
CREATE TRIGGER clients_removed AFTER DELETE ON clients FOR EACH ROW
    EXECUTE FUNCTION carapace_tokens_changed();
CREATE TRIGGER clients_truncated AFTER TRUNCATE ON clients
    FOR EACH STATEMENT EXECUTE FUNCTION carapace_tokens_changed();
