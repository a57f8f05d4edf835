//! A filter evaluated on a server in memory, for WatchServers: the same answer as the store's
//! SQL translation of it gives on the row (LIKE with `\` escapes, case-sensitive comparisons, a
//! missing label neither equal to nor like anything).

use super::{Filter, FilterField};
use crate::domain::server::Server;

impl Filter {
    /// Whether `server` is one ListServers with this filter lists.
    pub fn matches(&self, server: &Server) -> bool {
        match self {
            Filter::And(terms) => terms.iter().all(|term| term.matches(server)),
            Filter::Or(terms) => terms.iter().any(|term| term.matches(server)),
            Filter::Not(term) => !term.matches(server),
            Filter::StatusIs(status) => server.status == *status,
            Filter::ConnectionMethodIs(method) => server.spec.connection_method == *method,
            Filter::HasLabel(key) => server.spec.labels.as_map().contains_key(key),
            Filter::Equals { field, value } => {
                field_text(field, server).is_some_and(|text| text == value)
            }
            Filter::Like { field, pattern } => {
                field_text(field, server).is_some_and(|text| like(pattern, text))
            }
        }
    }
}

fn field_text<'a>(field: &FilterField, server: &'a Server) -> Option<&'a str> {
    match field {
        FilterField::Name => Some(server.spec.name.as_str()),
        FilterField::Host => Some(server.spec.host.as_str()),
        FilterField::Label(key) => server.spec.labels.as_map().get(key).map(String::as_str),
    }
}

/// One element of a LIKE pattern.
#[derive(Clone, Copy, PartialEq)]
enum Token {
    AnyRun,
    AnyOne,
    Exactly(char),
}

fn tokens(pattern: &str) -> Vec<Token> {
    let mut tokens = Vec::new();
    let mut characters = pattern.chars();
    while let Some(character) = characters.next() {
        tokens.push(match character {
            '%' => Token::AnyRun,
            '_' => Token::AnyOne,
            '\\' => Token::Exactly(characters.next().unwrap_or('\\')),
            other => Token::Exactly(other),
        });
    }
    tokens
}

/// SQL LIKE with PostgreSQL's default escape `\`: `%` any run of characters, `_` any one.
/// Greedy with backtracking to the last `%`, so linear in practice and never exponential.
pub fn like(pattern: &str, text: &str) -> bool {
    let pattern = tokens(pattern);
    let text: Vec<char> = text.chars().collect();
    let (mut at, mut next) = (0, 0);
    let mut resume: Option<(usize, usize)> = None;
    while at < text.len() {
        match pattern.get(next) {
            Some(Token::AnyRun) => {
                resume = Some((next, at));
                next += 1;
            }
            Some(Token::AnyOne) => (at, next) = (at + 1, next + 1),
            Some(Token::Exactly(expected)) if *expected == text[at] => {
                (at, next) = (at + 1, next + 1)
            }
            _ => match resume {
                Some((star, from)) => {
                    resume = Some((star, from + 1));
                    (at, next) = (from + 1, star + 1);
                }
                None => return false,
            },
        }
    }
    pattern[next..].iter().all(|token| *token == Token::AnyRun)
}

#[cfg(test)]
mod tests {
    use super::like;

    #[test]
    fn like_follows_postgresql() {
        assert!(like("db-%", "db-1"));
        assert!(like("db-%", "db-"));
        assert!(!like("db-%", "DB-1"));
        assert!(like("%-eu-%", "db-eu-west"));
        assert!(!like("%-eu-%", "db-us-west"));
        assert!(like("a%b%c", "axxbyyc"));
        assert!(!like("a%b%c", "axxbyy"));
        assert!(like("%", ""));
        assert!(!like("_", ""));
        assert!(like("_b", "ab"));
        // Escaped wildcards are themselves.
        assert!(like("100\\%", "100%"));
        assert!(!like("100\\%", "1000"));
        assert!(like("a\\_b", "a_b"));
        assert!(!like("a\\_b", "axb"));
        assert!(like("c:\\\\%", "c:\\dir"));
        assert!(like("ü%", "über"));
        // Pathological input stays linear: no exponential backtracking.
        let text = "a".repeat(2_000);
        assert!(!like(&format!("{}b", "%a".repeat(500)), &text));
    }
}
