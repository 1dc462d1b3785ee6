//! API keys: `hcp_` followed by 64 hex digits (256 random bits). Only the SHA-256 of a key is
//! stored; lookups hash the presented key. A fast hash is right here: the keys are random, not
//! passwords, so there is nothing to brute-force.

use rand::RngCore;
use sha2::{Digest, Sha256};

/// Every key starts with this, so that leaked keys are easy to scan for.
pub const KEY_PREFIX: &str = "hcp_";

/// Characters of a key kept in the database to tell keys apart (`hcp_` and 8 hex digits).
pub const DISPLAY_PREFIX_LEN: usize = 12;

/// A new random key.
pub fn generate() -> String {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    let mut key = String::with_capacity(KEY_PREFIX.len() + 64);
    key.push_str(KEY_PREFIX);
    for b in bytes {
        key.push(char::from(HEX[usize::from(b >> 4)]));
        key.push(char::from(HEX[usize::from(b & 0x0f)]));
    }
    key
}

const HEX: &[u8; 16] = b"0123456789abcdef";

/// SHA-256 of a key (or of any presented bearer token).
pub fn hash(key: &str) -> [u8; 32] {
    Sha256::digest(key.as_bytes()).into()
}

/// SHA-256 of arbitrary bytes (request fingerprints).
pub fn fingerprint(bytes: &[u8]) -> [u8; 32] {
    Sha256::digest(bytes).into()
}

/// The part of a key shown in listings.
pub fn display_prefix(key: &str) -> &str {
    key.get(..DISPLAY_PREFIX_LEN).unwrap_or(key)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_prefixed_random_hex_and_never_repeat() {
        let a = generate();
        let b = generate();
        assert_ne!(a, b);
        assert!(a.starts_with(KEY_PREFIX));
        assert_eq!(a.len(), 68);
        assert!(a[4..].bytes().all(|c| c.is_ascii_hexdigit()));
        assert_eq!(display_prefix(&a).len(), DISPLAY_PREFIX_LEN);
    }

    #[test]
    fn the_hash_is_sha256_of_the_key() {
        // sha256("abc"), FIPS 180-2 test vector.
        let h = hash("abc");
        assert_eq!(&h[..4], &[0xba, 0x78, 0x16, 0xbf]);
        assert_ne!(hash(&generate()), hash(&generate()));
    }
}
