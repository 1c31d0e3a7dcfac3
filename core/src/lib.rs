//! secretgate's pure core: no Postgres in here.
//!
//! * [`Code`]: every refusal's SQLSTATE and code word, in one table.
//! * [`Keyring`]: the versioned AES-256-GCM keys read from the keyring file
//!   (or a keyring command's output), each key's cipher and key check value
//!   computed once at load time.
//! * [`Scope`] and the ciphertext layout `nonce(12) || ciphertext || tag(16)`,
//!   bound to its row by the associated data `secretgate:v1:<scope>:<key>`.
//!
//! * [`Verdict`]: what a provider's answer says about a credential.
//! * [`policy`]: the product's rules, as decisions over facts.
//! * [`audit`]: the record a refusal or an administrative event becomes in
//!   the audit queue and table.
//!
//! The extension and the command-line tool both build on this crate.

pub mod audit;
mod codes;
mod crypto;
mod keyring;
mod liveness;
pub mod policy;

pub use codes::Code;
pub use crypto::{associated_data, Scope, NONCE_LEN, TAG_LEN};
pub use keyring::{
    add_version_json, key_check_value, key_status, new_key_base64, new_keyring_json, Format, KeyStatus, Keyring,
    CHECK_LEN, KEY_LEN,
};
pub use liveness::{ciphertext_digest, Verdict};

use thiserror::Error;
pub use uuid;

/// What can go wrong reading or writing a secret. Messages never carry a
/// key, a plaintext or a ciphertext.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum Error {
    /// Authentication failed: corrupt, truncated, or bound to another row.
    #[error("{reason}")]
    DecryptFailed { reason: &'static str },
    /// The row's `encryption_version` has no key in the keyring.
    #[error("key version {version} is not in the keyring")]
    UnknownKeyVersion { version: i32 },
    /// The keyring cannot be used; `reason` says what to fix.
    #[error("{reason}")]
    KeyringUnavailable { reason: String },
    /// The keyring's key for `version` is not the one this database first
    /// used it with (its recorded key check value differs).
    #[error("the keyring's key for version {version} is not the key this database's secrets were written with")]
    KeyMismatch { version: i32 },
}

impl Error {
    pub fn code(&self) -> Code {
        match self {
            Error::DecryptFailed { .. } => Code::DecryptFailed,
            Error::UnknownKeyVersion { .. } => Code::UnknownKeyVersion,
            Error::KeyringUnavailable { .. } => Code::KeyringUnavailable,
            Error::KeyMismatch { .. } => Code::KeyMismatch,
        }
    }

    pub(crate) fn keyring(reason: impl Into<String>) -> Self {
        Error::KeyringUnavailable { reason: reason.into() }
    }
}
