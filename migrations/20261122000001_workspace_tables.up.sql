-- The platform's own tables that secretgate protects (CONTRACT §2), then the
-- extension itself, attached to them so every gate is in place from the start.

-- One row per agent workspace.
CREATE TABLE public.workspaces (
    id         uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    kind       text NOT NULL CHECK (kind IN ('platform', 'workspace', 'external')),
    status     text NOT NULL DEFAULT 'provisioning'
               CHECK (status IN ('provisioning', 'online', 'offline', 'failed', 'removed')),
    runtime    text,
    model      text,
    created_at timestamptz DEFAULT now()
);

-- Per-workspace secrets: AES-256-GCM ciphertext under keyring version encryption_version.
CREATE TABLE public.workspace_secrets (
    workspace_id       uuid NOT NULL REFERENCES public.workspaces (id) ON DELETE CASCADE,
    key                text NOT NULL,
    encrypted_value    bytea NOT NULL,
    encryption_version int NOT NULL,
    updated_at         timestamptz DEFAULT now(),
    PRIMARY KEY (workspace_id, key)
);

-- Org-wide secrets, used by every workspace that has no value of its own.
CREATE TABLE public.global_secrets (
    key                text PRIMARY KEY,
    encrypted_value    bytea NOT NULL,
    encryption_version int NOT NULL,
    updated_at         timestamptz DEFAULT now()
);

CREATE EXTENSION IF NOT EXISTS secretgate;

-- Record the three tables and create the gates' triggers on them.
SELECT secretgate.attach_gates('public.workspaces', 'public.workspace_secrets', 'public.global_secrets');
