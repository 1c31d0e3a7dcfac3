//! Random bytes, versioned test keys, and the rotation fixtures (rows whose
//! plaintexts derive from a salt, checked after a rotation).

use crate::cluster::Cluster;
use crate::errors::Described;
use anyhow::Result;
use base64::Engine;
use sqlx::postgres::PgConnection;
use std::collections::BTreeMap;
use std::io::Read;

/// `n` random bytes from the kernel.
pub fn random_bytes(n: usize) -> Vec<u8> {
    let mut buf = vec![0u8; n];
    std::fs::File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut buf)).expect("read /dev/urandom");
    buf
}

/// A short random lowercase hex string, for unique names.
pub fn random_hex(bytes: usize) -> String {
    hex::encode(random_bytes(bytes))
}

/// Versioned random AES-256 keys and the keyring JSON that holds them.
#[derive(Clone)]
pub struct TestKeys {
    pub current_version: i32,
    pub keys: BTreeMap<i32, Vec<u8>>,
}

impl TestKeys {
    /// Versions 1..=`versions`, the last one current.
    pub fn generate(versions: i32) -> TestKeys {
        let mut keys = TestKeys { current_version: versions, keys: BTreeMap::new() };
        for v in 1..=versions {
            keys.keys.insert(v, random_bytes(32));
        }
        keys
    }

    /// Adds a fresh random key `version` and makes it current (rotation).
    pub fn add_version(&mut self, version: i32) -> &mut Self {
        self.keys.insert(version, random_bytes(32));
        self.current_version = version;
        self
    }

    /// The same keys with `version` current: what an application writing
    /// before a rotation produced (rows under an older version), without
    /// touching the server's keyring.
    pub fn at_version(&self, version: i32) -> TestKeys {
        assert!(self.keys.contains_key(&version), "no key version {version}");
        TestKeys { current_version: version, keys: self.keys.clone() }
    }

    /// The same keys without `version` (an old key retired).
    pub fn without(&self, version: i32) -> TestKeys {
        let mut keys = self.clone();
        keys.keys.remove(&version);
        keys
    }

    /// `{"current_version": N, "keys": {"1": "<base64>", ...}}`
    pub fn to_json(&self) -> String {
        let keys: serde_json::Map<String, serde_json::Value> =
            self.keys.iter().map(|(v, k)| (v.to_string(), serde_json::Value::String(b64(k)))).collect();
        serde_json::json!({"current_version": self.current_version, "keys": keys}).to_string()
    }

    /// The same keys as the pure core sees them, to check ciphertexts independently.
    pub fn keyring(&self) -> secretgate_core::Keyring {
        secretgate_core::Keyring::parse(self.to_json().as_bytes()).expect("test keyring parses")
    }

    /// Every key in base64 and hex, to assert none of them leaks anywhere.
    pub fn encodings(&self) -> Vec<String> {
        self.keys.values().flat_map(|k| [b64(k), hex::encode(k)]).collect()
    }
}

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

// ---------------------------------------------------------------------------
// Rotation fixtures (rotate.rs, faults.rs): rows whose plaintexts derive from a salt

pub fn restore_baseline_keyring(cluster: &Cluster) {
    cluster.write_keyring(&cluster.initial_keys().to_json(), 0o600);
}

/// The baseline keys plus a fresh version 3, current, written to the keyring.
pub fn rotate_keyring(cluster: &Cluster) -> TestKeys {
    let mut keys = cluster.initial_keys().clone();
    keys.add_version(3);
    for k in keys.encodings() {
        cluster.remember_secret(&k);
    }
    cluster.write_keyring(&keys.to_json(), 0o600);
    keys
}

/// Rows whose plaintext is not the one `populate` derived (rows named in
/// `skip` excluded). Fails if any row cannot be decrypted.
pub async fn mismatches(conn: &mut PgConnection, salt: &str, skip: &[(uuid::Uuid, String)]) -> Result<i64> {
    let skip_ws: Vec<uuid::Uuid> = skip.iter().map(|s| s.0).collect();
    let skip_keys: Vec<String> = skip.iter().map(|s| s.1.clone()).collect();
    sqlx::query_scalar(
        "SELECT (SELECT count(*) FROM public.workspace_secrets s
                 WHERE secretgate.decrypt(s.encrypted_value, s.encryption_version, s.workspace_id, s.key)
                       IS DISTINCT FROM md5($1 || substr(s.key, 3))
                   AND (s.workspace_id, s.key) NOT IN (SELECT * FROM unnest($2::uuid[], $3::text[])))
              + (SELECT count(*) FROM public.global_secrets g
                 WHERE secretgate.decrypt(g.encrypted_value, g.encryption_version, NULL, g.key)
                       IS DISTINCT FROM md5($1 || 'g' || substr(g.key, 3)))",
    )
    .bind(salt)
    .bind(&skip_ws)
    .bind(&skip_keys)
    .fetch_one(&mut *conn)
    .await
    .described("compare every plaintext with the derived one")
}

/// md5 over every plaintext, in a stable order. Decrypted with
/// `secretgate.decrypt` on the stored columns: `read_secret` (one lookup per
/// row) gives the same plaintexts but takes ~20x longer over 100,000 rows.
pub async fn checksum(conn: &mut PgConnection) -> Result<String> {
    sqlx::query_scalar(
        "SELECT md5(coalesce((SELECT string_agg(secretgate.decrypt(encrypted_value, encryption_version, workspace_id, key), ','
                                                ORDER BY workspace_id, key)
                              FROM public.workspace_secrets), '')
                    || '|' ||
                    coalesce((SELECT string_agg(secretgate.decrypt(encrypted_value, encryption_version, NULL, key), ',' ORDER BY key)
                              FROM public.global_secrets), ''))",
    )
    .fetch_one(&mut *conn)
    .await
    .described("checksum of every plaintext")
}

/// (encryption_version, rows) over both tables.
pub async fn histogram(conn: &mut PgConnection) -> Result<Vec<(i32, i64)>> {
    sqlx::query_as(
        "SELECT encryption_version, count(*) FROM
           (SELECT encryption_version FROM public.workspace_secrets UNION ALL SELECT encryption_version FROM public.global_secrets) x
         GROUP BY 1 ORDER BY 1",
    )
    .fetch_all(&mut *conn)
    .await
    .described("versions histogram")
}

/// (state, rows) of verify_secrets over everything.
pub async fn verify_states(conn: &mut PgConnection) -> Result<Vec<(String, Option<String>, i64)>> {
    sqlx::query_as("SELECT state, error_code, count(*) FROM secretgate.verify_secrets() GROUP BY 1, 2 ORDER BY 1, 2")
        .fetch_all(&mut *conn)
        .await
        .described("verify_secrets")
}
