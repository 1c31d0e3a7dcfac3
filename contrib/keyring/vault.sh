#!/bin/sh
# secretgate.keyring_command for a keyring kept in HashiCorp Vault (KV v2).
#
#   secretgate.keyring_command = '/usr/local/lib/secretgate/vault.sh secret/secretgate/keyring'
#
# Set up once:
#   secretgate keyring new --stdout | vault kv put secret/secretgate/keyring keyring=-
# The server's environment needs VAULT_ADDR and a token that may read the
# path (e.g. VAULT_TOKEN from an agent, in the service unit's environment).
#
# Prints the keyring JSON on standard output and nothing else. Checked in
# tests/blackbox/kms.rs with a fake `vault` on PATH that records its
# arguments and answers as `vault kv get -field=keyring` does.
set -eu
if [ "$#" -ne 1 ]; then
    echo "usage: $0 KV_PATH" >&2
    exit 64
fi
exec vault kv get -field=keyring "$1"
