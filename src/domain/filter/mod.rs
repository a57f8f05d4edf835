//! The `ListServers` filter language: an AIP-160 subset. This module owns its
//! grammar, the set of filterable fields, enum-value normalisation and the
//! escaping of wildcard values into SQL LIKE patterns; turning the resulting
//! [`Filter`] into SQL belongs to the store.
//!
//! This file owns the public face: the [`Filter`] tree, its fields and errors, the limits and
//! [`parse`]. The lexer and recursive-descent parser live in `parser`; what a restriction's
//! field and value mean (field names, enum values, wildcards, AND/OR flattening) in
//! `restriction`; the unit tests in `tests`.

use super::{ConnectionMethod, ServerStatus, fields::code_point};

mod matching;
mod parser;
mod restriction;
#[cfg(test)]
mod tests;

use parser::Parser;

/// Longest accepted filter, in characters; keeps parsing cheap for hostile input.
pub const MAX_LENGTH: usize = 2_000;
/// Deepest accepted parenthesis nesting; bounds the parser's recursion.
const MAX_DEPTH: usize = 32;
const FILTERABLE_FIELDS: &str =
    "status, connection_method, name, host and labels.KEY (labels:KEY tests presence)";
const LABELS: &str = "labels";

/// A parsed ListServers filter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Filter {
    /// All of the filters hold.
    And(Vec<Filter>),
    /// At least one of the filters holds.
    Or(Vec<Filter>),
    /// The filter does not hold.
    Not(Box<Filter>),
    /// The server's status is this one.
    StatusIs(ServerStatus),
    /// The server is reached this way.
    ConnectionMethodIs(ConnectionMethod),
    /// The field equals the value exactly.
    Equals { field: FilterField, value: String },
    /// The field matches a SQL LIKE pattern: `*` became `%`; `%`, `_` and `\` in the client's text are escaped with `\`.
    Like { field: FilterField, pattern: String },
    /// The label KEY is present.
    HasLabel(String),
}

/// A text field of a server that a filter may compare or match.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FilterField {
    /// The server's display name.
    Name,
    /// The server's host name or address.
    Host,
    /// The value of the label with this key.
    Label(String),
}

/// Why a filter was rejected; the message is shown to the client as is, so it must say what is wrong and where (quote the offending token and its 1-based character position).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct FilterError {
    /// The client-facing explanation.
    pub message: String,
}

/// Parses a filter; Ok(None) for an empty one.
pub fn parse(input: &str) -> Result<Option<Filter>, FilterError> {
    let length = input.chars().count();
    if length > MAX_LENGTH {
        return Err(error(format!(
            "filter is {length} characters long; the limit is {MAX_LENGTH}"
        )));
    }
    if let Some((index, character)) = first_control_character(input) {
        return Err(error(format!(
            "control character {} at position {} is not allowed in a filter",
            code_point(character),
            index + 1
        )));
    }
    let mut parser = Parser::new(input);
    parser.skip_whitespace();
    if parser.peek().is_none() {
        return Ok(None);
    }
    let filter = parser.expression(0)?;
    // The expression stops only at the end or at a ")" it cannot match.
    if parser.peek().is_some() {
        return Err(parser.unexpected("; it has no matching \"(\""));
    }
    Ok(Some(filter))
}

/// The first character no stored text holds (NUL among them, which PostgreSQL cannot store), with
/// its 0-based index; white space is the grammar's separator and is left to it.
pub fn first_control_character(input: &str) -> Option<(usize, char)> {
    input
        .chars()
        .enumerate()
        .find(|(_, character)| character.is_control() && !character.is_whitespace())
}

fn error(message: String) -> FilterError {
    FilterError { message }
}
