-- One refused write (SG105: a forbidden key name) caught in the same statement,
-- so the session carries on: the refusal raises, writes its audit line (and,
-- from 0.4.0, queues its audit record), and the block's handler catches it.
DO $$
BEGIN
    PERFORM secretgate.set_global_secret('MODEL_PROVIDER', 'bench-not-a-secret');
EXCEPTION WHEN OTHERS THEN
    NULL;
END $$;
