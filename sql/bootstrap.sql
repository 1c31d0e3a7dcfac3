-- secretgate's own objects, created before the generated functions.
-- The schema comes from the control file (schema = secretgate, not relocatable).

-- Services in every language call these functions; table privileges decide
-- what each role may actually read or write.
GRANT USAGE ON SCHEMA secretgate TO PUBLIC;

-- The platform tables secretgate guards (CONTRACT §2): one set per database.
CREATE TABLE secretgate.attached_tables (
    singleton      boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    workspaces     regclass NOT NULL,
    secrets        regclass NOT NULL,
    global_secrets regclass NOT NULL,
    attached_at    timestamptz NOT NULL DEFAULT now()
);
COMMENT ON TABLE secretgate.attached_tables IS 'The tables secretgate.attach_gates() validated and guards';
GRANT SELECT ON secretgate.attached_tables TO PUBLIC;
-- Kept by pg_dump, so a restored database is still attached.
SELECT pg_catalog.pg_extension_config_dump('secretgate.attached_tables', '');
