-- Audit retention (ARCHITECTURE.md, "Audit trail"): the oldest events are archived, then removed,
-- and the trail stays verifiable. An archive is a sealed NDJSON file of one segment of the chain
-- (every event from `first_seq` to `last_seq`, with its tag and link), recorded here with its
-- SHA-256 and its two anchors: the link before its first event (`start_link`, NULL at the chain's
-- start) and its last link (`end_link`). The live trail starts where the last archive ends
-- (`audit_chain_start`), so `audit verify` walks the table from there and each archive on its own.
--
-- Events are removed only by `carapace_audit_purge`, owned by the owner, in the transaction that
-- records their archive. Events of a patient under a legal hold are never removed: they and their
-- links stay, below the start, each verified by its tag; once the hold ends the next purge removes
-- them (they are in their archive already).

CREATE TABLE audit_archives (
    id          BIGSERIAL PRIMARY KEY,
    first_seq   BIGINT NOT NULL UNIQUE CHECK (first_seq >= 1),
    last_seq    BIGINT NOT NULL UNIQUE CHECK (last_seq >= first_seq),
    start_link  BYTEA CHECK ((start_link IS NULL) = (first_seq = 1)),
    end_link    BYTEA NOT NULL,
    -- Events in the file; of them, those kept in the table under a legal hold.
    events      BIGINT NOT NULL,
    held_kept   BIGINT NOT NULL,
    file_name   TEXT NOT NULL UNIQUE,
    sha256      BYTEA NOT NULL CHECK (octet_length(sha256) = 32),
    archived_at TIMESTAMPTZ NOT NULL,
    archived_by TEXT NOT NULL
);

-- Where the live chain starts: its first sequence number and the link before it (the last
-- archive's end link; zeros while nothing is archived).
CREATE TABLE audit_chain_start (
    one  BOOLEAN PRIMARY KEY DEFAULT true CHECK (one),
    seq  BIGINT NOT NULL,
    link BYTEA NOT NULL
);
INSERT INTO audit_chain_start (seq, link)
    VALUES (1, '\x0000000000000000000000000000000000000000000000000000000000000000');

-- Events younger than this many days are never removed, whatever the caller says its clock or
-- retention is: a compromised server cannot purge its recent tracks through the function. Only the
-- owner changes it (a deployment keeping audit events less than a year lowers it deliberately).
CREATE TABLE audit_purge_floor (
    one  BOOLEAN PRIMARY KEY DEFAULT true CHECK (one),
    days INTEGER NOT NULL CHECK (days >= 0)
);
INSERT INTO audit_purge_floor (days) VALUES (365);

GRANT SELECT ON audit_archives, audit_chain_start, audit_purge_floor TO carapace_app, carapace_console;

-- The refusal names its table (it serves the archive bookkeeping too).
CREATE OR REPLACE FUNCTION audit_events_refuse_change() RETURNS trigger
    LANGUAGE plpgsql SET search_path = pg_catalog AS $$
BEGIN
    RAISE EXCEPTION '% is append-only', TG_TABLE_NAME USING ERRCODE = 'insufficient_privilege';
END
$$;

-- Is this transaction a purge (`carapace_audit_purge` running in it, which set the marker and
-- recorded an archive in it)? The marker alone proves nothing (anyone may set a setting); the
-- archive row does: only the function inserts into `audit_archives`, and a row's xmin is the
-- transaction that inserted it.
CREATE FUNCTION carapace_audit_purging() RETURNS BOOLEAN
    LANGUAGE sql STABLE SET search_path = pg_catalog AS $$
    SELECT coalesce(current_setting('carapace.audit_purge', true) = 'on', false)
       AND EXISTS (SELECT 1 FROM public.audit_archives a WHERE a.xmin = pg_current_xact_id()::xid)
$$;

-- An event is deleted only in a purge, only when an archive covers its place in the chain, never
-- while its patient is under a legal hold, and never when younger than the purge floor.
CREATE FUNCTION audit_events_refuse_delete() RETURNS trigger
    LANGUAGE plpgsql SET search_path = pg_catalog AS $$
DECLARE
    at BIGINT;
BEGIN
    IF public.carapace_audit_purging()
       AND NOT (OLD.patient IS NOT NULL AND public.carapace_held(OLD.patient))
       -- Never a recent event, whatever link claims a place for it (the floor holds here too).
       AND OLD.recorded < now() - make_interval(days => (SELECT f.days FROM public.audit_purge_floor f)) THEN
        at := coalesce(OLD.seq, (SELECT l.seq FROM public.audit_links l WHERE l.event_id = OLD.id));
        IF at IS NOT NULL AND EXISTS (SELECT 1 FROM public.audit_archives a
                                       WHERE at BETWEEN a.first_seq AND a.last_seq) THEN
            RETURN OLD;
        END IF;
    END IF;
    RAISE EXCEPTION 'audit_events is append-only' USING ERRCODE = 'insufficient_privilege';
END
$$;

-- A link goes only with its event (in a purge, once the event is gone, inside an archive): a held
-- event keeps its link.
CREATE FUNCTION audit_links_refuse_delete() RETURNS trigger
    LANGUAGE plpgsql SET search_path = pg_catalog AS $$
BEGIN
    IF public.carapace_audit_purging()
       AND NOT EXISTS (SELECT 1 FROM public.audit_events e WHERE e.id = OLD.event_id)
       AND EXISTS (SELECT 1 FROM public.audit_archives a
                    WHERE OLD.seq BETWEEN a.first_seq AND a.last_seq) THEN
        RETURN OLD;
    END IF;
    RAISE EXCEPTION 'audit_links is append-only' USING ERRCODE = 'insufficient_privilege';
END
$$;

-- The start only moves forward, in a purge, to the end of the archive recorded in it.
CREATE FUNCTION audit_chain_start_advance() RETURNS trigger
    LANGUAGE plpgsql SET search_path = pg_catalog AS $$
BEGIN
    IF public.carapace_audit_purging()
       AND EXISTS (SELECT 1 FROM public.audit_archives a
                    WHERE a.xmin = pg_current_xact_id()::xid
                      AND a.first_seq = OLD.seq AND a.last_seq + 1 = NEW.seq
                      AND a.end_link = NEW.link) THEN
        RETURN NEW;
    END IF;
    RAISE EXCEPTION 'audit_chain_start moves only with an archive' USING ERRCODE = 'insufficient_privilege';
END
$$;

-- Links are appended above the head only (the chainer inserts head+1.. and then advances the
-- head): a link may not claim a place an archive freed, which would let an unarchived event pass
-- for an archived one. And no event is written already chained (writers leave seq and link to the
-- chainer since migration 0009).
CREATE FUNCTION audit_links_refuse_below_head() RETURNS trigger
    LANGUAGE plpgsql SET search_path = pg_catalog AS $$
BEGIN
    IF NEW.seq <= (SELECT h.seq FROM public.audit_chain_head h) THEN
        RAISE EXCEPTION 'audit links are appended above the chain head' USING ERRCODE = 'insufficient_privilege';
    END IF;
    RETURN NEW;
END
$$;
CREATE TRIGGER audit_links_above_head BEFORE INSERT ON audit_links
    FOR EACH ROW EXECUTE FUNCTION audit_links_refuse_below_head();
CREATE FUNCTION audit_events_refuse_prechained() RETURNS trigger
    LANGUAGE plpgsql SET search_path = pg_catalog AS $$
BEGIN
    RAISE EXCEPTION 'audit events are chained by the chainer, not written chained'
        USING ERRCODE = 'insufficient_privilege';
END
$$;
CREATE TRIGGER audit_events_not_prechained BEFORE INSERT ON audit_events
    FOR EACH ROW WHEN (NEW.seq IS NOT NULL OR NEW.link IS NOT NULL)
    EXECUTE FUNCTION audit_events_refuse_prechained();

DROP TRIGGER audit_events_no_update_or_delete ON audit_events;
CREATE TRIGGER audit_events_no_update BEFORE UPDATE ON audit_events
    FOR EACH ROW EXECUTE FUNCTION audit_events_refuse_change();
CREATE TRIGGER audit_events_no_delete BEFORE DELETE ON audit_events
    FOR EACH ROW EXECUTE FUNCTION audit_events_refuse_delete();
DROP TRIGGER audit_links_no_update_or_delete ON audit_links;
CREATE TRIGGER audit_links_no_update BEFORE UPDATE ON audit_links
    FOR EACH ROW EXECUTE FUNCTION audit_events_refuse_change();
CREATE TRIGGER audit_links_no_delete BEFORE DELETE ON audit_links
    FOR EACH ROW EXECUTE FUNCTION audit_links_refuse_delete();

CREATE TRIGGER audit_archives_no_update_or_delete BEFORE UPDATE OR DELETE ON audit_archives
    FOR EACH ROW EXECUTE FUNCTION audit_events_refuse_change();
CREATE TRIGGER audit_archives_no_truncate BEFORE TRUNCATE ON audit_archives
    FOR EACH STATEMENT EXECUTE FUNCTION audit_events_refuse_change();
CREATE TRIGGER audit_chain_start_no_delete BEFORE DELETE ON audit_chain_start
    FOR EACH ROW EXECUTE FUNCTION audit_events_refuse_change();
CREATE TRIGGER audit_chain_start_no_truncate BEFORE TRUNCATE ON audit_chain_start
    FOR EACH STATEMENT EXECUTE FUNCTION audit_events_refuse_change();
CREATE TRIGGER audit_chain_start_advance BEFORE UPDATE ON audit_chain_start
    FOR EACH ROW EXECUTE FUNCTION audit_chain_start_advance();

-- Row-level security is forced on audit_events, for its owner too: the purge (running as the
-- owner) may delete; nobody else has DELETE at all, and the trigger decides which rows.
CREATE POLICY purge ON audit_events FOR DELETE TO CURRENT_USER USING (true);

-- Archive events `first_seq`..`last_seq` (the segment the caller has written to `file_name`, whose
-- SHA-256 it gives): record the archive, remove its events but those under a legal hold (and any
-- kept earlier whose hold has ended), and start the live chain after it — in the caller's
-- transaction, which commits it with its AuditEvent. Checked here, whoever calls: the segment
-- starts where the live chain does (`start_link` its link) and ends at a chained event whose link
-- is `end_link`; it holds no gap; every event in it was recorded before `before`, and `before` is
-- older than the purge floor by the database's own clock. Returns the archive's id, the events
-- removed (of the segment and of earlier ones released from a hold) and those kept under a hold.
CREATE FUNCTION carapace_audit_purge(
    p_first_seq BIGINT, p_last_seq BIGINT, p_start_link BYTEA, p_end_link BYTEA,
    p_before TIMESTAMPTZ, p_file_name TEXT, p_sha256 BYTEA, p_at TIMESTAMPTZ, p_by TEXT)
    RETURNS TABLE (archive_id BIGINT, removed BIGINT, released BIGINT, kept BIGINT)
    -- pg_temp last: a caller's temporary table never stands in for one of these.
    LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, public, pg_temp AS $$
DECLARE
    s_seq BIGINT;
    s_link BYTEA;
    h_seq BIGINT;
    floor_days INTEGER;
    n_events BIGINT;
    n_young BIGINT;
    n_removed BIGINT;
    n_released BIGINT;
    n_held BIGINT;
    a_id BIGINT;
    prev_reach TEXT;
BEGIN
    SELECT s.seq, s.link INTO s_seq, s_link FROM audit_chain_start s FOR UPDATE;
    SELECT h.seq INTO h_seq FROM audit_chain_head h;
    SELECT f.days INTO floor_days FROM audit_purge_floor f;
    IF p_first_seq IS DISTINCT FROM s_seq
       OR p_start_link IS DISTINCT FROM (CASE WHEN s_seq = 1 THEN NULL ELSE s_link END) THEN
        RAISE EXCEPTION 'the segment does not start where the live audit chain starts'
            USING ERRCODE = 'CH010';
    END IF;
    IF p_last_seq IS NULL OR p_last_seq < p_first_seq OR p_last_seq > h_seq THEN
        RAISE EXCEPTION 'the segment does not end inside the audit chain' USING ERRCODE = 'CH010';
    END IF;
    IF p_file_name IS DISTINCT FROM format('audit-%s-%s.ndjson.sealed', p_first_seq, p_last_seq)
       OR octet_length(p_sha256) IS DISTINCT FROM 32 THEN
        RAISE EXCEPTION 'not an archive file name and digest' USING ERRCODE = '22023';
    END IF;
    IF p_before IS NULL OR p_before > now() - make_interval(days => floor_days) THEN
        RAISE EXCEPTION 'audit events younger than % days are never removed', floor_days
            USING ERRCODE = 'CH011';
    END IF;
    -- Holds read under a share lock: one placed meanwhile waits for this purge, or is seen by it.
    LOCK TABLE legal_holds IN SHARE MODE;
    prev_reach := current_setting('carapace.reach', true);
    PERFORM set_config('carapace.reach', 'all', true);

    IF to_regclass('pg_temp.audit_purge_segment') IS NOT NULL THEN
        DROP TABLE pg_temp.audit_purge_segment;
    END IF;
    CREATE TEMPORARY TABLE audit_purge_segment ON COMMIT DROP AS
        SELECT c.seq, c.event_id, c.link
          FROM (SELECT e.seq, e.id AS event_id, e.link FROM audit_events e WHERE e.seq IS NOT NULL
                UNION ALL
                SELECT l.seq, l.event_id, l.link FROM audit_links l) c
         WHERE c.seq BETWEEN p_first_seq AND p_last_seq;
    SELECT count(*), count(*) FILTER (WHERE e.recorded IS NULL OR e.recorded >= p_before),
           count(*) FILTER (WHERE e.patient IS NOT NULL AND carapace_held(e.patient))
      INTO n_events, n_young, n_held
      FROM pg_temp.audit_purge_segment g LEFT JOIN audit_events e ON e.id = g.event_id;
    IF n_events <> p_last_seq - p_first_seq + 1 THEN
        RAISE EXCEPTION 'the segment has gaps: run audit verify' USING ERRCODE = 'CH010';
    END IF;
    IF n_young > 0 THEN
        RAISE EXCEPTION 'the segment holds events recorded after its cut-off' USING ERRCODE = 'CH011';
    END IF;
    IF NOT EXISTS (SELECT 1 FROM pg_temp.audit_purge_segment g
                    WHERE g.seq = p_last_seq AND g.link = p_end_link) THEN
        RAISE EXCEPTION 'the segment does not end at its end link' USING ERRCODE = 'CH010';
    END IF;

    INSERT INTO audit_archives (first_seq, last_seq, start_link, end_link, events, held_kept,
                                file_name, sha256, archived_at, archived_by)
        VALUES (p_first_seq, p_last_seq, p_start_link, p_end_link, n_events, n_held,
                p_file_name, p_sha256, p_at, p_by)
        RETURNING id INTO a_id;
    PERFORM set_config('carapace.audit_purge', 'on', true);
    -- The segment's events but the held; then those kept below the start whose hold has ended.
    WITH gone AS (
        DELETE FROM audit_events e USING pg_temp.audit_purge_segment g
         WHERE e.id = g.event_id
           AND NOT (e.patient IS NOT NULL AND carapace_held(e.patient))
        RETURNING 1)
    SELECT count(*) INTO n_removed FROM gone;
    WITH gone AS (
        DELETE FROM audit_events e
         WHERE (e.seq < p_first_seq
                OR e.id IN (SELECT l.event_id FROM audit_links l WHERE l.seq < p_first_seq))
           AND NOT (e.patient IS NOT NULL AND carapace_held(e.patient))
        RETURNING 1)
    SELECT count(*) INTO n_released FROM gone;
    DELETE FROM audit_links l
     WHERE l.seq <= p_last_seq
       AND NOT EXISTS (SELECT 1 FROM audit_events e WHERE e.id = l.event_id);
    IF n_events - n_removed <> n_held THEN
        RAISE EXCEPTION 'a legal hold changed during the purge: run it again' USING ERRCODE = '40001';
    END IF;
    UPDATE audit_chain_start SET seq = p_last_seq + 1, link = p_end_link;
    PERFORM set_config('carapace.audit_purge', '', true);
    PERFORM set_config('carapace.reach', coalesce(prev_reach, ''), true);
    RETURN QUERY SELECT a_id, n_removed, n_released, n_held;
END
$$;
REVOKE ALL ON FUNCTION carapace_audit_purge(BIGINT, BIGINT, BYTEA, BYTEA, TIMESTAMPTZ, TEXT, BYTEA,
                                            TIMESTAMPTZ, TEXT) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION carapace_audit_purge(BIGINT, BIGINT, BYTEA, BYTEA, TIMESTAMPTZ, TEXT,
                                               BYTEA, TIMESTAMPTZ, TEXT)
    TO carapace_app, carapace_console;
