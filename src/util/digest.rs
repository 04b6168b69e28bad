//! Digests used as short, stable identifiers (store keys, token hashes).

use base64::Engine;
use sha2::{Digest, Sha256};

/// SHA-256, lower-case hex.
pub fn sha256_hex(data: &[u8]) -> String {
    Sha256::digest(data)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// SHA-256, base64url without padding.
pub fn digest_b64(data: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(Sha256::digest(data))
}

/// Whether `s` is made of base64url characters only (what [`digest_b64`]
/// and the random ids and tokens stepgate hands out are written in).
pub fn is_b64url(s: &str) -> bool {
    s.bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}
