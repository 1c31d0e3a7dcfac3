//! The keyring inside the server: `secretgate.keyring_file`, read lazily and
//! re-read whenever the file (or the setting) changes, or the output of
//! `secretgate.keyring_command` ([`keyring_source`]). Every use of a key is
//! checked against the database's key check values ([`keyring_checks`]).

use crate::pg::gucs::KEYRING_FILE;
use crate::pg::keyring_checks::{self, Check};
use crate::pg::keyring_source;
use pgrx::pg_sys;
use secretgate_core::{Error as CoreError, Keyring, Scope};
use std::cell::RefCell;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::rc::Rc;

/// Called once from `_PG_init`, after the settings are defined: the keyring
/// command's shared memory and worker, and the check of both sources.
pub fn init() {
    keyring_source::init();
    // At start, both sources at once stop the server (on a reload, every key
    // operation says so instead: see `current`).
    // SAFETY: reads a Postgres global flag.
    if unsafe { pg_sys::process_shared_preload_libraries_in_progress }
        && keyring_source::command().is_some()
        && file_is_set()
    {
        pgrx::error!("secretgate.keyring_file and secretgate.keyring_command are both set: set only one of them");
    }
}

fn file_is_set() -> bool {
    KEYRING_FILE.get().is_some_and(|p| !p.as_bytes().is_empty())
}

/// What identifies one version of the file: a change to any of these
/// (content rewrite, replace by rename, chmod, another path) forces a re-read.
#[derive(PartialEq, Eq)]
struct Stamp {
    path: PathBuf,
    dev: u64,
    ino: u64,
    size: u64,
    mtime_ns: i128,
    ctime_ns: i128,
}

/// The keyring as last read, the file version it came from, and the statement
/// (by its start time) that last checked the file.
struct Loaded {
    stamp: Stamp,
    keyring: Rc<Keyring>,
    checked_in: pg_sys::TimestampTz,
}

thread_local! {
    static LOADED: RefCell<Option<Loaded>> = const { RefCell::new(None) };
}

/// The keyring as the file holds it now. One `stat` per statement: settings
/// change only between statements, and a file rewritten while a statement
/// runs is picked up by the next one (a `stat` per row cost more than the
/// decryption). The file is parsed and its ciphers expanded only when it changed.
pub fn current() -> Result<Rc<Keyring>, CoreError> {
    if keyring_source::command_is_set() {
        forget();
        if file_is_set() {
            return Err(CoreError::KeyringUnavailable {
                reason: "secretgate.keyring_file and secretgate.keyring_command are both set: set only one of them"
                    .into(),
            });
        }
        return keyring_source::current();
    }
    // SAFETY: reads the current statement's start time; no side effect.
    let statement = unsafe { pg_sys::GetCurrentStatementStartTimestamp() };
    let same_statement = |l: &&Loaded| statement != 0 && l.checked_in == statement;
    if let Some(keyring) = LOADED.with_borrow(|l| l.as_ref().filter(same_statement).map(|l| l.keyring.clone())) {
        return Ok(keyring);
    }
    let path = configured_path()?;
    let meta = std::fs::metadata(&path).map_err(|e| {
        forget();
        CoreError::KeyringUnavailable {
            reason: format!("the keyring file cannot be found or inspected ({})", e.kind()),
        }
    })?;
    let stamp = Stamp {
        path,
        dev: meta.dev(),
        ino: meta.ino(),
        size: meta.size(),
        mtime_ns: meta.mtime() as i128 * 1_000_000_000 + meta.mtime_nsec() as i128,
        ctime_ns: meta.ctime() as i128 * 1_000_000_000 + meta.ctime_nsec() as i128,
    };
    let unchanged = LOADED.with_borrow_mut(|l| {
        let loaded = l.as_mut().filter(|l| l.stamp == stamp)?;
        loaded.checked_in = statement;
        Some(loaded.keyring.clone())
    });
    if let Some(keyring) = unchanged {
        return Ok(keyring);
    }
    forget();
    let keyring = Rc::new(Keyring::load(&stamp.path)?);
    LOADED.set(Some(Loaded { stamp, keyring: keyring.clone(), checked_in: statement }));
    Ok(keyring)
}

fn configured_path() -> Result<PathBuf, CoreError> {
    match KEYRING_FILE.get() {
        Some(path) if !path.as_bytes().is_empty() => Ok(PathBuf::from(std::ffi::OsStr::from_bytes(path.as_bytes()))),
        _ => {
            forget();
            Err(CoreError::KeyringUnavailable {
                reason: "secretgate.keyring_file is not set (nor secretgate.keyring_command)".into(),
            })
        }
    }
}

/// A broken keyring is never served from the cache (fail closed).
fn forget() {
    LOADED.set(None);
}

/// A stored row as read: ciphertext and key version, either possibly NULL.
pub type StoredValue = (Option<Vec<u8>>, Option<i32>);

/// Decrypts a stored row with the current keyring: the plaintext, or the
/// reason it cannot be had. NULL columns fail decryption: a row is never "unset".
pub fn open(row: StoredValue, scope: Scope, key: &str) -> Result<String, CoreError> {
    if row.0.is_none() || row.1.is_none() {
        return Err(null_row());
    }
    open_with(&*current()?, row.0.as_deref(), row.1, scope, key)
}

/// [`open`] with a keyring already in hand (a batch of rows).
pub fn open_with(
    keyring: &Keyring,
    blob: Option<&[u8]>,
    version: Option<i32>,
    scope: Scope,
    key: &str,
) -> Result<String, CoreError> {
    let (Some(blob), Some(version)) = (blob, version) else {
        return Err(null_row());
    };
    decrypt_with(keyring, blob, version, scope, key)
}

/// Decrypts one ciphertext, its version's key first checked against the
/// database's key check value (SG004 rather than SG001 for a wrong key). A
/// version without a recorded check gets one once a row has decrypted.
pub fn decrypt_with(
    keyring: &Keyring,
    blob: &[u8],
    version: i32,
    scope: Scope,
    key: &str,
) -> Result<String, CoreError> {
    let check = keyring_checks::verify(keyring, version)?;
    let plaintext = keyring.decrypt(blob, version, scope, key)?;
    if check == Check::Unrecorded {
        keyring_checks::record(keyring, version)?;
    }
    Ok(plaintext)
}

fn null_row() -> CoreError {
    CoreError::DecryptFailed { reason: "the stored row has a NULL encrypted_value or encryption_version" }
}

/// Encrypts under the current key version: `(version, ciphertext)`.
pub fn seal(value: &str, scope: Scope, key: &str) -> Result<(i32, Vec<u8>), CoreError> {
    seal_with(&*current()?, value, scope, key)
}

/// [`seal`] with a keyring already in hand. The current version's key is
/// checked against the database's key check value, which is recorded when
/// this is the version's first use here.
pub fn seal_with(keyring: &Keyring, value: &str, scope: Scope, key: &str) -> Result<(i32, Vec<u8>), CoreError> {
    let version = keyring.current_version();
    let check = keyring_checks::verify(keyring, version)?;
    let sealed = keyring.encrypt(value.as_bytes(), scope, key)?;
    if check == Check::Unrecorded {
        keyring_checks::record(keyring, version)?;
    }
    Ok(sealed)
}
