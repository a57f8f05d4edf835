//! API key secrets: generation, the stored hash, and parsing of the bearer header.

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use rand::RngCore;
use sha2::{Digest, Sha256};

/// Every key starts with this, so leaked keys are recognisable.
pub const KEY_PREFIX: &str = "dbt_";
const SECRET_BYTES: usize = 32;
/// Length of a well-formed key: the prefix and 43 base64url characters.
const KEY_LENGTH: usize = KEY_PREFIX.len() + 43;

/// A new random key (256 bits).
pub fn generate() -> String {
    let mut secret = [0u8; SECRET_BYTES];
    rand::rng().fill_bytes(&mut secret);
    format!("{KEY_PREFIX}{}", URL_SAFE_NO_PAD.encode(secret))
}

/// The stored form of a key. A fast hash is enough: the secret has 256 bits of entropy.
pub fn hash(key: &str) -> Vec<u8> {
    Sha256::digest(key.as_bytes()).to_vec()
}

/// The part of a key that may be shown in listings.
pub fn display_prefix(key: &str) -> String {
    key.chars().take(KEY_PREFIX.len() + 6).collect()
}

/// Whether a string has the shape of a key (checked before any lookup).
pub fn is_well_formed(key: &str) -> bool {
    key.len() == KEY_LENGTH
        && key.starts_with(KEY_PREFIX)
        && key[KEY_PREFIX.len()..]
            .bytes()
            .all(|byte| byte.is_ascii_alphanumeric() || byte == b'-' || byte == b'_')
}

/// What an authorization header holds.
#[derive(Debug, PartialEq, Eq)]
pub enum Credentials<'a> {
    Missing,
    Malformed,
    Key(&'a str),
}

/// Reads `Bearer <key>` (scheme case-insensitive).
pub fn parse_authorization(header: Option<&str>) -> Credentials<'_> {
    let Some(header) = header else {
        return Credentials::Missing;
    };
    let Some((scheme, key)) = header.trim().split_once(' ') else {
        return Credentials::Malformed;
    };
    let key = key.trim();
    if !scheme.eq_ignore_ascii_case("bearer") || !is_well_formed(key) {
        return Credentials::Malformed;
    }
    Credentials::Key(key)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_keys_are_well_formed_and_distinct() {
        let first = generate();
        let second = generate();
        assert!(is_well_formed(&first), "{first}");
        assert_ne!(first, second);
        assert_eq!(hash(&first).len(), 32);
        assert_eq!(display_prefix(&first).len(), 10);
    }

    #[test]
    fn authorization_headers() {
        let key = generate();
        assert_eq!(parse_authorization(None), Credentials::Missing);
        assert_eq!(
            parse_authorization(Some(&format!("Bearer {key}"))),
            Credentials::Key(key.as_str())
        );
        assert_eq!(
            parse_authorization(Some(&format!("bearer {key}"))),
            Credentials::Key(key.as_str())
        );
        assert_eq!(parse_authorization(Some(&key)), Credentials::Malformed);
        assert_eq!(
            parse_authorization(Some("Bearer dbt_short")),
            Credentials::Malformed
        );
        assert_eq!(
            parse_authorization(Some(&format!("Basic {key}"))),
            Credentials::Malformed
        );
    }
}
