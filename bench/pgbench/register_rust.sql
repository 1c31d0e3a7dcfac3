-- Set a platform workspace back to provisioning, then register it (MODEL check,
-- BYOK rule, UPDATE online; at commit the identity and BYOK triggers re-check).
\set n random(1000001, 1001000)
BEGIN;
UPDATE public.workspaces SET status = 'provisioning' WHERE id = lpad(to_hex(:n::bigint), 32, '0')::uuid;
SELECT status, code FROM secretgate.register_workspace(lpad(to_hex(:n::bigint), 32, '0')::uuid);
END;
