-- A resource can be in more than one patient's compartment (a Group listing A and B, an
-- Observation about A performed by B). It is sealed under one key scope (the first); the others
-- are `_compartment` rows of its reference index, so that every search decides on all of them in
-- SQL. Resources indexed before this migration that reference more than one patient are indexed
-- again at start-up (see 0004's search_reindex).
INSERT INTO search_reindex (resource_type, id)
SELECT resource_type, id FROM search_ref
 WHERE target_type = 'Patient' AND resource_type <> 'Patient'
 GROUP BY resource_type, id
HAVING count(DISTINCT target_id) > 1
    ON CONFLICT DO NOTHING;
