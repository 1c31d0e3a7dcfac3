//! The keyring file: `{"current_version": 2, "keys": {"1": "<base64>", "2": "<base64>"}}`.

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

/// Versioned keys, each expanded into its AES-256-GCM cipher once, at load.
pub struct Keyring {
    current_version: i32,
    ciphers: BTreeMap<i32, Aes256Gcm>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct KeyringFile {
    current_version: i32,
    keys: BTreeMap<String, String>,
}

impl Keyring {
    /// Parses keyring JSON. Errors say what to fix and never quote a key.
    pub fn parse(json: &[u8]) -> Result<Keyring, Error> {
        let mut file: KeyringFile = serde_json::from_slice(json).map_err(|e| {
            // serde_json's message can quote input; keep only where it broke.
            Error::keyring(format!(
                "the keyring file is not valid keyring JSON (line {}, column {}); expected {{\"current_version\": N, \"keys\": {{\"N\": \"<base64 of 32 bytes>\"}}}}",
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
        let mut ciphers = BTreeMap::new();
        for (name, encoded) in &file.keys {
            let version: i32 =
                name.parse().ok().filter(|v| *v >= 1).ok_or_else(|| {
                    Error::keyring(format!("keyring key version \"{name}\" is not a positive integer"))
                })?;
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
            ciphers.insert(version, cipher);
        }
        if !ciphers.contains_key(&file.current_version) {
            return Err(Error::keyring(format!(
                "the keyring's current_version {} has no key in \"keys\"",
                file.current_version
            )));
        }
        Ok(Keyring { current_version: file.current_version, ciphers })
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
        self.ciphers.keys().copied()
    }

    pub(crate) fn cipher(&self, version: i32) -> Result<&Aes256Gcm, Error> {
        self.ciphers.get(&version).ok_or(Error::UnknownKeyVersion { version })
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
            .field("versions", &self.ciphers.keys().collect::<Vec<_>>())
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
            .contains("not a positive integer"));
        assert!(reason(Keyring::parse(format!(r#"{{"current_version":0,"keys":{{"0":"{K1}"}}}}"#).as_bytes()))
            .contains("not a positive integer"));
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
