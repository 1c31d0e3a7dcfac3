//! Replays every saved fuzz input under `tests/fuzz-regressions/<target>/`
//! (seeds, and each crash `scripts/fuzz.sh` ever found) through the same
//! target bodies the fuzzer runs, so a fixed crash stays fixed without
//! cargo-fuzz installed.

#[path = "../../fuzz/src/lib.rs"]
mod bodies;

use std::path::Path;

fn replay(target: &str, body: fn(&[u8])) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fuzz-regressions").join(target);
    let mut entries: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", dir.display()))
        .map(|e| e.expect("directory entry").path())
        .filter(|p| p.is_file())
        .collect();
    entries.sort();
    assert!(!entries.is_empty(), "no saved inputs under {}", dir.display());
    for path in &entries {
        // Only the file name on failure: the input itself may hold key-shaped bytes.
        eprintln!("replaying {target}/{}", path.file_name().unwrap().to_string_lossy());
        body(&std::fs::read(path).expect("read a saved input"));
    }
    eprintln!("{target}: replayed {} inputs", entries.len());
}

#[test]
fn keyring_parse_inputs() {
    replay("keyring_parse", bodies::keyring_parse);
}

#[test]
fn decrypt_inputs() {
    replay("decrypt", bodies::decrypt);
}

#[test]
fn roundtrip_inputs() {
    replay("roundtrip", bodies::roundtrip);
}
