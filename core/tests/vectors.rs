//! Known-answer vectors in `tests/vectors/aes256gcm.json`: an application
//! that encrypts on its own side must produce exactly these bytes.
//! Generated once (`SECRETGATE_WRITE_VECTORS=1 cargo test -p secretgate-core --test vectors`)
//! and committed; the tests check both directions against the file.

use secretgate_core::{uuid::Uuid, Code, Keyring, Scope};
use serde::{Deserialize, Serialize};

const PATH: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/vectors/aes256gcm.json");

#[derive(Serialize, Deserialize)]
struct Vectors {
    description: String,
    keyring: serde_json::Value,
    vectors: Vec<Vector>,
}

#[derive(Serialize, Deserialize)]
struct Vector {
    key_version: i32,
    nonce_hex: String,
    /// A workspace id, or "global".
    scope: String,
    key_name: String,
    associated_data: String,
    plaintext: String,
    ciphertext_hex: String,
}

fn scope(s: &str) -> Scope {
    if s == "global" {
        Scope::Global
    } else {
        Scope::Workspace(Uuid::parse_str(s).expect("vector scope is a uuid"))
    }
}

fn load() -> (Vectors, Keyring) {
    let v: Vectors = serde_json::from_slice(&std::fs::read(PATH).expect("vectors file")).expect("vectors parse");
    let k = Keyring::parse(v.keyring.to_string().as_bytes()).expect("vector keyring parses");
    (v, k)
}

#[test]
fn vectors_encrypt_to_the_committed_bytes() {
    if std::env::var_os("SECRETGATE_WRITE_VECTORS").is_some() {
        write_vectors();
    }
    let (file, keyring) = load();
    assert!(file.vectors.len() >= 6);
    for v in &file.vectors {
        let nonce: [u8; 12] = hex::decode(&v.nonce_hex).unwrap().try_into().unwrap();
        let blob = keyring
            .encrypt_with_nonce(v.key_version, nonce, v.plaintext.as_bytes(), scope(&v.scope), &v.key_name)
            .unwrap();
        assert_eq!(hex::encode(&blob), v.ciphertext_hex, "vector {} / {}", v.scope, v.key_name);
        assert_eq!(secretgate_core::associated_data(scope(&v.scope), &v.key_name), v.associated_data.as_bytes());
    }
}

#[test]
fn vectors_decrypt_to_the_committed_plaintexts() {
    let (file, keyring) = load();
    for v in &file.vectors {
        let blob = hex::decode(&v.ciphertext_hex).unwrap();
        assert_eq!(keyring.decrypt(&blob, v.key_version, scope(&v.scope), &v.key_name).unwrap(), v.plaintext);
        // Under another key name the same bytes must not open.
        let other = format!("{}_X", v.key_name);
        assert_eq!(
            keyring.decrypt(&blob, v.key_version, scope(&v.scope), &other).unwrap_err().code(),
            Code::DecryptFailed
        );
    }
}

fn write_vectors() {
    let keyring_json = serde_json::json!({
        "current_version": 2,
        "keys": {
            "1": "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=",
            "2": "H+Wfe8Xk9cS3Xy3c0n1lJ8h2Vd0pB6tq4m9aRzOcYkE="
        }
    });
    let keyring = Keyring::parse(keyring_json.to_string().as_bytes()).unwrap();
    let ws = "6f1c2d3e-4b5a-4798-8a7b-0c1d2e3f4a5b";
    let cases: [(i32, [u8; 12], &str, &str, &str); 7] = [
        (1, [0; 12], ws, "MODEL", "anthropic:claude-opus-4-7"),
        (2, [1; 12], ws, "MODEL", "anthropic:claude-opus-4-7"),
        (2, *b"secretgate01", ws, "ANTHROPIC_API_KEY", "sk-ant-test-0000000000"),
        (2, *b"secretgate02", "global", "OPENAI_API_KEY", "sk-openai-global-test"),
        (2, *b"secretgate03", ws, "LLM_PROVIDER", "platform"),
        (2, *b"secretgate04", ws, "EMPTY", ""),
        (1, *b"secretgate05", "global", "UNICODE", "clé → 鍵 🔑"),
    ];
    let vectors = cases
        .iter()
        .map(|(version, nonce, sc, key_name, plaintext)| Vector {
            key_version: *version,
            nonce_hex: hex::encode(nonce),
            scope: sc.to_string(),
            key_name: key_name.to_string(),
            associated_data: String::from_utf8(secretgate_core::associated_data(scope(sc), key_name)).unwrap(),
            plaintext: plaintext.to_string(),
            ciphertext_hex: hex::encode(
                keyring.encrypt_with_nonce(*version, *nonce, plaintext.as_bytes(), scope(sc), key_name).unwrap(),
            ),
        })
        .collect();
    let file = Vectors {
        description: "secretgate AES-256-GCM known answers: encrypted_value = nonce(12) || ciphertext || tag(16), \
                      key = keyring.keys[key_version], associated data = UTF-8 of secretgate:v1:<scope>:<key_name>. \
                      Test keys only: never use them for real secrets."
            .into(),
        keyring: keyring_json,
        vectors,
    };
    std::fs::write(PATH, serde_json::to_string_pretty(&file).unwrap() + "\n").unwrap();
}
