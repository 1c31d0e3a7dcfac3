-- DOMAIN incident 5: MODEL_PROVIDER is the legacy, misleading name of MODEL.
-- Rename every row to MODEL, re-encrypting under the new name (the associated
-- data names the key). Where a workspace already has MODEL, that MODEL wins and
-- the leftover is removed. Idempotent: a second run renames nothing.
-- A legacy row that cannot be decrypted fails the migration with nothing
-- changed (SG001/SG002); one whose value is a provider slug such as 'minimax'
-- fails with SG107: write that workspace a real MODEL first (it then wins).
SELECT secretgate.rename_secret_key('MODEL_PROVIDER', 'MODEL');
