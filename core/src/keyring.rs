//! The keyring file: `{"current_version": 2, "keys": {"1": "<base64>", "2": "<base64>"}}`.
//!
//! A key entry is a base64 key (the bound format: AES-256-GCM with the row's
//! associated data), or an object declaring another format, for rows an
//! application wrote before adopting secretgate:
//! `{"key": "<base64>", "format": "unbound"}` (AES-256-GCM, no associated
//! data) or `{"format": "plaintext"}` (no key: the value is stored as is).

use crate::Error;
use aes_gcm::{Aes256Gcm, KeyInit};
use base64::Engine;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::fmt;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use zeroize::{Zeroize, Zeroizing};

pub const KEY_LEN: usize = 32;
/// Length of a key check value (HMAC-SHA256).
pub const CHECK_LEN: usize = 32;

/// The fixed label a key check value authenticates. Changing it would make
/// every recorded check differ: it is part of the stored format.
const CHECK_LABEL: &[u8] = b"secretgate key check v1";

/// The key check value of a key: HMAC-SHA256 of a fixed label under it. It
/// tells two keys apart and reveals nothing about either (HMAC is a PRF).
pub fn key_check_value(key: &[u8]) -> [u8; CHECK_LEN] {
    use hmac::{Hmac, Mac};
    // HMAC takes a key of any length: this cannot fail.
    let mut mac = <Hmac<sha2::Sha256> as Mac>::new_from_slice(key).expect("HMAC accepts any key length");
    mac.update(CHECK_LABEL);
    mac.finalize().into_bytes().into()
}

/// How the rows of one key version are stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// secretgate's own: AES-256-GCM bound to its row by associated data.
    Bound,
    /// AES-256-GCM without associated data, as applications often write.
    Unbound,
    /// No encryption at all: the UTF-8 bytes of the value.
    Plaintext,
}

impl Format {
    pub fn as_str(self) -> &'static str {
        match self {
            Format::Bound => "bound",
            Format::Unbound => "unbound",
            Format::Plaintext => "plaintext",
        }
    }
}

/// One key version: its format and, unless plaintext, its expanded cipher.
pub(crate) enum Entry {
    Bound(Aes256Gcm),
    Unbound(Aes256Gcm),
    Plaintext,
}

impl Entry {
    fn format(&self) -> Format {
        match self {
            Entry::Bound(_) => Format::Bound,
            Entry::Unbound(_) => Format::Unbound,
            Entry::Plaintext => Format::Plaintext,
        }
    }
}

/// Versioned keys, each expanded into its AES-256-GCM cipher, and its key
/// check value computed, once, at load (a plaintext version has neither).
pub struct Keyring {
    current_version: i32,
    entries: BTreeMap<i32, Entry>,
    checks: BTreeMap<i32, [u8; CHECK_LEN]>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct KeyringFile {
    current_version: i32,
    keys: BTreeMap<String, KeyEntry>,
}

/// A key entry as written: a bare base64 string (bound), or an object.
#[derive(Deserialize)]
#[serde(untagged)]
enum KeyEntry {
    Bound(String),
    Declared(DeclaredEntry),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DeclaredEntry {
    #[serde(default)]
    key: Option<String>,
    format: String,
}

impl KeyEntry {
    fn zeroize(&mut self) {
        match self {
            KeyEntry::Bound(key) | KeyEntry::Declared(DeclaredEntry { key: Some(key), .. }) => key.zeroize(),
            KeyEntry::Declared(_) => {}
        }
    }
}

impl Keyring {
    /// Parses keyring JSON. Errors say what to fix and never quote a key.
    pub fn parse(json: &[u8]) -> Result<Keyring, Error> {
        let mut file: KeyringFile = serde_json::from_slice(json).map_err(|e| {
            // serde_json's message can quote input; keep only where it broke.
            Error::keyring(format!(
                "the keyring file is not valid keyring JSON (line {}, column {}); expected {{\"current_version\": N, \"keys\": {{\"N\": \"<base64 of 32 bytes>\" or {{\"key\": \"<base64>\", \"format\": \"unbound\"}} or {{\"format\": \"plaintext\"}}}}}}",
                e.line(),
                e.column()
            ))
        })?;
        let result = Keyring::from_file(&file);
        for value in file.keys.values_mut() {
            value.zeroize();
        }
        result
    }

    fn from_file(file: &KeyringFile) -> Result<Keyring, Error> {
        let mut entries = BTreeMap::new();
        let mut checks = BTreeMap::new();
        let mut cipher = |version: i32, encoded: &str| -> Result<Aes256Gcm, Error> {
            let (cipher, check) = cipher_and_check(version, encoded)?;
            checks.insert(version, check);
            Ok(cipher)
        };
        for (name, entry) in &file.keys {
            // 0 is allowed: applications commonly mark their unencrypted rows version 0.
            let version: i32 = name.parse().ok().filter(|v| *v >= 0).ok_or_else(|| {
                Error::keyring(format!("keyring key version \"{name}\" is not a non-negative integer"))
            })?;
            let entry = match entry {
                KeyEntry::Bound(encoded) => Entry::Bound(cipher(version, encoded)?),
                KeyEntry::Declared(DeclaredEntry { key, format }) => match (format.as_str(), key) {
                    ("bound", Some(encoded)) => Entry::Bound(cipher(version, encoded)?),
                    ("unbound", Some(encoded)) => Entry::Unbound(cipher(version, encoded)?),
                    ("plaintext", None) => Entry::Plaintext,
                    ("plaintext", Some(_)) => {
                        return Err(Error::keyring(format!(
                            "keyring key version {version} is plaintext and must not have a \"key\""
                        )))
                    }
                    ("bound" | "unbound", None) => {
                        return Err(Error::keyring(format!("keyring key version {version} has no \"key\"")))
                    }
                    _ => {
                        return Err(Error::keyring(format!(
                            "keyring key version {version} has an unknown \"format\" (bound, unbound or plaintext)"
                        )))
                    }
                },
            };
            entries.insert(version, entry);
        }
        match entries.get(&file.current_version) {
            None => Err(Error::keyring(format!(
                "the keyring's current_version {} has no key in \"keys\"",
                file.current_version
            ))),
            Some(Entry::Plaintext) => Err(Error::keyring(format!(
                "the keyring's current_version {} is plaintext; the current version must encrypt (bound or unbound)",
                file.current_version
            ))),
            Some(_) => Ok(Keyring { current_version: file.current_version, entries, checks }),
        }
    }

    /// Reads and parses the keyring file at `path`: an absolute path to a
    /// regular file that group and others have no access to.
    pub fn load(path: &Path) -> Result<Keyring, Error> {
        if !path.is_absolute() {
            return Err(Error::keyring("secretgate.keyring_file must be an absolute path"));
        }
        let meta = std::fs::metadata(path)
            .map_err(|e| Error::keyring(format!("the keyring file cannot be found or inspected ({})", e.kind())))?;
        check_file(&meta)?;
        let bytes = Zeroizing::new(
            std::fs::read(path)
                .map_err(|e| Error::keyring(format!("the keyring file cannot be read ({})", e.kind())))?,
        );
        Keyring::parse(&bytes)
    }

    pub fn current_version(&self) -> i32 {
        self.current_version
    }

    /// Every key version the keyring holds, ascending.
    pub fn versions(&self) -> impl Iterator<Item = i32> + '_ {
        self.entries.keys().copied()
    }

    /// The key check value of `version`'s key; `None` when the keyring has
    /// no key for it.
    pub fn check_value(&self, version: i32) -> Option<&[u8; CHECK_LEN]> {
        self.checks.get(&version)
    }

    /// Whether `version`'s key matches the check value a database recorded
    /// for it: `KeyMismatch` when it does not. A version without a key here
    /// (unknown, or one that has no key) has nothing to compare.
    pub fn verify_check(&self, version: i32, recorded: &[u8]) -> Result<(), Error> {
        match self.check_value(version) {
            Some(mine) if mine.as_slice() != recorded => Err(Error::KeyMismatch { version }),
            _ => Ok(()),
        }
    }

    /// The format of a key version, `None` when the keyring has no such version.
    pub fn format(&self, version: i32) -> Option<Format> {
        self.entries.get(&version).map(Entry::format)
    }

    pub(crate) fn entry(&self, version: i32) -> Result<&Entry, Error> {
        self.entries.get(&version).ok_or(Error::UnknownKeyVersion { version })
    }
}

/// The AES-256-GCM cipher of a base64 key and its key check value; errors
/// never quote the key.
fn cipher_and_check(version: i32, encoded: &str) -> Result<(Aes256Gcm, [u8; CHECK_LEN]), Error> {
    let bytes = Zeroizing::new(
        base64::engine::general_purpose::STANDARD
            .decode(encoded.trim())
            .map_err(|_| Error::keyring(format!("keyring key version {version} is not valid base64")))?,
    );
    if bytes.len() != KEY_LEN {
        return Err(Error::keyring(format!(
            "keyring key version {version} is {} bytes; AES-256 needs exactly {KEY_LEN} (head -c 32 /dev/urandom | base64)",
            bytes.len()
        )));
    }
    let cipher = Aes256Gcm::new_from_slice(&bytes)
        .map_err(|_| Error::keyring(format!("keyring key version {version} is not a valid AES-256 key")))?;
    Ok((cipher, key_check_value(&bytes)))
}

/// A fresh random 32-byte key, base64 (the operating system's generator).
pub fn new_key_base64() -> Zeroizing<String> {
    use aes_gcm::aead::rand_core::RngCore;
    let mut key = Zeroizing::new([0u8; KEY_LEN]);
    aes_gcm::aead::OsRng.fill_bytes(&mut key[..]);
    Zeroizing::new(base64::engine::general_purpose::STANDARD.encode(&key[..]))
}

/// A new keyring's JSON: version 1, current, with a fresh random key.
pub fn new_keyring_json() -> Zeroizing<String> {
    let key = new_key_base64();
    Zeroizing::new(format!("{{\"current_version\": 1, \"keys\": {{\"1\": \"{}\"}}}}\n", key.as_str()))
}

/// Adds a fresh random key to keyring JSON as the next version (one above
/// the highest) and makes it current, keeping every other entry as it is.
/// Returns the new JSON and the new version. The result must parse.
pub fn add_version_json(json: &[u8]) -> Result<(Zeroizing<String>, i32), Error> {
    let mut value: serde_json::Value = serde_json::from_slice(json).map_err(|e| {
        Error::keyring(format!("the keyring file is not valid JSON (line {}, column {})", e.line(), e.column()))
    })?;
    let result = add_version_to(&mut value);
    scrub(&mut value);
    result
}

fn add_version_to(value: &mut serde_json::Value) -> Result<(Zeroizing<String>, i32), Error> {
    let keys = value
        .get_mut("keys")
        .and_then(serde_json::Value::as_object_mut)
        .ok_or_else(|| Error::keyring("the keyring file has no \"keys\" object"))?;
    let highest = keys.keys().filter_map(|k| k.parse::<i32>().ok()).max().unwrap_or(0);
    let version = highest.checked_add(1).ok_or_else(|| Error::keyring("the keyring has no version number left"))?;
    keys.insert(version.to_string(), serde_json::Value::String(new_key_base64().to_string()));
    value["current_version"] = version.into();
    let text = Zeroizing::new(format!("{}\n", serde_json::to_string_pretty(&*value).unwrap_or_default()));
    Keyring::parse(text.as_bytes())?;
    Ok((text, version))
}

/// Overwrites every string of a parsed keyring (its keys) before it is dropped.
fn scrub(value: &mut serde_json::Value) {
    match value {
        serde_json::Value::String(s) => s.zeroize(),
        serde_json::Value::Array(items) => items.iter_mut().for_each(scrub),
        serde_json::Value::Object(map) => map.values_mut().for_each(scrub),
        _ => {}
    }
}

/// How one key version stands between a server's keyring and a database
/// (`secretgate keyring check`, `secretgate.key_check_status()`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyStatus {
    /// The keyring's key matches the database's check value.
    Ok,
    /// The keyring's key differs from the one the database recorded: SG004.
    Mismatch,
    /// Rows use the version and the keyring has no key for it: SG002.
    MissingFromKeyring,
    /// No row uses the version: its key may be retired.
    Unused,
    /// Rows use it and the keyring has its key, but no check value was
    /// recorded yet (a database from before 0.4.0, until the version is used).
    Unchecked,
}

impl KeyStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            KeyStatus::Ok => "ok",
            KeyStatus::Mismatch => "mismatch",
            KeyStatus::MissingFromKeyring => "missing from keyring",
            KeyStatus::Unused => "unused",
            KeyStatus::Unchecked => "unchecked",
        }
    }

    /// Whether the status is a problem to fix (`keyring check` exits 1).
    pub fn is_problem(self) -> bool {
        matches!(self, KeyStatus::Mismatch | KeyStatus::MissingFromKeyring)
    }
}

/// The status of one version: `in_keyring` is the keyring's check value for
/// it, `recorded` the database's, `rows` how many secrets use it. A wrong key
/// is reported even when no row uses it (the next write would fail).
pub fn key_status(in_keyring: Option<&[u8]>, recorded: Option<&[u8]>, rows: i64) -> KeyStatus {
    match (in_keyring, recorded) {
        (Some(mine), Some(theirs)) if mine != theirs => KeyStatus::Mismatch,
        _ if rows == 0 => KeyStatus::Unused,
        (None, _) => KeyStatus::MissingFromKeyring,
        (Some(_), Some(_)) => KeyStatus::Ok,
        (Some(_), None) => KeyStatus::Unchecked,
    }
}

/// A keyring must be a regular file with no permissions for group or others.
pub fn check_file(meta: &std::fs::Metadata) -> Result<(), Error> {
    if !meta.is_file() {
        return Err(Error::keyring("the keyring file is not a regular file"));
    }
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(Error::keyring(format!(
            "the keyring file is accessible to group or others (mode {mode:04o}); chmod 600 it, owned by the server's user"
        )));
    }
    Ok(())
}

impl fmt::Debug for Keyring {
    /// Versions only: key material never reaches Debug output.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Keyring")
            .field("current_version", &self.current_version)
            .field("versions", &self.entries.keys().collect::<Vec<_>>())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Code;
    use std::io::Write;

    const K1: &str = "AQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQE=";

    fn reason(r: Result<Keyring, Error>) -> String {
        match r {
            Err(Error::KeyringUnavailable { reason }) => reason,
            other => panic!("expected KeyringUnavailable, got {other:?}"),
        }
    }

    #[test]
    fn parses_versions_and_current() {
        let k =
            Keyring::parse(format!(r#"{{"current_version":1,"keys":{{"1":"{K1}","7":"{K1}"}}}}"#).as_bytes()).unwrap();
        assert_eq!(k.current_version(), 1);
        assert_eq!(k.versions().collect::<Vec<_>>(), vec![1, 7]);
    }

    #[test]
    fn rejects_each_malformed_shape_with_a_reason() {
        assert!(reason(Keyring::parse(b"not json")).contains("not valid keyring JSON"));
        assert!(reason(Keyring::parse(b"{}")).contains("not valid keyring JSON"));
        assert!(reason(Keyring::parse(
            format!(r#"{{"current_version":1,"keys":{{"1":"{K1}"}},"extra":1}}"#).as_bytes()
        ))
        .contains("not valid keyring JSON"));
        assert!(reason(Keyring::parse(format!(r#"{{"current_version":2,"keys":{{"1":"{K1}"}}}}"#).as_bytes()))
            .contains("current_version 2 has no key"));
        assert!(reason(Keyring::parse(br#"{"current_version":1,"keys":{"1":"AQID"}}"#)).contains("3 bytes"));
        assert!(
            reason(Keyring::parse(br#"{"current_version":1,"keys":{"1":"!!notbase64"}}"#)).contains("not valid base64")
        );
        assert!(reason(Keyring::parse(format!(r#"{{"current_version":1,"keys":{{"one":"{K1}"}}}}"#).as_bytes()))
            .contains("not a non-negative integer"));
        assert!(reason(Keyring::parse(format!(r#"{{"current_version":-1,"keys":{{"-1":"{K1}"}}}}"#).as_bytes()))
            .contains("not a non-negative integer"));
    }

    #[test]
    fn entries_declare_their_format() {
        let k = Keyring::parse(
            format!(
                r#"{{"current_version":1,"keys":{{"0":{{"format":"plaintext"}},"1":{{"key":"{K1}","format":"unbound"}},"2":"{K1}","3":{{"key":"{K1}","format":"bound"}}}}}}"#
            )
            .as_bytes(),
        )
        .unwrap();
        assert_eq!(k.versions().collect::<Vec<_>>(), vec![0, 1, 2, 3]);
        assert_eq!(k.format(0), Some(Format::Plaintext));
        assert_eq!(k.format(1), Some(Format::Unbound));
        assert_eq!(k.format(2), Some(Format::Bound));
        assert_eq!(k.format(3), Some(Format::Bound));
        assert_eq!(k.format(4), None);
        // An unbound version may be current.
        assert_eq!(k.current_version(), 1);
    }

    #[test]
    fn rejects_malformed_declared_entries() {
        let parse = |keys: &str, current: i32| {
            Keyring::parse(format!(r#"{{"current_version":{current},"keys":{{{keys}}}}}"#).as_bytes())
        };
        assert!(reason(parse(r#""0":{"format":"plaintext"}"#, 0))
            .contains("is plaintext; the current version must encrypt"));
        assert!(reason(parse(&format!(r#""0":{{"format":"plaintext","key":"{K1}"}},"1":"{K1}""#), 1))
            .contains("must not have a \"key\""));
        assert!(reason(parse(r#""1":{"format":"unbound"}"#, 1)).contains("has no \"key\""));
        assert!(reason(parse(&format!(r#""1":{{"key":"{K1}","format":"sealed"}}"#), 1)).contains("unknown \"format\""));
        assert!(reason(parse(&format!(r#""1":{{"key":"{K1}","format":"unbound","x":1}}"#), 1))
            .contains("not valid keyring JSON"));
        assert!(reason(parse(r#""1":{"key":"AQID","format":"unbound"}"#, 1)).contains("3 bytes"));
        let shown = reason(parse(r#""1":{"key":"c2VjcmV0LWtleS1tYXRlcmlhbA==","format":"unbound"}"#, 1));
        assert!(!shown.contains("c2VjcmV0"), "{shown}");
    }

    #[test]
    fn messages_and_debug_never_quote_key_material() {
        let json = r#"{"current_version":1,"keys":{"1":"c2VjcmV0LWtleS1tYXRlcmlhbA=="}}"#;
        let shown = reason(Keyring::parse(json.as_bytes()));
        assert!(!shown.contains("c2VjcmV0"), "{shown}");
        let bad_json = r#"{"current_version":1,"keys":{"1":"c2VjcmV0LWtleS1tYXRlcmlhbA==" "#;
        let shown = reason(Keyring::parse(bad_json.as_bytes()));
        assert!(!shown.contains("c2VjcmV0"), "{shown}");
        let k = Keyring::parse(format!(r#"{{"current_version":1,"keys":{{"1":"{K1}"}}}}"#).as_bytes()).unwrap();
        let debug = format!("{k:?}");
        assert!(!debug.contains("AQEB") && debug.contains("current_version: 1"), "{debug}");
    }

    const K2: &str = "AgICAgICAgICAgICAgICAgICAgICAgICAgICAgICAgI=";

    #[test]
    fn check_values_tell_keys_apart_and_are_stable() {
        let a =
            Keyring::parse(format!(r#"{{"current_version":1,"keys":{{"1":"{K1}","2":"{K2}"}}}}"#).as_bytes()).unwrap();
        let b = Keyring::parse(format!(r#"{{"current_version":1,"keys":{{"1":"{K2}"}}}}"#).as_bytes()).unwrap();
        let a1 = *a.check_value(1).unwrap();
        assert_ne!(a1, *a.check_value(2).unwrap());
        assert_eq!(a.check_value(2), b.check_value(1));
        assert_eq!(a.check_value(3), None);
        // A known answer: HMAC-SHA256(key = 32 bytes of 0x01, "secretgate key check v1").
        assert_eq!(hex::encode(a1), hex::encode(key_check_value(&[1u8; 32])));
        assert_eq!(a.verify_check(1, &a1), Ok(()));
        assert_eq!(b.verify_check(1, &a1), Err(Error::KeyMismatch { version: 1 }));
        assert_eq!(b.verify_check(1, &a1).unwrap_err().code(), Code::KeyMismatch);
        // Nothing to compare for a version the keyring has no key for.
        assert_eq!(b.verify_check(9, &a1), Ok(()));
        // An unbound key has a check value; a plaintext version has none.
        let f = Keyring::parse(
            format!(r#"{{"current_version":1,"keys":{{"0":{{"format":"plaintext"}},"1":{{"key":"{K1}","format":"unbound"}}}}}}"#)
                .as_bytes(),
        )
        .unwrap();
        assert_eq!(f.check_value(1), Some(&a1));
        assert_eq!(f.check_value(0), None);
        assert_eq!(f.verify_check(0, &a1), Ok(()));
        // The check value is not the key, nor derived from it by a plain hash.
        assert!(!hex::encode(a1).contains("0101010101"));
        use sha2::Digest;
        assert_ne!(a1.as_slice(), sha2::Sha256::digest([1u8; 32]).as_slice());
    }

    #[test]
    fn new_and_added_versions_parse_and_keep_the_old_keys() {
        let first = new_keyring_json();
        let k = Keyring::parse(first.as_bytes()).unwrap();
        assert_eq!((k.current_version(), k.versions().collect::<Vec<_>>()), (1, vec![1]));
        assert_ne!(*new_keyring_json(), *first);
        let (second, v) = add_version_json(first.as_bytes()).unwrap();
        assert_eq!(v, 2);
        let k2 = Keyring::parse(second.as_bytes()).unwrap();
        assert_eq!((k2.current_version(), k2.versions().collect::<Vec<_>>()), (2, vec![1, 2]));
        assert_eq!(k2.check_value(1), k.check_value(1));
        assert_ne!(k2.check_value(2), k.check_value(1));
        let gap = format!(r#"{{"current_version":1,"keys":{{"1":"{K1}","7":"{K2}"}}}}"#);
        assert_eq!(add_version_json(gap.as_bytes()).unwrap().1, 8);
        assert!(add_version_json(b"nope").is_err());
        assert!(add_version_json(br#"{"current_version":1}"#).is_err());
    }

    #[test]
    fn key_status_per_version() {
        let (x, y) = ([1u8; 32], [2u8; 32]);
        assert_eq!(key_status(Some(&x), Some(&x), 5), KeyStatus::Ok);
        assert_eq!(key_status(Some(&x), Some(&y), 5), KeyStatus::Mismatch);
        assert_eq!(key_status(Some(&x), Some(&y), 0), KeyStatus::Mismatch);
        assert_eq!(key_status(None, Some(&y), 3), KeyStatus::MissingFromKeyring);
        assert_eq!(key_status(None, None, 3), KeyStatus::MissingFromKeyring);
        assert_eq!(key_status(None, Some(&y), 0), KeyStatus::Unused);
        assert_eq!(key_status(Some(&x), Some(&x), 0), KeyStatus::Unused);
        assert_eq!(key_status(Some(&x), None, 2), KeyStatus::Unchecked);
        assert!(KeyStatus::Mismatch.is_problem() && KeyStatus::MissingFromKeyring.is_problem());
        assert!(!KeyStatus::Unused.is_problem() && !KeyStatus::Unchecked.is_problem());
        assert_eq!(KeyStatus::MissingFromKeyring.as_str(), "missing from keyring");
    }

    #[test]
    fn load_checks_path_type_and_permissions() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keyring.json");
        let mut f = std::fs::File::create(&path).unwrap();
        write!(f, r#"{{"current_version":1,"keys":{{"1":"{K1}"}}}}"#).unwrap();
        drop(f);

        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert_eq!(Keyring::load(&path).unwrap().current_version(), 1);
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o400)).unwrap();
        assert!(Keyring::load(&path).is_ok());

        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o640)).unwrap();
        assert!(reason(Keyring::load(&path)).contains("mode 0640"));
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o604)).unwrap();
        assert!(reason(Keyring::load(&path)).contains("group or others"));

        assert!(reason(Keyring::load(Path::new("keyring.json"))).contains("absolute"));
        assert!(reason(Keyring::load(&dir.path().join("missing.json"))).contains("cannot be found"));
        assert!(reason(Keyring::load(dir.path())).contains("not a regular file"));
        assert_eq!(Keyring::load(dir.path()).unwrap_err().code(), Code::KeyringUnavailable);
    }
}
