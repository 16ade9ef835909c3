-- Readiness (`Store::health`) compares the schema's applied version with the one the binary was
-- built with: the server's and the console's roles may read sqlx's migration ledger (versions,
-- descriptions, checksums; nothing about any patient). They cannot change it.
GRANT SELECT ON _sqlx_migrations TO carapace_app, carapace_console;
