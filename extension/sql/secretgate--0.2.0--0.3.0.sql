-- secretgate 0.2.0 -> 0.3.0 (ALTER EXTENSION secretgate UPDATE TO '0.3.0').
--
-- Released scripts are never edited: sql/released/secretgate--0.2.0.sql is the
-- full 0.2.0 script as shipped (at 9403712), and this file carries an
-- installed 0.2.0 to exactly what CREATE EXTENSION gives at 0.3.0; the
-- black-box `upgrade` test checks that from every released version.
\echo Use "ALTER EXTENSION secretgate UPDATE TO '0.3.0'" to load this file. \quit

-- The two per-row secret gates pin search_path themselves, around the only
-- SQL they run (a cold cache, a MODEL value: plans::connect_pinned), instead
-- of a declared SET that Postgres applies and undoes on every row written.
-- They stay SECURITY DEFINER.
ALTER FUNCTION secretgate.gate_secret_write() RESET search_path;
ALTER FUNCTION secretgate.gate_global_secret_write() RESET search_path;
