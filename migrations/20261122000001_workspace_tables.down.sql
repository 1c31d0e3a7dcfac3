-- Undo 20261122000001: remove the gates first, then the tables, then the extension.
SELECT secretgate.detach_gates();

DROP TABLE public.workspace_secrets;
DROP TABLE public.global_secrets;
DROP TABLE public.workspaces;

DROP EXTENSION IF EXISTS secretgate;
