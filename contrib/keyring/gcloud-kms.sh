#!/bin/sh
# secretgate.keyring_command for a keyring encrypted with Google Cloud KMS.
#
#   secretgate.keyring_command = '/usr/local/lib/secretgate/gcloud-kms.sh /etc/secretgate/keyring.enc projects/P/locations/L/keyRings/R/cryptoKeys/K'
#
# Set up once, where gcloud may encrypt with the key:
#   secretgate keyring new --stdout | gcloud kms encrypt --key projects/P/locations/L/keyRings/R/cryptoKeys/K \
#       --plaintext-file - --ciphertext-file /etc/secretgate/keyring.enc
# The server's host needs only roles/cloudkms.cryptoKeyDecrypter on that key.
#
# Prints the keyring JSON on standard output and nothing else. Checked in
# tests/blackbox/kms.rs with a fake `gcloud` on PATH that records its
# arguments and answers as `gcloud kms decrypt --plaintext-file -` does.
set -eu
if [ "$#" -ne 2 ]; then
    echo "usage: $0 CIPHERTEXT_FILE KEY_RESOURCE_NAME" >&2
    exit 64
fi
exec gcloud kms decrypt --key "$2" --ciphertext-file "$1" --plaintext-file -
