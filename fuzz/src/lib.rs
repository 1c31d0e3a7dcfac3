//! The bodies of secretgate-core's fuzz targets, in one place.
//!
//! Each body takes the raw input bytes and panics when a property breaks.
//! The cargo-fuzz targets in `fuzz_targets/` call them, and the core crate's
//! `tests/fuzz_regressions.rs` includes this file (`#[path]`) to replay every
//! saved input under `core/tests/fuzz-regressions/<target>/` through the same
//! code. So: no crate-level attributes here, and only dependencies that
//! secretgate-core's tests also have (secretgate_core, arbitrary, serde_json, base64).
//!
//! Assertion messages never show a key, a plaintext or a ciphertext.

use arbitrary::{Arbitrary, Unstructured};
use base64::Engine;
use secretgate_core::uuid::Uuid;
use secretgate_core::{Code, Error, Format, Keyring, Scope, NONCE_LEN, TAG_LEN};
use std::sync::OnceLock;

/// A fixed two-version keyring (test keys only): version 2 is current,
/// version 1 is an older, different key.
fn fixed_keyring() -> &'static Keyring {
    static KEYRING: OnceLock<Keyring> = OnceLock::new();
    KEYRING.get_or_init(|| {
        Keyring::parse(
            br#"{"current_version": 2, "keys": {
                "1": "ERERERERERERERERERERERERERERERERERERERERERE=",
                "2": "IiIiIiIiIiIiIiIiIiIiIiIiIiIiIiIiIiIiIiIiIiI="}}"#,
        )
        .expect("the fixed fuzz keyring parses")
    })
}

fn scope(workspace: Option<[u8; 16]>) -> Scope {
    Scope::from_workspace(workspace.map(Uuid::from_bytes))
}

fn code(r: Result<impl Sized, Error>) -> Option<Code> {
    r.err().map(|e| e.code())
}

/// `keyring_parse`: arbitrary bytes into `Keyring::parse`. Never panics; a
/// keyring that parses is usable and its Debug output shows versions only;
/// an error is KeyringUnavailable and never quotes a key value.
pub fn keyring_parse(data: &[u8]) {
    match Keyring::parse(data) {
        Ok(k) => {
            let versions: Vec<i32> = k.versions().collect();
            assert!(versions.contains(&k.current_version()), "current_version has no key");
            assert!(versions.iter().all(|v| *v >= 0), "a negative key version was accepted");
            assert!(
                k.format(k.current_version()) != Some(Format::Plaintext),
                "a plaintext current_version was accepted"
            );

            let debug = format!("{k:?}");
            let expected = format!("Keyring {{ current_version: {}, versions: {versions:?} }}", k.current_version());
            assert!(debug == expected, "Keyring's Debug output shows more than its versions");
            for value in key_values(data) {
                assert!(!debug.contains(value.as_str()), "Keyring's Debug output contains a key value");
            }

            // Every parsed key really works, and only for its own version.
            for &v in &versions {
                if k.format(v) == Some(Format::Plaintext) {
                    // Read as stored; never written.
                    assert!(k.decrypt(b"probe", v, Scope::Global, "K").as_deref() == Ok("probe"), "plaintext read");
                    assert!(
                        k.encrypt_with_nonce(v, [0; NONCE_LEN], b"probe", Scope::Global, "K").is_err(),
                        "a plaintext version encrypted"
                    );
                    continue;
                }
                let blob = k
                    .encrypt_with_nonce(v, [v as u8; NONCE_LEN], b"probe", Scope::Global, "K")
                    .expect("encrypt under a parsed key");
                assert!(
                    k.decrypt(&blob, v, Scope::Global, "K").as_deref() == Ok("probe"),
                    "parsed key does not round-trip"
                );
            }
        }
        Err(e) => {
            assert!(e.code() == Code::KeyringUnavailable, "Keyring::parse failed with another code");
            let shown = format!("{e} {e:?}");
            for value in key_values(data) {
                assert!(!shown.contains(value.as_str()), "a keyring error quotes a key value");
            }
        }
    }
}

/// The `keys` values of a JSON keyring that could be key material: valid
/// base64, at least 16 characters (shorter ones can occur by chance in a
/// message's words and numbers), and not also a version name (names are
/// quoted on purpose when they are not numbers).
fn key_values(data: &[u8]) -> Vec<String> {
    let Ok(serde_json::Value::Object(top)) = serde_json::from_slice::<serde_json::Value>(data) else {
        return Vec::new();
    };
    let Some(serde_json::Value::Object(keys)) = top.get("keys") else {
        return Vec::new();
    };
    keys.values()
        .filter_map(|v| v.as_str().or_else(|| v.get("key").and_then(|k| k.as_str())))
        .map(|v| v.trim().to_owned())
        .filter(|v| v.len() >= 16 && base64::engine::general_purpose::STANDARD.decode(v).is_ok())
        .filter(|v| !keys.keys().any(|name| name.contains(v.as_str())))
        .collect()
}

#[derive(Arbitrary)]
enum Version {
    Current,
    Old,
    Any(i32),
}

#[derive(Arbitrary)]
struct DecryptInput {
    version: Version,
    workspace: Option<[u8; 16]>,
    key_name: String,
    /// Last, so it takes the rest of the input.
    blob: Vec<u8>,
}

/// `decrypt`: arbitrary ciphertext bytes, version, scope and key name
/// against the fixed keyring. Never panics and never opens: bytes that
/// `encrypt` did not produce must fail (a forgery would need the key).
pub fn decrypt(data: &[u8]) {
    let Ok(input) = DecryptInput::arbitrary_take_rest(Unstructured::new(data)) else {
        return;
    };
    let k = fixed_keyring();
    let version = match input.version {
        Version::Current => 2,
        Version::Old => 1,
        Version::Any(v) => v,
    };
    let scope = scope(input.workspace);
    let expected = if version == 1 || version == 2 { Code::DecryptFailed } else { Code::UnknownKeyVersion };
    let bytes = k.decrypt_bytes(&input.blob, version, scope, &input.key_name);
    assert!(
        code(bytes) == Some(expected),
        "decrypt_bytes accepted bytes encrypt never produced, or failed with the wrong code"
    );
    let text = k.decrypt(&input.blob, version, scope, &input.key_name);
    assert!(
        code(text) == Some(expected),
        "decrypt accepted bytes encrypt never produced, or failed with the wrong code"
    );
}

#[derive(Arbitrary)]
struct RoundtripInput {
    workspace: Option<[u8; 16]>,
    key_name: String,
    other_workspace: Option<[u8; 16]>,
    other_key_name: String,
    /// From the input, so that a saved input replays exactly.
    nonce: [u8; NONCE_LEN],
    /// Picks the bit to flip and the length to cut to.
    position: u32,
    plaintext: Vec<u8>,
}

/// `roundtrip`: encrypt then decrypt gives the plaintext back; a flipped
/// bit, a truncation, another scope, key name or key version all fail.
/// `encrypt` draws a random nonce, and a saved input must replay the same: so
/// the checks run on `encrypt_with_nonce` with the input's nonce, and
/// `encrypt` is checked to be exactly that, with the nonce it drew.
pub fn roundtrip(data: &[u8]) {
    let Ok(input) = RoundtripInput::arbitrary_take_rest(Unstructured::new(data)) else {
        return;
    };
    let k = fixed_keyring();
    let scope = scope(input.workspace);
    let name = input.key_name.as_str();
    let pt = input.plaintext.as_slice();

    let v = k.current_version();
    let blob = k.encrypt_with_nonce(v, input.nonce, pt, scope, name).expect("encrypt a small value");
    assert!(blob.len() == NONCE_LEN + pt.len() + TAG_LEN, "ciphertext layout is not nonce || ciphertext || tag");
    assert!(blob[..NONCE_LEN] == input.nonce, "the ciphertext does not start with its nonce");
    assert!(
        k.decrypt_bytes(&blob, v, scope, name).as_deref() == Ok(pt),
        "decrypt_bytes did not give back the plaintext"
    );
    match std::str::from_utf8(pt) {
        Ok(text) => {
            assert!(k.decrypt(&blob, v, scope, name).as_deref() == Ok(text), "decrypt did not give back the text")
        }
        Err(_) => assert!(
            code(k.decrypt(&blob, v, scope, name)) == Some(Code::DecryptFailed),
            "decrypt returned non-UTF-8 as text"
        ),
    }

    let failed = |blob: &[u8], version: i32, scope: Scope, name: &str| {
        code(k.decrypt_bytes(blob, version, scope, name)) == Some(Code::DecryptFailed)
    };

    let bit = input.position as usize % (blob.len() * 8);
    let mut flipped = blob.clone();
    flipped[bit / 8] ^= 1 << (bit % 8);
    assert!(failed(&flipped, v, scope, name), "a ciphertext with one flipped bit opened");

    let cut = input.position as usize % blob.len();
    assert!(failed(&blob[..cut], v, scope, name), "a truncated ciphertext opened");

    let other_scope = self::scope(input.other_workspace);
    if other_scope != scope {
        assert!(failed(&blob, v, other_scope, name), "a ciphertext opened under another workspace");
    }
    if input.other_key_name != name {
        assert!(failed(&blob, v, scope, &input.other_key_name), "a ciphertext opened under another key name");
    }
    assert!(failed(&blob, 1, scope, name), "a ciphertext opened under another key version");

    let (version, random) = k.encrypt(pt, scope, name).expect("encrypt a small value");
    assert!(version == v, "encrypt did not use the current version");
    assert!(random.len() == blob.len(), "encrypt's ciphertext has another length");
    let drawn: [u8; NONCE_LEN] = random[..NONCE_LEN].try_into().expect("a nonce");
    let same = k.encrypt_with_nonce(v, drawn, pt, scope, name).expect("encrypt a small value");
    assert!(random == same, "encrypt is not encrypt_with_nonce under the current version with the nonce it drew");
}
