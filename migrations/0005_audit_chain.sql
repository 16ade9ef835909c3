-- The audit trail is append-only and tamper-evident (see ARCHITECTURE.md, "Audit trail"): every
-- event carries its place in the chain (seq) and an HMAC link over the previous link and its own
-- content, under a key from the key provider; `carapace-console audit verify` walks it.
ALTER TABLE audit_events ADD COLUMN seq BIGINT, ADD COLUMN link BYTEA;
CREATE UNIQUE INDEX audit_events_seq ON audit_events (seq);

-- The last link, locked by each writer while it chains its events (so events are chained in the
-- order they commit). Events recorded before this migration stay outside the chain.
CREATE TABLE audit_chain_head (
    one  BOOLEAN PRIMARY KEY DEFAULT true CHECK (one),
    seq  BIGINT NOT NULL,
    link BYTEA NOT NULL
);
INSERT INTO audit_chain_head (seq, link) VALUES (0, '\x0000000000000000000000000000000000000000000000000000000000000000');

-- No one edits or removes an event: UPDATE, DELETE and TRUNCATE are refused, row by row and for
-- the whole table.
CREATE FUNCTION audit_events_refuse_change() RETURNS trigger
    LANGUAGE plpgsql SET search_path = pg_catalog AS $$
BEGIN
    RAISE EXCEPTION 'audit_events is append-only' USING ERRCODE = 'insufficient_privilege';
END
$$;
CREATE TRIGGER audit_events_no_update_or_delete BEFORE UPDATE OR DELETE ON audit_events
    FOR EACH ROW EXECUTE FUNCTION audit_events_refuse_change();
CREATE TRIGGER audit_events_no_truncate BEFORE TRUNCATE ON audit_events
    FOR EACH STATEMENT EXECUTE FUNCTION audit_events_refuse_change();
