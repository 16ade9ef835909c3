-- Failed events (outcome other than 0) are few; the console's dashboard lists the latest failed
-- sign-ins and the audit screen filters on failures. A partial index keeps both to an index scan
-- over a large trail, and costs nothing when an event succeeds (most of them).
CREATE INDEX audit_events_failures ON audit_events (subtype, id) WHERE outcome <> '0';
