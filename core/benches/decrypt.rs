//! The floor for the benchmark's decrypt comparison: the pure core opening one
//! stored 64-byte secret in-process (associated data, AES-256-GCM, UTF-8
//! check), with no Postgres around it. scripts/bench.sh runs it and reads
//! Criterion's estimates; `cargo bench -p secretgate-core --bench decrypt`
//! runs it alone.

use criterion::{black_box, criterion_group, criterion_main, Criterion};
use secretgate_core::{uuid::Uuid, Keyring, Scope};

fn decrypt(c: &mut Criterion) {
    // A throwaway key made here: 32 bytes of a fixed pattern, not a real key.
    let keyring =
        Keyring::parse(br#"{"current_version": 1, "keys": {"1": "AQIDBAUGBwgJCgsMDQ4PEBESExQVFhcYGRobHB0eHyA="}}"#)
            .expect("bench keyring parses");
    let scope = Scope::Workspace(Uuid::from_u128(0x0123_4567_89ab_cdef_0123_4567_89ab_cdef));
    let key = "BENCH_KEY_42";
    // 64 ASCII bytes, as in the in-server comparison.
    let plaintext = "0123456789abcdef".repeat(4);
    let (version, blob) = keyring.encrypt(plaintext.as_bytes(), scope, key).expect("encrypts");

    c.bench_function("decrypt_64B", |b| {
        b.iter(|| {
            keyring.decrypt(black_box(&blob), black_box(version), black_box(scope), black_box(key)).expect("decrypts")
        })
    });
}

criterion_group!(benches, decrypt);
criterion_main!(benches);
