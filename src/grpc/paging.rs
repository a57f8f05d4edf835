//! Keyset pagination shared by the list calls: page sizes, the byte budget of a page, and opaque
//! page tokens that carry a
//! cursor with a digest of the query they belong to, so a token is only good for its own query,
//! and an HMAC under the deployment's key, so a token nobody issued is refused before any of it
//! is read.

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use ring::hmac;
use serde::{Deserialize, Serialize, de::DeserializeOwned};
use sha2::{Digest, Sha256};

use super::errors::ApiError;
use crate::domain::Violations;

/// A list call's default and largest page.
#[derive(Debug, Clone, Copy)]
pub struct PageSizes {
    pub default: usize,
    pub max: usize,
}

impl PageSizes {
    /// The page size a request asks for: 0 is the default, larger than the max is the max, and a
    /// negative one is a violation.
    pub fn of(self, requested: i32, violations: &mut Violations) -> usize {
        match requested {
            size if size < 0 => {
                violations.add(
                    "page_size",
                    format!(
                        "{size} is negative; use 0 for the default of {}",
                        self.default
                    ),
                );
                self.default
            }
            0 => self.default,
            size => (size as usize).min(self.max),
        }
    }
}

/// The encoded bytes a page's items may take together, well under the message limit
/// ([`super::codec::MAX_MESSAGE_BYTES`], 4 MiB): a page whose next item would pass it ends
/// early, with a next_page_token that continues with that item. The first item of a page always
/// fits, so a page holds at most `max(PAGE_BYTES, one item)` plus its token.
///
/// The largest Server: `stream_options` holds at most 1,000 schemas of 64 characters and 2 × 1,000
/// tables of 64 + 1 + 64 characters, at most 4 bytes each in UTF-8, with 3 bytes of framing an
/// entry: 1,000 × 259 + 2,000 × 519 = 1.30 MB; 64 labels of 63 + 63 ASCII characters, with
/// framing, 8.6 KB; name, host, user, tunnel, error texts and stream status a few KB more. So a
/// ListServers page is at most about 1.4 MB, a third of the limit, whatever is stored. A change
/// event has no such bound (a row can hold a LONGBLOB): one event past the limit is
/// RESPONSE_TOO_LARGE.
pub const PAGE_BYTES: usize = 1024 * 1024;

/// The bytes `item` adds to a response as one entry of a repeated message field (its encoding
/// and the field's tag and length).
pub fn item_bytes<M: prost::Message>(item: &M) -> usize {
    prost::encoding::message::encoded_len(1, item)
}

/// A short digest of the parts of a query that a token must not outlive.
pub fn query_digest(parts: &[&str]) -> String {
    hex::encode(&Sha256::digest(parts.join("\n"))[..8])
}

/// What a token holds: the cursor's fields and the query digest, side by side.
#[derive(Serialize, Deserialize)]
struct Token<C> {
    #[serde(flatten)]
    cursor: C,
    query: String,
}

/// Issues and checks page tokens: `base64url(json || HMAC-SHA256(json))` under the deployment's
/// page-token key, which every replica shares (it lives in the database), so a token of one
/// replica is good on all of them.
#[derive(Clone)]
pub struct PageTokens {
    key: hmac::Key,
}

impl std::fmt::Debug for PageTokens {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.write_str("PageTokens")
    }
}

const TAG_LEN: usize = 32;

impl PageTokens {
    /// Tokens under `key` (at least 32 random bytes).
    pub fn new(key: &[u8]) -> PageTokens {
        PageTokens {
            key: hmac::Key::new(hmac::HMAC_SHA256, key),
        }
    }

    /// The token of the page after `cursor`.
    pub fn encode<C: Serialize>(&self, cursor: C, query: &str) -> String {
        let token = Token {
            cursor,
            query: query.to_owned(),
        };
        let mut bytes = serde_json::to_vec(&token).unwrap_or_default();
        let tag = hmac::sign(&self.key, &bytes);
        bytes.extend_from_slice(tag.as_ref());
        URL_SAFE_NO_PAD.encode(bytes)
    }

    /// The cursor of a token (none for an empty one); `mismatch` says what a token of another
    /// query belongs to.
    pub fn decode<C: DeserializeOwned>(
        &self,
        token: &str,
        query: &str,
        mismatch: &str,
    ) -> Result<Option<C>, ApiError> {
        if token.is_empty() {
            return Ok(None);
        }
        let bytes = URL_SAFE_NO_PAD.decode(token).map_err(|_| not_issued())?;
        let split = bytes.len().checked_sub(TAG_LEN).ok_or_else(not_issued)?;
        let (json, tag) = bytes.split_at(split);
        hmac::verify(&self.key, json, tag).map_err(|_| not_issued())?;
        let token: Token<C> = serde_json::from_slice(json).map_err(|_| not_issued())?;
        if token.query != query {
            return Err(invalid_page_token(&format!(
                "belongs to {mismatch}; start from the first page"
            )));
        }
        Ok(Some(token.cursor))
    }
}

/// A token that this service did not issue.
pub fn not_issued() -> ApiError {
    invalid_page_token("is not a token this service issued")
}

fn invalid_page_token(description: &str) -> ApiError {
    ApiError::invalid("page_token", description)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Serialize, Deserialize, PartialEq)]
    struct After {
        after: i64,
    }

    fn tokens() -> PageTokens {
        PageTokens::new(&[7; 32])
    }

    #[test]
    fn tokens_round_trip_and_are_bound_to_their_query() {
        let query = query_digest(&["s", "table = a"]);
        let token = tokens().encode(After { after: 42 }, &query);
        assert_eq!(
            tokens()
                .decode::<After>(&token, &query, "another query")
                .unwrap(),
            Some(After { after: 42 })
        );
        assert!(
            tokens()
                .decode::<After>(&token, &query_digest(&["s", ""]), "x")
                .is_err()
        );
        assert!(tokens().decode::<After>("garbage!", &query, "x").is_err());
        assert_eq!(tokens().decode::<After>("", &query, "x").unwrap(), None);
    }

    #[test]
    fn forged_truncated_and_foreign_tokens_are_not_issued() {
        let query = query_digest(&["s"]);
        let token = tokens().encode(After { after: 42 }, &query);
        let refused = |token: &str| match tokens().decode::<After>(token, &query, "x") {
            Err(ApiError::Invalid(violations)) => format!("{violations:?}"),
            other => panic!("{token} was not refused: {other:?}"),
        };
        // The same cursor, edited, without the key.
        let mut bytes = URL_SAFE_NO_PAD.decode(&token).unwrap();
        let forged = String::from_utf8_lossy(&bytes[..bytes.len() - TAG_LEN])
            .replace("42", "-1")
            .into_bytes();
        let forged_token =
            URL_SAFE_NO_PAD.encode([forged, bytes.split_off(bytes.len() - TAG_LEN)].concat());
        assert!(refused(&forged_token).contains("not a token this service issued"));
        assert!(refused(&token[..token.len() - 4]).contains("not a token this service issued"));
        assert!(refused("AAAA").contains("not a token this service issued"));
        // Another deployment's token.
        let foreign = PageTokens::new(&[8; 32]).encode(After { after: 42 }, &query);
        assert!(refused(&foreign).contains("not a token this service issued"));
    }

    #[test]
    fn page_sizes_default_cap_and_refuse_negatives() {
        let sizes = PageSizes {
            default: 50,
            max: 500,
        };
        let mut violations = Violations::default();
        assert_eq!(sizes.of(0, &mut violations), 50);
        assert_eq!(sizes.of(9_999, &mut violations), 500);
        assert_eq!(sizes.of(7, &mut violations), 7);
        assert!(violations.into_result().is_ok());
        let mut violations = Violations::default();
        sizes.of(-1, &mut violations);
        assert!(violations.into_result().is_err());
    }
}
