#!/bin/sh
# secretgate.keyring_command for a keyring encrypted with age
# (https://age-encryption.org; Debian: apt-get install age).
#
#   secretgate.keyring_command = '/usr/local/lib/secretgate/age.sh /etc/secretgate/identity.txt /etc/secretgate/keyring.age'
#
# Set up once (the identity is the only secret on the host: keep it 0600 and
# owned by the server's user; the .age file may be world-readable):
#   age-keygen -o /etc/secretgate/identity.txt            # as postgres, umask 077
#   secretgate keyring new --stdout \
#     | age -r "$(age-keygen -y /etc/secretgate/identity.txt)" -o /etc/secretgate/keyring.age
#
# Prints the keyring JSON on standard output and nothing else; the server
# keeps it in memory only. Exercised by tests/blackbox/kms.rs.
set -eu
if [ "$#" -ne 2 ]; then
    echo "usage: $0 IDENTITY_FILE KEYRING_AGE_FILE" >&2
    exit 64
fi
exec age --decrypt --identity "$1" "$2"
