-- Every server keeps the access tokens it has verified in memory (identity/tokens.rs,
-- `TokenCache`) and forgets them all when told that any token may have stopped being live: a
-- token revoked or deleted, a refresh family revoked, a client disabled — whichever process,
-- path or DBA did it. The telling is here, in the database, so that no path can forget it:
-- statement-level triggers NOTIFY `carapace_tokens` when the transaction commits. Issuing
-- (INSERT) says nothing: a new token is not in any cache yet.
CREATE FUNCTION carapace_tokens_changed() RETURNS trigger
    LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    PERFORM pg_notify('carapace_tokens', TG_TABLE_NAME);
    RETURN NULL;
END
$$;

CREATE TRIGGER access_tokens_changed AFTER UPDATE OR DELETE ON access_tokens
    FOR EACH STATEMENT EXECUTE FUNCTION carapace_tokens_changed();
CREATE TRIGGER access_tokens_truncated AFTER TRUNCATE ON access_tokens
    FOR EACH STATEMENT EXECUTE FUNCTION carapace_tokens_changed();
CREATE TRIGGER refresh_tokens_changed AFTER UPDATE OR DELETE ON refresh_tokens
    FOR EACH STATEMENT EXECUTE FUNCTION carapace_tokens_changed();
CREATE TRIGGER refresh_tokens_truncated AFTER TRUNCATE ON refresh_tokens
    FOR EACH STATEMENT EXECUTE FUNCTION carapace_tokens_changed();
CREATE TRIGGER clients_changed AFTER UPDATE OR DELETE ON clients
    FOR EACH STATEMENT EXECUTE FUNCTION carapace_tokens_changed();
CREATE TRIGGER clients_truncated AFTER TRUNCATE ON clients
    FOR EACH STATEMENT EXECUTE FUNCTION carapace_tokens_changed();
