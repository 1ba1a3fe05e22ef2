-- Every text column compares byte by byte (COLLATE "C"), as SQLite's BINARY does, whatever
-- collation the database was created with. A database made by a default initdb or a managed
-- service is often en_US.UTF-8 (glibc) or ICU: there 'agt_01N' sorts after 'agt_01m8...' where
-- SQLite puts it before, so cursor pages (WHERE id < ? ORDER BY id DESC) and every ORDER BY on
-- text differed between the two backends. Changing only the collation rewrites no table; the
-- indexes on these columns are rebuilt. Columns added later must say COLLATE "C" themselves
-- (tests/test_store_collation.py checks).
DO $$
DECLARE
    col record;
BEGIN
    FOR col IN
        SELECT c.table_name, c.column_name, c.data_type
        FROM information_schema.columns AS c
        JOIN information_schema.tables AS t
          ON t.table_schema = c.table_schema AND t.table_name = c.table_name
        WHERE c.table_schema = current_schema()
          AND t.table_type = 'BASE TABLE'
          AND c.table_name <> 'schema_migrations'
          AND c.data_type IN ('text', 'character varying')
          AND c.collation_name IS DISTINCT FROM 'C'
        ORDER BY c.table_name, c.ordinal_position
    LOOP
        EXECUTE format('ALTER TABLE %I ALTER COLUMN %I TYPE %s COLLATE "C"',
                       col.table_name, col.column_name, col.data_type);
    END LOOP;
END
$$;
