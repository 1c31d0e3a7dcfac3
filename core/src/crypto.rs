//! The ciphertext layout and the associated data that binds it to its row.

use crate::keyring::Entry;
use crate::{Error, Keyring};
use aes_gcm::aead::{Aead, AeadCore, OsRng, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use std::fmt;
use uuid::Uuid;

pub const NONCE_LEN: usize = 12;
pub const TAG_LEN: usize = 16;

/// Where a secret lives: one workspace, or the org-wide global scope.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Scope {
    Workspace(Uuid),
    Global,
}

impl Scope {
    /// `None` is the global scope, as SQL's NULL workspace_id.
    pub fn from_workspace(id: Option<Uuid>) -> Scope {
        id.map_or(Scope::Global, Scope::Workspace)
    }

    pub fn workspace_id(self) -> Option<Uuid> {
        match self {
            Scope::Workspace(id) => Some(id),
            Scope::Global => None,
        }
    }
}

impl fmt::Display for Scope {
    /// The workspace id in canonical lowercase text, or `global`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Scope::Workspace(id) => write!(f, "{}", id.hyphenated()),
            Scope::Global => f.write_str("global"),
        }
    }
}

/// `secretgate:v1:<scope>:<key>`: a ciphertext moved to another row fails.
pub fn associated_data(scope: Scope, key_name: &str) -> Vec<u8> {
    with_associated_data(scope, key_name, <[u8]>::to_vec)
}

/// Associated data up to this length is built on the stack.
const AAD_ON_STACK: usize = 192;

/// Calls `f` with [`associated_data`], built on the stack when it fits: every
/// encryption and decryption builds it, and `format!` was a sixth of a decrypt.
fn with_associated_data<R>(scope: Scope, key_name: &str, f: impl FnOnce(&[u8]) -> R) -> R {
    let mut uuid_text = Uuid::encode_buffer();
    let scope_text: &[u8] = match scope {
        Scope::Workspace(id) => id.hyphenated().encode_lower(&mut uuid_text).as_bytes(),
        Scope::Global => b"global",
    };
    let parts: [&[u8]; 4] = [b"secretgate:v1:", scope_text, b":", key_name.as_bytes()];
    let len: usize = parts.iter().map(|p| p.len()).sum();
    if len > AAD_ON_STACK {
        return f(&parts.concat());
    }
    let mut buf = [0u8; AAD_ON_STACK];
    let mut at = 0;
    for part in parts {
        buf[at..at + part.len()].copy_from_slice(part);
        at += part.len();
    }
    f(&buf[..len])
}

impl Keyring {
    /// Encrypts under the current key version with a fresh random nonce.
    /// Returns the version used and `nonce || ciphertext || tag`.
    pub fn encrypt(&self, plaintext: &[u8], scope: Scope, key_name: &str) -> Result<(i32, Vec<u8>), Error> {
        let nonce = Aes256Gcm::generate_nonce(&mut OsRng);
        let version = self.current_version();
        let blob = self.encrypt_with_nonce(version, nonce.into(), plaintext, scope, key_name)?;
        Ok((version, blob))
    }

    /// Encrypts with a caller-chosen nonce. Only for known-answer vectors:
    /// reusing a nonce under one key breaks AES-GCM. A bound version binds
    /// the ciphertext to its row; an unbound one does not; a plaintext
    /// version never encrypts (secretgate never writes plaintext).
    pub fn encrypt_with_nonce(
        &self,
        version: i32,
        nonce: [u8; NONCE_LEN],
        plaintext: &[u8],
        scope: Scope,
        key_name: &str,
    ) -> Result<Vec<u8>, Error> {
        let sealed = match self.entry(version)? {
            Entry::Bound(cipher) => with_associated_data(scope, key_name, |aad| {
                cipher.encrypt(Nonce::from_slice(&nonce), Payload { msg: plaintext, aad })
            }),
            Entry::Unbound(cipher) => cipher.encrypt(Nonce::from_slice(&nonce), plaintext),
            Entry::Plaintext => {
                return Err(Error::keyring(format!(
                    "key version {version} is plaintext: secretgate never writes under it"
                )))
            }
        }
        // aes-gcm fails only past 64 GiB of plaintext, far beyond any text value.
        .map_err(|_| Error::DecryptFailed { reason: "the value is too long to encrypt" })?;
        let mut blob = Vec::with_capacity(NONCE_LEN + sealed.len());
        blob.extend_from_slice(&nonce);
        blob.extend_from_slice(&sealed);
        Ok(blob)
    }

    /// Opens `nonce || ciphertext || tag` written under `version` for this
    /// row, returning the plaintext bytes. A plaintext version's value is
    /// its stored bytes.
    pub fn decrypt_bytes(&self, blob: &[u8], version: i32, scope: Scope, key_name: &str) -> Result<Vec<u8>, Error> {
        let entry = self.entry(version)?;
        let cipher = match entry {
            Entry::Plaintext => return Ok(blob.to_vec()),
            Entry::Bound(cipher) | Entry::Unbound(cipher) => cipher,
        };
        if blob.len() < NONCE_LEN + TAG_LEN {
            return Err(Error::DecryptFailed { reason: "the ciphertext is truncated (shorter than nonce and tag)" });
        }
        let (nonce, sealed) = blob.split_at(NONCE_LEN);
        match entry {
            Entry::Bound(_) => with_associated_data(scope, key_name, |aad| {
                cipher.decrypt(Nonce::from_slice(nonce), Payload { msg: sealed, aad })
            })
            .map_err(|_| Error::DecryptFailed {
                reason: "the ciphertext does not authenticate: corrupt, or bound to another workspace or key name",
            }),
            _ => cipher.decrypt(Nonce::from_slice(nonce), sealed).map_err(|_| Error::DecryptFailed {
                reason: "the ciphertext does not authenticate: corrupt or truncated",
            }),
        }
    }

    /// Like [`Keyring::decrypt_bytes`], for text values.
    pub fn decrypt(&self, blob: &[u8], version: i32, scope: Scope, key_name: &str) -> Result<String, Error> {
        let bytes = self.decrypt_bytes(blob, version, scope, key_name)?;
        String::from_utf8(bytes).map_err(|_| Error::DecryptFailed { reason: "the plaintext is not valid UTF-8" })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Code;
    use aes_gcm::aead::Aead;
    use proptest::prelude::*;

    fn keyring() -> Keyring {
        Keyring::parse(
            br#"{"current_version": 2, "keys": {
                "1": "AQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQE=",
                "2": "AgICAgICAgICAgICAgICAgICAgICAgICAgICAgICAgI="}}"#,
        )
        .expect("test keyring parses")
    }

    const WS: Uuid = Uuid::from_u128(0x0123_4567_89ab_cdef_0123_4567_89ab_cdef);

    #[test]
    fn associated_data_uses_lowercase_canonical_uuid_and_global() {
        let id = Uuid::parse_str("0123456789ABCDEF0123456789ABCDEF").unwrap();
        assert_eq!(
            associated_data(Scope::Workspace(id), "MODEL"),
            b"secretgate:v1:01234567-89ab-cdef-0123-456789abcdef:MODEL"
        );
        assert_eq!(associated_data(Scope::Global, "OPENAI_API_KEY"), b"secretgate:v1:global:OPENAI_API_KEY");
    }

    #[test]
    fn round_trip_uses_current_version_and_layout() {
        let k = keyring();
        let (version, blob) = k.encrypt(b"sk-test", Scope::Workspace(WS), "OPENAI_API_KEY").unwrap();
        assert_eq!(version, 2);
        assert_eq!(blob.len(), NONCE_LEN + 7 + TAG_LEN);
        assert_eq!(k.decrypt(&blob, 2, Scope::Workspace(WS), "OPENAI_API_KEY").unwrap(), "sk-test");
        // The same plaintext twice gets two nonces.
        let (_, again) = k.encrypt(b"sk-test", Scope::Workspace(WS), "OPENAI_API_KEY").unwrap();
        assert_ne!(blob[..NONCE_LEN], again[..NONCE_LEN]);
    }

    #[test]
    fn older_versions_stay_readable() {
        let k = keyring();
        let blob = k.encrypt_with_nonce(1, [7; NONCE_LEN], b"v1 value", Scope::Global, "MODEL").unwrap();
        assert_eq!(k.decrypt(&blob, 1, Scope::Global, "MODEL").unwrap(), "v1 value");
        assert_eq!(k.decrypt(&blob, 2, Scope::Global, "MODEL").unwrap_err().code(), Code::DecryptFailed);
    }

    const K: [u8; 32] = [5; 32];

    fn mixed_keyring() -> Keyring {
        use base64::Engine;
        let k = base64::engine::general_purpose::STANDARD.encode(K);
        Keyring::parse(
            format!(
                r#"{{"current_version": 1, "keys": {{"0": {{"format": "plaintext"}},
                "1": {{"key": "{k}", "format": "unbound"}}, "2": "AgICAgICAgICAgICAgICAgICAgICAgICAgICAgICAgI="}}}}"#
            )
            .as_bytes(),
        )
        .expect("mixed keyring parses")
    }

    #[test]
    fn unbound_rows_are_plain_aes_gcm_without_associated_data() {
        use aes_gcm::KeyInit;
        let k = mixed_keyring();
        // What an application writes on its own: nonce || ct || tag, no AAD.
        let app = Aes256Gcm::new_from_slice(&K).unwrap();
        let nonce = [9u8; NONCE_LEN];
        let mut blob = nonce.to_vec();
        blob.extend(app.encrypt(Nonce::from_slice(&nonce), b"sk-app".as_slice()).unwrap());
        // Readable under any row: nothing binds it.
        assert_eq!(k.decrypt(&blob, 1, Scope::Workspace(WS), "OPENAI_API_KEY").unwrap(), "sk-app");
        assert_eq!(k.decrypt(&blob, 1, Scope::Global, "OTHER").unwrap(), "sk-app");
        // secretgate's writes under the unbound current version are what the application reads.
        let (v, ours) = k.encrypt(b"sk-ours", Scope::Workspace(WS), "OPENAI_API_KEY").unwrap();
        assert_eq!(v, 1);
        let (n, sealed) = ours.split_at(NONCE_LEN);
        assert_eq!(app.decrypt(Nonce::from_slice(n), sealed).unwrap(), b"sk-ours");
        // Corrupt or truncated still fails.
        let mut bad = blob.clone();
        bad[15] ^= 1;
        assert_eq!(k.decrypt(&bad, 1, Scope::Global, "K").unwrap_err().code(), Code::DecryptFailed);
        assert_eq!(k.decrypt(&blob[..20], 1, Scope::Global, "K").unwrap_err().code(), Code::DecryptFailed);
        // A bound ciphertext is not an unbound one.
        let bound = k.encrypt_with_nonce(2, nonce, b"x", Scope::Global, "K").unwrap();
        assert_eq!(k.decrypt(&bound, 2, Scope::Global, "K").unwrap(), "x");
        assert_eq!(k.decrypt(&bound, 1, Scope::Global, "K").unwrap_err().code(), Code::DecryptFailed);
    }

    #[test]
    fn plaintext_rows_read_as_stored_and_are_never_written() {
        let k = mixed_keyring();
        assert_eq!(k.decrypt(b"claude-sonnet-4", 0, Scope::Workspace(WS), "MODEL").unwrap(), "claude-sonnet-4");
        assert_eq!(k.decrypt(b"", 0, Scope::Global, "K").unwrap(), "");
        assert_eq!(k.decrypt(&[0xff], 0, Scope::Global, "K").unwrap_err().code(), Code::DecryptFailed);
        let err = k.encrypt_with_nonce(0, [0; NONCE_LEN], b"x", Scope::Global, "K").unwrap_err();
        assert_eq!(err.code(), Code::KeyringUnavailable);
    }

    #[test]
    fn unknown_version_is_its_own_error() {
        let k = keyring();
        let (_, blob) = k.encrypt(b"x", Scope::Global, "MODEL").unwrap();
        assert_eq!(k.decrypt(&blob, 3, Scope::Global, "MODEL"), Err(Error::UnknownKeyVersion { version: 3 }));
        assert_eq!(k.decrypt(&blob, -1, Scope::Global, "MODEL").unwrap_err().code(), Code::UnknownKeyVersion);
    }

    #[test]
    fn empty_plaintext_round_trips() {
        let k = keyring();
        let (v, blob) = k.encrypt(b"", Scope::Global, "MODEL").unwrap();
        assert_eq!(blob.len(), NONCE_LEN + TAG_LEN);
        assert_eq!(k.decrypt(&blob, v, Scope::Global, "MODEL").unwrap(), "");
    }

    #[test]
    fn non_utf8_plaintext_is_a_decrypt_error() {
        let k = keyring();
        let (v, blob) = k.encrypt(&[0xff, 0xfe], Scope::Global, "MODEL").unwrap();
        assert_eq!(k.decrypt_bytes(&blob, v, Scope::Global, "MODEL").unwrap(), vec![0xff, 0xfe]);
        assert_eq!(k.decrypt(&blob, v, Scope::Global, "MODEL").unwrap_err().code(), Code::DecryptFailed);
    }

    #[test]
    fn errors_never_show_the_plaintext_or_ciphertext() {
        let k = keyring();
        let (v, mut blob) = k.encrypt(b"very-secret-plaintext", Scope::Global, "MODEL").unwrap();
        blob[20] ^= 1;
        let err = k.decrypt(&blob, v, Scope::Global, "MODEL").unwrap_err();
        let shown = format!("{err} {err:?}");
        assert!(!shown.contains("very-secret"), "{shown}");
        assert!(!shown.contains(&format!("{:?}", &blob[..4])));
    }

    proptest! {
        #[test]
        fn associated_data_is_the_documented_text_at_any_length(
            id in any::<Option<u128>>(),
            key_name in "\\PC{0,300}",
        ) {
            let scope = Scope::from_workspace(id.map(Uuid::from_u128));
            let expected = format!("secretgate:v1:{scope}:{key_name}");
            prop_assert_eq!(associated_data(scope, &key_name), expected.into_bytes());
        }

        #[test]
        fn any_flipped_bit_fails_authentication(
            plaintext in proptest::collection::vec(any::<u8>(), 0..200),
            bit in any::<prop::sample::Index>(),
        ) {
            let k = keyring();
            let (v, mut blob) = k.encrypt(&plaintext, Scope::Workspace(WS), "MODEL").unwrap();
            let i = bit.index(blob.len() * 8);
            blob[i / 8] ^= 1 << (i % 8);
            prop_assert_eq!(k.decrypt_bytes(&blob, v, Scope::Workspace(WS), "MODEL").unwrap_err().code(), Code::DecryptFailed);
        }

        #[test]
        fn any_truncation_fails_authentication(
            plaintext in proptest::collection::vec(any::<u8>(), 0..200),
            cut in any::<prop::sample::Index>(),
        ) {
            let k = keyring();
            let (v, blob) = k.encrypt(&plaintext, Scope::Workspace(WS), "MODEL").unwrap();
            let keep = cut.index(blob.len());
            prop_assert_eq!(k.decrypt_bytes(&blob[..keep], v, Scope::Workspace(WS), "MODEL").unwrap_err().code(), Code::DecryptFailed);
        }

        #[test]
        fn another_scope_or_key_name_fails_authentication(
            plaintext in "\\PC{0,64}",
            other in any::<u128>(),
            key_name in "[A-Z_]{1,20}",
        ) {
            let k = keyring();
            let (v, blob) = k.encrypt(plaintext.as_bytes(), Scope::Workspace(WS), "MODEL").unwrap();
            prop_assert_eq!(k.decrypt(&blob, v, Scope::Workspace(WS), "MODEL").unwrap(), plaintext);
            if other != WS.as_u128() {
                prop_assert_eq!(k.decrypt(&blob, v, Scope::Workspace(Uuid::from_u128(other)), "MODEL").unwrap_err().code(), Code::DecryptFailed);
            }
            prop_assert_eq!(k.decrypt(&blob, v, Scope::Global, "MODEL").unwrap_err().code(), Code::DecryptFailed);
            if key_name != "MODEL" {
                prop_assert_eq!(k.decrypt(&blob, v, Scope::Workspace(WS), &key_name).unwrap_err().code(), Code::DecryptFailed);
            }
        }

        #[test]
        fn arbitrary_bytes_never_panic(
            blob in proptest::collection::vec(any::<u8>(), 0..100),
            version in any::<i32>(),
        ) {
            let k = keyring();
            prop_assert!(k.decrypt(&blob, version, Scope::Global, "MODEL").is_err());
        }
    }
}
