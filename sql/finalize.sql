-- Privileges on the generated functions, after they exist.

-- Attaching decides what is guarded: the database owner's (or a superuser's) call.
REVOKE EXECUTE ON FUNCTION secretgate.attach_gates(regclass, regclass, regclass) FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION secretgate.detach_gates() FROM PUBLIC;

-- encrypt/decrypt work on any bytes handed to them, outside table privileges:
-- an oracle for whoever holds a copied ciphertext. Grant them deliberately.
REVOKE EXECUTE ON FUNCTION secretgate.encrypt(text, uuid, text) FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION secretgate.decrypt(bytea, integer, uuid, text) FROM PUBLIC;
