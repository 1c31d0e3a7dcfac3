#!/bin/sh
# secretgate.keyring_command for a keyring encrypted with AWS KMS.
#
#   secretgate.keyring_command = '/usr/local/lib/secretgate/aws-kms.sh /etc/secretgate/keyring.kms'
#
# Set up once, where the AWS CLI has kms:Encrypt on the key:
#   secretgate keyring new --stdout > /dev/shm/keyring.json
#   aws kms encrypt --key-id alias/secretgate --plaintext fileb:///dev/shm/keyring.json \
#       --query CiphertextBlob --output text | base64 -d > /etc/secretgate/keyring.kms
#   shred -u /dev/shm/keyring.json
# The server's host then needs only kms:Decrypt on that key (an instance
# role, or AWS_PROFILE / AWS_REGION in the server's environment).
#
# Prints the keyring JSON on standard output and nothing else. Checked in
# tests/blackbox/kms.rs with a fake `aws` on PATH that records its
# arguments and answers as `aws kms decrypt` does (base64 Plaintext).
set -eu
if [ "$#" -lt 1 ]; then
    echo "usage: $0 CIPHERTEXT_BLOB_FILE [KEY_ID]" >&2
    exit 64
fi
blob=$1
key_id=${2:-}
set -- aws kms decrypt --ciphertext-blob "fileb://$blob" --query Plaintext --output text
if [ -n "$key_id" ]; then
    set -- "$@" --key-id "$key_id"
fi
# Captured first, so a failing `aws` fails this command (no pipefail in sh).
plaintext=$("$@")
printf '%s\n' "$plaintext" | base64 -d
