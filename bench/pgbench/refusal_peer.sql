-- The same block around an allowed call that raises a plain error of
-- Postgres' own (no audit line, no audit record): the cost of the block,
-- the function call and an error caught, without secretgate's audit.
DO $$
BEGIN
    PERFORM secretgate.set_global_secret(NULL, 'bench-not-a-secret');
EXCEPTION WHEN OTHERS THEN
    NULL;
END $$;
