-- R4 Subscriptions (rest-hook) that deliver: who owns each Subscription, the resources written
-- that an active one may be about, and the durable outbox of notifications
-- (store/subscription.rs, store/notify.rs; ARCHITECTURE.md "Subscriptions").
--
-- Nothing here is PHI: ids, types, version numbers, the owner's principal and scopes, counts and
-- fixed-word errors. The Subscription itself (criteria, endpoint, headers) stays sealed in its
-- resource version like every resource.

-- The identity a Subscription's criteria are evaluated as: whoever last wrote it (never a field
-- the client sent). `active` mirrors its status (requested, active or error: true; off: false).
CREATE TABLE subscription_owners (
    id            text PRIMARY KEY,
    criteria_type text NOT NULL,
    active        boolean NOT NULL,
    principal     text NOT NULL,
    client_id     text,
    role          text NOT NULL,
    scopes        text[] NOT NULL,
    patient       text,
    -- Deliveries failed in a row (reset by a success); past a threshold the status is `error`.
    failures      integer NOT NULL DEFAULT 0,
    updated_at    timestamptz NOT NULL
);
CREATE INDEX subscription_owners_type ON subscription_owners (criteria_type) WHERE active;

-- Resources written while an active Subscription named their type, queued in the writing
-- transaction by the trigger below, so every write path (REST, Bundles, the console) queues and
-- a write that rolls back queues nothing. The server's fan-out matches them (as each owner) and
-- turns them into notifications.
CREATE TABLE subscription_writes (
    seq           bigserial PRIMARY KEY,
    resource_type text NOT NULL,
    id            text NOT NULL,
    version_id    bigint NOT NULL
);

-- The outbox: one row per notification still to deliver. A node claims rows with
-- FOR UPDATE SKIP LOCKED and leases them (`leased_until`) while it sends, so several nodes
-- deliver each notification once; a node that dies mid-send leaves its lease to expire.
CREATE TABLE subscription_notifications (
    seq             bigserial PRIMARY KEY,
    subscription_id text NOT NULL REFERENCES subscription_owners (id) ON DELETE CASCADE,
    resource_type   text NOT NULL,
    resource_id     text NOT NULL,
    version_id      bigint NOT NULL,
    -- `Patient/<id>` whose record the resource is in (for the delivery's AuditEvent).
    patient         text,
    attempts        integer NOT NULL DEFAULT 0,
    due             timestamptz NOT NULL,
    leased_until    timestamptz,
    created_at      timestamptz NOT NULL
);
CREATE INDEX subscription_notifications_due ON subscription_notifications (due);

CREATE FUNCTION carapace_subscription_write() RETURNS trigger
    LANGUAGE plpgsql SET search_path = pg_catalog, public, pg_temp AS $$
BEGIN
    IF NOT NEW.deleted AND EXISTS (
        SELECT 1 FROM subscription_owners WHERE criteria_type = NEW.resource_type AND active
    ) THEN
        INSERT INTO subscription_writes (resource_type, id, version_id)
        VALUES (NEW.resource_type, NEW.id, NEW.version_id);
    END IF;
    RETURN NULL;
END
$$;

-- R4 notifies on creates and updates that match; a deletion matches no criteria.
CREATE TRIGGER resources_subscription_write AFTER INSERT OR UPDATE OF version_id ON resources
    FOR EACH ROW EXECUTE FUNCTION carapace_subscription_write();

GRANT SELECT, INSERT, UPDATE, DELETE
    ON subscription_owners, subscription_writes, subscription_notifications TO carapace_app;
GRANT USAGE, SELECT ON SEQUENCE subscription_writes_seq_seq, subscription_notifications_seq_seq
    TO carapace_app;
