-- The content of Binary resources, stored apart from their (small, sealed) JSON: streamed in and
-- out a chunk at a time, each chunk sealed on its own (see shared/src/store/binary.rs).
--
-- A content is staged before the version that names it is written: its chunks arrive over many
-- short transactions (a 1 GB upload holds no transaction open), and it becomes part of the record
-- only when the version's transaction names it in `resource_versions.content`. A content no
-- version names is an unfinished or failed upload: nobody can read it (no read path starts
-- anywhere but a version), and it is removed when it fails, or after a day by the retention run.

CREATE TABLE binary_contents (
    upload      UUID PRIMARY KEY,
    resource_id TEXT NOT NULL,
    -- The version the chunks were sealed for: the version that names it must be this one.
    version_id  BIGINT NOT NULL CHECK (version_id > 0),
    -- The patient's (or the type's) data key: erasing a patient removes their staged uploads too.
    dek_id      BIGINT NOT NULL REFERENCES data_keys (id) ON DELETE CASCADE,
    chunk_size  INTEGER NOT NULL CHECK (chunk_size > 0),
    -- Bytes of content (plaintext) and chunks; NULL until the last chunk is in.
    size        BIGINT CHECK (size >= 0),
    chunks      INTEGER CHECK (chunks >= 1),
    -- The content's size, SHA-256 and SHA-1, sealed like its chunks (the Binary stays as sent).
    facts       BYTEA,
    started     TIMESTAMPTZ NOT NULL
);
CREATE INDEX binary_contents_started ON binary_contents (started);
CREATE INDEX binary_contents_dek ON binary_contents (dek_id);

CREATE TABLE binary_chunks (
    upload UUID NOT NULL REFERENCES binary_contents (upload) ON DELETE CASCADE,
    chunk  INTEGER NOT NULL CHECK (chunk >= 0),
    sealed BYTEA NOT NULL,
    PRIMARY KEY (upload, chunk)
);
-- Ciphertext does not compress: store it out of line without trying.
ALTER TABLE binary_chunks ALTER COLUMN sealed SET STORAGE EXTERNAL;

ALTER TABLE resource_versions ADD COLUMN content UUID REFERENCES binary_contents (upload);
CREATE UNIQUE INDEX resource_versions_content ON resource_versions (content) WHERE content IS NOT NULL;

-- A version removed (a history purge, an expunge, an erasure) takes its content with it, whoever
-- removes it.
CREATE FUNCTION binary_content_remove() RETURNS trigger
    LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF OLD.content IS NOT NULL THEN
        DELETE FROM public.binary_contents WHERE upload OPERATOR(pg_catalog.=) OLD.content;
    END IF;
    RETURN NULL;
END
$$;
REVOKE ALL ON FUNCTION binary_content_remove() FROM PUBLIC;
CREATE TRIGGER binary_content_remove AFTER DELETE ON resource_versions
    FOR EACH ROW EXECUTE FUNCTION binary_content_remove();

-- The application stages and reads contents, and removes only what no version names (the FK
-- refuses the rest); chunks are never changed once written.
GRANT SELECT, INSERT, DELETE ON binary_contents TO carapace_app;
GRANT UPDATE (size, chunks, facts) ON binary_contents TO carapace_app;
GRANT SELECT, INSERT ON binary_chunks TO carapace_app;

-- Row-level security: a content is in reach when its data key's scope is (the same rule as
-- resource_versions, through carapace_reaches); a chunk when its content is.
ALTER TABLE binary_contents ENABLE ROW LEVEL SECURITY;
ALTER TABLE binary_contents FORCE ROW LEVEL SECURITY;
CREATE POLICY reach ON binary_contents
    USING (EXISTS (SELECT 1 FROM public.data_keys k
                    WHERE k.id OPERATOR(pg_catalog.=) dek_id
                      AND public.carapace_reaches(CASE WHEN k.scope LIKE 'Patient/%' THEN k.scope END)))
    WITH CHECK (EXISTS (SELECT 1 FROM public.data_keys k
                    WHERE k.id OPERATOR(pg_catalog.=) dek_id
                      AND public.carapace_reaches(CASE WHEN k.scope LIKE 'Patient/%' THEN k.scope END)));
ALTER TABLE binary_chunks ENABLE ROW LEVEL SECURITY;
ALTER TABLE binary_chunks FORCE ROW LEVEL SECURITY;
CREATE POLICY reach ON binary_chunks
    USING (upload IN (SELECT c.upload FROM public.binary_contents c))
    WITH CHECK (upload IN (SELECT c.upload FROM public.binary_contents c));
