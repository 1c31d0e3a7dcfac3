-- Privileges on the generated functions, after they exist.

-- Attaching decides what is guarded: the database owner's (or a superuser's) call.
REVOKE EXECUTE ON FUNCTION secretgate.attach_gates(regclass, regclass, regclass) FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION secretgate.detach_gates() FROM PUBLIC;

-- encrypt/decrypt work on any bytes handed to them, outside table privileges:
-- an oracle for whoever holds a copied ciphertext. Grant them deliberately.
REVOKE EXECUTE ON FUNCTION secretgate.encrypt(text, uuid, text) FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION secretgate.decrypt(bytea, integer, uuid, text) FROM PUBLIC;

-- The gates run as the extension's owner with a pinned search_path, so a
-- writer's privileges or search_path cannot change what they see; who the
-- caller is comes from the session (SET ROLE level), not from the owner.
ALTER FUNCTION secretgate.gate_secret_write() SECURITY DEFINER SET search_path = pg_catalog, pg_temp;
ALTER FUNCTION secretgate.gate_global_secret_write() SECURITY DEFINER SET search_path = pg_catalog, pg_temp;
ALTER FUNCTION secretgate.gate_platform_identity() SECURITY DEFINER SET search_path = pg_catalog, pg_temp;
ALTER FUNCTION secretgate.gate_model_removed() SECURITY DEFINER SET search_path = pg_catalog, pg_temp;
ALTER FUNCTION secretgate.gate_secrets_truncate() SECURITY DEFINER SET search_path = pg_catalog, pg_temp;
ALTER FUNCTION secretgate.gate_workspace_write() SECURITY DEFINER SET search_path = pg_catalog, pg_temp;
ALTER FUNCTION secretgate.gate_byok() SECURITY DEFINER SET search_path = pg_catalog, pg_temp;

-- Verdicts are written only through record_liveness, by roles granted it.
ALTER FUNCTION secretgate.record_liveness(uuid, text, integer) SECURITY DEFINER SET search_path = pg_catalog, pg_temp;
REVOKE EXECUTE ON FUNCTION secretgate.record_liveness(uuid, text, integer) FROM PUBLIC;

-- Maintenance rewrites every row: the DBA's (or the deploy pipeline's) call.
REVOKE EXECUTE ON FUNCTION secretgate.rename_secret_key(text, text) FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION secretgate.reencrypt(integer) FROM PUBLIC;
