-- A content, once finished, never changes: its size, chunk count and sealed digests are the only
-- record of what it was, and its chunks are all there is of it. The application role may write a
-- content only while it is being staged (an attacker holding that role could otherwise destroy a
-- finished document by rewriting its row, or break an upload by adding a chunk to it).

CREATE FUNCTION binary_content_finished() RETURNS trigger
    LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF OLD.size IS NOT NULL THEN
        RAISE EXCEPTION 'a finished Binary content is never changed' USING ERRCODE = 'CH005';
    END IF;
    RETURN NEW;
END
$$;
CREATE TRIGGER binary_content_finished BEFORE UPDATE ON binary_contents
    FOR EACH ROW EXECUTE FUNCTION binary_content_finished();

CREATE FUNCTION binary_chunk_staging() RETURNS trigger
    LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF EXISTS (SELECT 1 FROM public.binary_contents c
                WHERE c.upload OPERATOR(pg_catalog.=) NEW.upload AND c.size IS NOT NULL) THEN
        RAISE EXCEPTION 'chunks are added to a Binary content only while it is staged'
            USING ERRCODE = 'CH005';
    END IF;
    RETURN NEW;
END
$$;
CREATE TRIGGER binary_chunk_staging BEFORE INSERT ON binary_chunks
    FOR EACH ROW EXECUTE FUNCTION binary_chunk_staging();
