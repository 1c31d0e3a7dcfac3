//! SQLSTATE packing, as Postgres' MAKE_SQLSTATE does it (six bits per
//! character): the extension raises a refusal's code through it, and reads
//! back the code of an error it caught.

/// Packs a five-character SQLSTATE as Postgres does; `None` if it is not one.
pub fn pack_sqlstate(sqlstate: &str) -> Option<i32> {
    let bytes = sqlstate.as_bytes();
    let valid = bytes.len() == 5 && bytes.iter().all(|b| b.is_ascii_digit() || b.is_ascii_uppercase());
    valid
        .then(|| bytes.iter().enumerate().fold(0, |acc, (i, &ch)| acc | (((ch as i32 - '0' as i32) & 0x3F) << (6 * i))))
}

/// The five characters of a packed SQLSTATE.
pub fn unpack_sqlstate(code: i32) -> String {
    (0..5).map(|i| (((code >> (6 * i)) & 0x3F) as u8 + b'0') as char).collect()
}
