-- secretgate 0.1.0 -> 0.2.0 (ALTER EXTENSION secretgate UPDATE TO '0.2.0').
--
-- Released scripts are never edited: sql/released/secretgate--0.1.0.sql is the
-- full 0.1.0 script as shipped, and this file carries an installed 0.1.0 to
-- exactly what CREATE EXTENSION gives at 0.2.0. The black-box `upgrade` test
-- checks that (functions, triggers, tables, grants, configuration tables) and
-- that every 0.1.0 ciphertext still decrypts.
\echo Use "ALTER EXTENSION secretgate UPDATE TO '0.2.0'" to load this file. \quit
