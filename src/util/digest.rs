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
