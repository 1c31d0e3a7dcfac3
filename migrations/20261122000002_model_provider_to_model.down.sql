-- Not reversible, on purpose: MODEL_PROVIDER is a forbidden key name
-- (secretgate.forbidden_keys), and renamed rows cannot be told apart from
-- MODEL rows written since. Reverting this migration changes no data.
SELECT 1;
