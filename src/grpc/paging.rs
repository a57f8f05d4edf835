//! Keyset pagination shared by the list calls: page sizes, and opaque page tokens that carry a
//! cursor with a digest of the query they belong to, so a token is only good for its own query.

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
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

/// The token of the page after `cursor`.
pub fn encode_page_token<C: Serialize>(cursor: C, query: &str) -> String {
    let token = Token {
        cursor,
        query: query.to_owned(),
    };
    URL_SAFE_NO_PAD.encode(serde_json::to_vec(&token).unwrap_or_default())
}

/// The cursor of a token (none for an empty one); `mismatch` says what a token of another query
/// belongs to.
pub fn decode_page_token<C: DeserializeOwned>(
    token: &str,
    query: &str,
    mismatch: &str,
) -> Result<Option<C>, ApiError> {
    if token.is_empty() {
        return Ok(None);
    }
    let bytes = URL_SAFE_NO_PAD.decode(token).map_err(|_| not_issued())?;
    let token: Token<C> = serde_json::from_slice(&bytes).map_err(|_| not_issued())?;
    if token.query != query {
        return Err(invalid_page_token(&format!(
            "belongs to {mismatch}; start from the first page"
        )));
    }
    Ok(Some(token.cursor))
}

/// A token that this service did not issue.
pub fn not_issued() -> ApiError {
    invalid_page_token("is not a token this service issued")
}

fn invalid_page_token(description: &str) -> ApiError {
    let mut violations = Violations::default();
    violations.add("page_token", description);
    ApiError::Invalid(violations)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Serialize, Deserialize, PartialEq)]
    struct After {
        after: i64,
    }

    #[test]
    fn tokens_round_trip_and_are_bound_to_their_query() {
        let query = query_digest(&["s", "table = a"]);
        let token = encode_page_token(After { after: 42 }, &query);
        assert_eq!(
            decode_page_token::<After>(&token, &query, "another query").unwrap(),
            Some(After { after: 42 })
        );
        assert!(decode_page_token::<After>(&token, &query_digest(&["s", ""]), "x").is_err());
        assert!(decode_page_token::<After>("garbage!", &query, "x").is_err());
        assert_eq!(decode_page_token::<After>("", &query, "x").unwrap(), None);
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
