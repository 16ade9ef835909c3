-- The chain is appended after the events commit (see ARCHITECTURE.md, "Audit trail"). Holding the
-- chain's head from chaining to commit made every writer's commit wait for the one before it, so
-- concurrent writes could not share WAL flushes. Now an event commits with its data carrying a tag
-- (HMAC under the chain key over everything the row says); a queue row, written by a trigger in the
-- same transaction, waits for the chainer, which links queued events in the order they became
-- visible: link = HMAC(previous link, seq, tag). The chainer reads only the queue (the tag is copied
-- there); `audit verify` recomputes every tag from its event, so an event written by anyone without
-- the key breaks the chain where it was linked.
ALTER TABLE audit_events ADD COLUMN tag BYTEA;

-- (No foreign keys: each would lock the event row it checks; `audit verify` checks the pairing.)
CREATE TABLE audit_links (
    seq      BIGINT PRIMARY KEY,
    event_id BIGINT NOT NULL UNIQUE,
    link     BYTEA NOT NULL
);
CREATE TRIGGER audit_links_no_update_or_delete BEFORE UPDATE OR DELETE ON audit_links
    FOR EACH ROW EXECUTE FUNCTION audit_events_refuse_change();
CREATE TRIGGER audit_links_no_truncate BEFORE TRUNCATE ON audit_links
    FOR EACH STATEMENT EXECUTE FUNCTION audit_events_refuse_change();

CREATE TABLE audit_unchained (
    event_id BIGINT PRIMARY KEY,
    tag      BYTEA NOT NULL
);
CREATE FUNCTION audit_events_queue() RETURNS trigger
    LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO public.audit_unchained (event_id, tag) VALUES (NEW.id, coalesce(NEW.tag, '\x'));
    RETURN NULL;
END
$$;
CREATE TRIGGER audit_events_queue AFTER INSERT ON audit_events
    FOR EACH ROW WHEN (NEW.seq IS NULL) EXECUTE FUNCTION audit_events_queue();

GRANT INSERT ON audit_unchained TO carapace_audit_writer;
GRANT SELECT, DELETE ON audit_unchained TO carapace_app;
GRANT SELECT, INSERT ON audit_links TO carapace_app;
REVOKE UPDATE, DELETE, TRUNCATE ON audit_links
    FROM PUBLIC, carapace_app, carapace_console, carapace_audit_writer;
