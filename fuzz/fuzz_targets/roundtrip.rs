#![no_main]
// The body lives in fuzz/src/lib.rs, shared with core/tests/fuzz_regressions.rs.
libfuzzer_sys::fuzz_target!(|data: &[u8]| secretgate_fuzz::roundtrip(data));
