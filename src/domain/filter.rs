//! The `ListServers` filter language: an AIP-160 subset. This module owns its
//! grammar, the set of filterable fields, enum-value normalisation and the
//! escaping of wildcard values into SQL LIKE patterns; turning the resulting
//! [`Filter`] into SQL belongs to the store.

use std::fmt;

use super::{ConnectionMethod, ServerStatus, fields::code_point};

/// Longest accepted filter, in characters; keeps parsing cheap for hostile input.
const MAX_LENGTH: usize = 2_000;
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
    let mut parser = Parser {
        chars: input.chars().collect(),
        index: 0,
    };
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

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Comparator {
    Equals,
    NotEquals,
    Has,
}

/// What the left-hand side of a restriction names; bare `labels` is only meaningful with `:`.
enum Target {
    Status,
    ConnectionMethod,
    Field(FilterField),
    LabelPresence,
}

struct Parser {
    chars: Vec<char>,
    index: usize,
}

impl Parser {
    fn peek(&self) -> Option<char> {
        self.chars.get(self.index).copied()
    }

    fn position(&self) -> usize {
        self.index + 1
    }

    fn skip_whitespace(&mut self) {
        while self.peek().is_some_and(char::is_whitespace) {
            self.index += 1;
        }
    }

    fn take_while(&mut self, accept: fn(char) -> bool) -> String {
        let start = self.index;
        while self.peek().is_some_and(accept) {
            self.index += 1;
        }
        self.chars[start..self.index].iter().collect()
    }

    /// Keywords are whole words, so `ORDER` or `NOTE` are not mistaken for `OR` or `NOT`.
    fn eat_keyword(&mut self, keyword: &str) -> bool {
        let start = self.index;
        if self.take_while(is_field_char) == keyword {
            return true;
        }
        self.index = start;
        false
    }

    /// Describes what sits at the current position, for error messages.
    fn found(&self) -> String {
        match self.peek() {
            None => "end of filter".to_string(),
            Some(first) if is_value_char(first) => {
                let end = (self.index..self.chars.len())
                    .find(|&index| !is_value_char(self.chars[index]))
                    .unwrap_or(self.chars.len());
                let word: String = self.chars[self.index..end].iter().collect();
                format!("{word:?}")
            }
            Some(other) => format!("{:?}", other.to_string()),
        }
    }

    fn unexpected(&self, detail: &str) -> FilterError {
        error(format!(
            "unexpected {} at position {}{detail}",
            self.found(),
            self.position()
        ))
    }

    fn expected(&self, what: &str) -> FilterError {
        error(format!(
            "expected {what} at position {}, found {}",
            self.position(),
            self.found()
        ))
    }

    /// AND-joined factors, explicit or by juxtaposition; stops at the end or at ")".
    fn expression(&mut self, depth: usize) -> Result<Filter, FilterError> {
        let mut factors = vec![self.factor(depth)?];
        loop {
            self.skip_whitespace();
            if matches!(self.peek(), None | Some(')')) {
                return Ok(join(factors, true));
            }
            if self.eat_keyword("AND") {
                self.skip_whitespace();
            }
            factors.push(self.factor(depth)?);
        }
    }

    /// AIP-160 makes OR bind tighter than AND, so OR chains are the factors of an AND.
    fn factor(&mut self, depth: usize) -> Result<Filter, FilterError> {
        let mut terms = vec![self.term(depth)?];
        loop {
            self.skip_whitespace();
            if !self.eat_keyword("OR") {
                return Ok(join(terms, false));
            }
            self.skip_whitespace();
            terms.push(self.term(depth)?);
        }
    }

    fn term(&mut self, depth: usize) -> Result<Filter, FilterError> {
        let negated = if self.peek() == Some('-') {
            self.index += 1;
            true
        } else {
            self.eat_keyword("NOT")
        };
        if !negated {
            return self.simple(depth);
        }
        self.skip_whitespace();
        Ok(Filter::Not(Box::new(self.simple(depth)?)))
    }

    fn simple(&mut self, depth: usize) -> Result<Filter, FilterError> {
        if self.peek() != Some('(') {
            return self.restriction();
        }
        let open = self.position();
        if depth >= MAX_DEPTH {
            return Err(error(format!(
                "\"(\" at position {open} nests parentheses deeper than {MAX_DEPTH} levels"
            )));
        }
        self.index += 1;
        self.skip_whitespace();
        let inner = self.expression(depth + 1)?;
        if self.peek() != Some(')') {
            return Err(error(format!("\"(\" at position {open} is never closed")));
        }
        self.index += 1;
        Ok(inner)
    }

    fn restriction(&mut self) -> Result<Filter, FilterError> {
        let start = self.index;
        let name = self.take_while(is_field_char);
        if name.is_empty() || is_keyword(&name) {
            self.index = start;
            return Err(self.expected("a restriction such as status = active, or \"(\""));
        }
        let target = resolve_field(&name, start + 1)?;
        self.skip_whitespace();
        let comparator = self.comparator(&name)?;
        if matches!(target, Target::LabelPresence) && comparator != Comparator::Has {
            return Err(unknown_field(&name, start + 1));
        }
        self.skip_whitespace();
        let value_position = self.position();
        let (value, quoted) = self.value()?;
        if !matches!(self.peek(), None | Some(')')) && !self.peek().is_some_and(char::is_whitespace)
        {
            let hint = if quoted {
                "; separate restrictions with whitespace"
            } else {
                "; quote a value that contains characters other than letters, digits and _ . - * / : @"
            };
            return Err(self.unexpected(hint));
        }
        let filter = build(target, comparator, value, value_position)?;
        Ok(match comparator {
            Comparator::NotEquals => Filter::Not(Box::new(filter)),
            Comparator::Equals | Comparator::Has => filter,
        })
    }

    fn comparator(&mut self, field: &str) -> Result<Comparator, FilterError> {
        let position = self.position();
        let next = self.chars.get(self.index + 1).copied();
        let (comparator, width) = match (self.peek(), next) {
            (Some('='), _) => (Comparator::Equals, 1),
            (Some('!'), Some('=')) => (Comparator::NotEquals, 2),
            (Some(':'), _) => (Comparator::Has, 1),
            (Some(first @ ('<' | '>')), next) => {
                let operator = match next {
                    Some('=') => format!("{first}="),
                    _ => first.to_string(),
                };
                return Err(error(format!(
                    "operator {operator:?} at position {position} is not supported; use =, != or :"
                )));
            }
            _ => return Err(self.expected(&format!("=, != or : after {field:?}"))),
        };
        self.index += width;
        Ok(comparator)
    }

    /// Returns the value's text and whether it was quoted.
    fn value(&mut self) -> Result<(String, bool), FilterError> {
        match self.peek() {
            Some('"') => Ok((self.quoted_string()?, true)),
            Some(first) if is_value_char(first) => {
                let start = self.index;
                let word = self.take_while(is_value_char);
                if is_keyword(&word) {
                    self.index = start;
                    return Err(error(format!(
                        "expected a value at position {}, found keyword {word:?}; quote it to use it as a value",
                        self.position()
                    )));
                }
                Ok((word, false))
            }
            _ => Err(self.expected("a value")),
        }
    }

    fn quoted_string(&mut self) -> Result<String, FilterError> {
        let open = self.position();
        self.index += 1;
        let mut text = String::new();
        loop {
            match self.peek() {
                None => {
                    return Err(error(format!(
                        "string starting at position {open} has no closing \""
                    )));
                }
                Some('"') => {
                    self.index += 1;
                    return Ok(text);
                }
                Some('\\') => match self.chars.get(self.index + 1).copied() {
                    Some(escaped @ ('"' | '\\')) => {
                        text.push(escaped);
                        self.index += 2;
                    }
                    Some(other) => {
                        return Err(error(format!(
                            "unsupported escape \"\\{}\" at position {}; only \\\" and \\\\ are allowed in strings",
                            other.escape_debug(),
                            self.position()
                        )));
                    }
                    None => {
                        return Err(error(format!(
                            "string starting at position {open} has no closing \""
                        )));
                    }
                },
                Some(other) => {
                    text.push(other);
                    self.index += 1;
                }
            }
        }
    }
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

/// Field names stop before `:` so that `labels:env` and `host:db1` split at the operator.
fn is_field_char(character: char) -> bool {
    character.is_ascii_alphanumeric() || matches!(character, '_' | '.' | '-' | '*' | '/' | '@')
}

fn is_value_char(character: char) -> bool {
    is_field_char(character) || character == ':'
}

fn is_keyword(word: &str) -> bool {
    matches!(word, "AND" | "OR" | "NOT")
}

fn is_label_key(key: &str) -> bool {
    !key.is_empty()
        && key
            .chars()
            .all(|character| character.is_ascii_alphanumeric() || matches!(character, '_' | '-'))
}

fn unknown_field(name: &str, position: usize) -> FilterError {
    let hint = if is_keyword(&name.to_ascii_uppercase()) {
        " (the keywords AND, OR and NOT must be uppercase)"
    } else {
        ""
    };
    error(format!(
        "unknown field {name:?} at position {position}{hint}; filterable fields are {FILTERABLE_FIELDS}"
    ))
}

fn invalid_label_key(key: &str, position: usize) -> FilterError {
    error(format!(
        "invalid label key {key:?} at position {position}; a key is one or more letters, digits, \"_\" or \"-\""
    ))
}

fn resolve_field(name: &str, position: usize) -> Result<Target, FilterError> {
    let field = match name {
        "status" => return Ok(Target::Status),
        "connection_method" => return Ok(Target::ConnectionMethod),
        "name" => FilterField::Name,
        "host" => FilterField::Host,
        LABELS => return Ok(Target::LabelPresence),
        _ => {
            let Some(key) = name.strip_prefix("labels.") else {
                return Err(unknown_field(name, position));
            };
            if !is_label_key(key) {
                return Err(invalid_label_key(key, position + "labels.".len()));
            }
            FilterField::Label(key.to_string())
        }
    };
    Ok(Target::Field(field))
}

/// Builds the positive form of a restriction; the caller wraps `!=` in `Not`.
fn build(
    target: Target,
    comparator: Comparator,
    value: String,
    position: usize,
) -> Result<Filter, FilterError> {
    let field = match target {
        Target::LabelPresence if is_label_key(&value) => return Ok(Filter::HasLabel(value)),
        Target::LabelPresence => return Err(invalid_label_key(&value, position)),
        Target::Status => {
            let status = normalise_enum(
                "status",
                "server_status_",
                ServerStatus::ALL,
                &value,
                position,
            );
            return status.map(Filter::StatusIs);
        }
        Target::ConnectionMethod => {
            let method = normalise_enum(
                "connection_method",
                "connection_method_",
                ConnectionMethod::ALL,
                &value,
                position,
            );
            return method.map(Filter::ConnectionMethodIs);
        }
        Target::Field(field) => field,
    };
    Ok(match field {
        FilterField::Label(key) if comparator == Comparator::Has && value == "*" => {
            Filter::HasLabel(key)
        }
        field if value.contains('*') => Filter::Like {
            field,
            pattern: like_pattern(&value),
        },
        field => Filter::Equals { field, value },
    })
}

/// The enum value a filter names: its short wire name or the proto's, in any case (`name` is
/// the field, `prefix` the proto's prefix of its values).
fn normalise_enum<E: Copy + fmt::Display>(
    name: &str,
    prefix: &str,
    allowed: &[E],
    value: &str,
    position: usize,
) -> Result<E, FilterError> {
    let names: Vec<String> = allowed.iter().map(ToString::to_string).collect();
    let allowed_list = names.join(", ");
    if value.contains('*') {
        return Err(error(format!(
            "{name} does not accept wildcards: {value:?} at position {position}; allowed values are {allowed_list}"
        )));
    }
    let lowercase = value.to_ascii_lowercase();
    let short = lowercase.strip_prefix(prefix).unwrap_or(&lowercase);
    match allowed.iter().zip(&names).find(|(_, name)| *name == short) {
        Some((candidate, _)) => Ok(*candidate),
        None => Err(error(format!(
            "unknown value {value:?} for {name} at position {position}; allowed values are {allowed_list}"
        ))),
    }
}

fn like_pattern(value: &str) -> String {
    let mut pattern = String::with_capacity(value.len() + 4);
    for character in value.chars() {
        match character {
            '*' => pattern.push('%'),
            '%' | '_' | '\\' => {
                pattern.push('\\');
                pattern.push(character);
            }
            other => pattern.push(other),
        }
    }
    pattern
}

/// Joins with AND (`conjunction`) or OR, flattening nested joins of the same kind.
fn join(mut items: Vec<Filter>, conjunction: bool) -> Filter {
    if items.len() == 1
        && let Some(only) = items.pop()
    {
        return only;
    }
    let mut flat = Vec::with_capacity(items.len());
    for item in items {
        match item {
            Filter::And(children) if conjunction => flat.extend(children),
            Filter::Or(children) if !conjunction => flat.extend(children),
            other => flat.push(other),
        }
    }
    if conjunction {
        Filter::And(flat)
    } else {
        Filter::Or(flat)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(input: &str) -> Filter {
        match parse(input) {
            Ok(Some(filter)) => filter,
            other => panic!("{input:?} gave {other:?}"),
        }
    }

    fn fails(input: &str) -> String {
        match parse(input) {
            Err(error) => error.message,
            other => panic!("{input:?} gave {other:?}"),
        }
    }

    fn equals(field: FilterField, value: &str) -> Filter {
        Filter::Equals {
            field,
            value: value.to_string(),
        }
    }

    fn like(field: FilterField, pattern: &str) -> Filter {
        Filter::Like {
            field,
            pattern: pattern.to_string(),
        }
    }

    fn not(filter: Filter) -> Filter {
        Filter::Not(Box::new(filter))
    }

    fn label(key: &str) -> FilterField {
        FilterField::Label(key.to_string())
    }

    fn name(value: &str) -> Filter {
        equals(FilterField::Name, value)
    }

    fn status(value: &str) -> Filter {
        Filter::StatusIs(ServerStatus::parse(value).unwrap())
    }

    #[test]
    fn empty_and_whitespace_mean_no_filter() {
        assert_eq!(parse(""), Ok(None));
        assert_eq!(parse("  \t\n "), Ok(None));
    }

    #[test]
    fn comparisons() {
        assert_eq!(ok("name = db1"), name("db1"));
        assert_eq!(ok("name=db1"), name("db1"));
        assert_eq!(
            ok("host != 10.0.0.1"),
            not(equals(FilterField::Host, "10.0.0.1"))
        );
        assert_eq!(
            ok("host:db1.internal:3306"),
            equals(FilterField::Host, "db1.internal:3306")
        );
        assert_eq!(ok("labels.env = prod"), equals(label("env"), "prod"));
        assert_eq!(
            ok("labels.team-a_1 != x"),
            not(equals(label("team-a_1"), "x"))
        );
        assert_eq!(ok("labels.env:prod"), equals(label("env"), "prod"));
    }

    #[test]
    fn label_presence() {
        assert_eq!(ok("labels:env"), Filter::HasLabel("env".into()));
        assert_eq!(ok("labels : \"env\""), Filter::HasLabel("env".into()));
        assert_eq!(ok("labels.env:*"), Filter::HasLabel("env".into()));
        assert_eq!(ok("-labels:env"), not(Filter::HasLabel("env".into())));
        assert_eq!(ok("labels.env = *"), like(label("env"), "%"));
    }

    #[test]
    fn precedence_or_binds_tighter_than_and() {
        assert_eq!(
            ok("name = a AND name = b OR name = c"),
            Filter::And(vec![name("a"), Filter::Or(vec![name("b"), name("c")])])
        );
        assert_eq!(
            ok("name = a OR name = b AND name = c"),
            Filter::And(vec![Filter::Or(vec![name("a"), name("b")]), name("c")])
        );
        assert_eq!(
            ok("NOT name = a OR name = b"),
            Filter::Or(vec![not(name("a")), name("b")])
        );
    }

    #[test]
    fn juxtaposition_means_and() {
        assert_eq!(
            ok("name = a name = b OR name = c"),
            Filter::And(vec![name("a"), Filter::Or(vec![name("b"), name("c")])])
        );
        assert_eq!(
            ok("  status=active\thost:h  "),
            Filter::And(vec![status("active"), equals(FilterField::Host, "h")])
        );
    }

    #[test]
    fn negation() {
        assert_eq!(ok("-status = active"), not(status("active")));
        assert_eq!(ok("NOT status = active"), not(status("active")));
        assert_eq!(
            ok("NOT(name = a OR name = b)"),
            not(Filter::Or(vec![name("a"), name("b")]))
        );
        assert_eq!(ok("-(name = a)"), not(name("a")));
        assert_eq!(ok("name = -a"), name("-a"));
        assert_eq!(ok("- status = active"), not(status("active")));
        // Keywords are whole words only.
        assert_eq!(
            ok("name = ORDER OR name = NOTE"),
            Filter::Or(vec![name("ORDER"), name("NOTE")])
        );
    }

    #[test]
    fn parentheses_and_flattening() {
        assert_eq!(ok("((name = a))"), name("a"));
        assert_eq!(
            ok("(name = a AND name = b) AND name = c name = d"),
            Filter::And(vec![name("a"), name("b"), name("c"), name("d")])
        );
        assert_eq!(
            ok("name = a OR (name = b OR name = c)"),
            Filter::Or(vec![name("a"), name("b"), name("c")])
        );
        assert_eq!(
            ok("(name = a AND name = b) OR name = c"),
            Filter::Or(vec![Filter::And(vec![name("a"), name("b")]), name("c")])
        );
        assert_eq!(
            ok("(name = a)(name = b)"),
            Filter::And(vec![name("a"), name("b")])
        );
    }

    #[test]
    fn quoting_and_escapes() {
        assert_eq!(ok(r#"name = "a b""#), name("a b"));
        assert_eq!(ok(r#"name = "say \"hi\" \\ ok""#), name(r#"say "hi" \ ok"#));
        assert_eq!(ok(r#"name = "AND""#), name("AND"));
        assert_eq!(ok(r#"name = "(x) = y""#), name("(x) = y"));
        assert_eq!(ok(r#"name = """#), name(""));
        assert_eq!(ok("name = \"café ☕\""), name("café ☕"));
    }

    #[test]
    fn wildcards_become_escaped_like_patterns() {
        assert_eq!(
            ok(r#"name = "50%_off*""#),
            like(FilterField::Name, r"50\%\_off%")
        );
        assert_eq!(ok(r#"name = "a\\b*""#), like(FilterField::Name, r"a\\b%"));
        assert_eq!(
            ok("host = *.internal"),
            like(FilterField::Host, "%.internal")
        );
        assert_eq!(ok("name : orders-*"), like(FilterField::Name, "orders-%"));
        assert_eq!(
            ok("name != orders-*"),
            not(like(FilterField::Name, "orders-%"))
        );
        assert_eq!(ok("labels.app = web*"), like(label("app"), "web%"));
        // Without a wildcard the value is taken literally, unescaped.
        assert_eq!(ok(r#"name = "50%_off""#), name("50%_off"));
    }

    #[test]
    fn enum_values_are_normalised() {
        assert_eq!(ok("status = ACTIVE"), status("active"));
        assert_eq!(ok("status = SERVER_STATUS_ACTIVE"), status("active"));
        assert_eq!(ok("status : \"server_status_Pending\""), status("pending"));
        assert_eq!(
            ok("status != Decommissioned"),
            not(status("decommissioned"))
        );
        assert_eq!(
            ok("connection_method = CONNECTION_METHOD_SSH_TUNNEL"),
            Filter::ConnectionMethodIs(ConnectionMethod::SshTunnel)
        );
        assert_eq!(
            ok("connection_method = \"Vpn\""),
            Filter::ConnectionMethodIs(ConnectionMethod::Vpn)
        );
    }

    #[test]
    fn enum_errors() {
        assert_eq!(
            fails("status = running"),
            "unknown value \"running\" for status at position 10; allowed values are pending, active, disconnected, error, decommissioned"
        );
        assert_eq!(
            fails("status = SERVER_STATUS_UNSPECIFIED"),
            "unknown value \"SERVER_STATUS_UNSPECIFIED\" for status at position 10; allowed values are pending, active, disconnected, error, decommissioned"
        );
        assert_eq!(
            fails("connection_method = \"ssh\""),
            "unknown value \"ssh\" for connection_method at position 21; allowed values are direct, vpn, ssh_tunnel"
        );
        assert_eq!(
            fails("status = act*"),
            "status does not accept wildcards: \"act*\" at position 10; allowed values are pending, active, disconnected, error, decommissioned"
        );
    }

    #[test]
    fn field_errors() {
        let fields = "filterable fields are status, connection_method, name, host and labels.KEY (labels:KEY tests presence)";
        assert_eq!(
            fails("color = red"),
            format!("unknown field \"color\" at position 1; {fields}")
        );
        assert_eq!(
            fails("name = a AND mysql_password = x"),
            format!("unknown field \"mysql_password\" at position 14; {fields}")
        );
        assert_eq!(
            fails("NOTE = x"),
            format!("unknown field \"NOTE\" at position 1; {fields}")
        );
        assert_eq!(
            fails("labels = x"),
            format!("unknown field \"labels\" at position 1; {fields}")
        );
        assert_eq!(
            fails("name = a and name = b"),
            format!(
                "unknown field \"and\" at position 10 (the keywords AND, OR and NOT must be uppercase); {fields}"
            )
        );
        assert_eq!(
            fails("labels.a.b = x"),
            "invalid label key \"a.b\" at position 8; a key is one or more letters, digits, \"_\" or \"-\""
        );
        assert_eq!(
            fails("labels. = x"),
            "invalid label key \"\" at position 8; a key is one or more letters, digits, \"_\" or \"-\""
        );
        assert_eq!(
            fails("labels:\"a/b\""),
            "invalid label key \"a/b\" at position 8; a key is one or more letters, digits, \"_\" or \"-\""
        );
    }

    #[test]
    fn operator_errors() {
        assert_eq!(
            fails("name < b"),
            "operator \"<\" at position 6 is not supported; use =, != or :"
        );
        assert_eq!(
            fails("name>=b"),
            "operator \">=\" at position 5 is not supported; use =, != or :"
        );
        assert_eq!(
            fails("name ~ b"),
            "expected =, != or : after \"name\" at position 6, found \"~\""
        );
        assert_eq!(
            fails("name"),
            "expected =, != or : after \"name\" at position 5, found end of filter"
        );
        assert_eq!(
            fails("name ! b"),
            "expected =, != or : after \"name\" at position 6, found \"!\""
        );
    }

    #[test]
    fn structure_errors() {
        let restriction = "expected a restriction such as status = active, or \"(\"";
        assert_eq!(
            fails("name = a AND"),
            format!("{restriction} at position 13, found end of filter")
        );
        assert_eq!(
            fails("OR name = a"),
            format!("{restriction} at position 1, found \"OR\"")
        );
        assert_eq!(
            fails("name = a AND AND name = b"),
            format!("{restriction} at position 14, found \"AND\"")
        );
        assert_eq!(
            fails("()"),
            format!("{restriction} at position 2, found \")\"")
        );
        assert_eq!(
            fails("NOT NOT name = a"),
            format!("{restriction} at position 5, found \"NOT\"")
        );
        assert_eq!(fails("(name = a"), "\"(\" at position 1 is never closed");
        assert_eq!(
            fails("name = a)"),
            "unexpected \")\" at position 9; it has no matching \"(\""
        );
        assert_eq!(
            fails("name = a # b"),
            format!("{restriction} at position 10, found \"#\"")
        );
    }

    #[test]
    fn value_errors() {
        assert_eq!(
            fails("name = "),
            "expected a value at position 8, found end of filter"
        );
        assert_eq!(
            fails("name = (a)"),
            "expected a value at position 8, found \"(\""
        );
        assert_eq!(
            fails("name = OR"),
            "expected a value at position 8, found keyword \"OR\"; quote it to use it as a value"
        );
        assert_eq!(
            fails("name = a,b"),
            "unexpected \",\" at position 9; quote a value that contains characters other than letters, digits and _ . - * / : @"
        );
        assert_eq!(
            fails("name = café"),
            "unexpected \"é\" at position 11; quote a value that contains characters other than letters, digits and _ . - * / : @"
        );
        assert_eq!(
            fails("name = \"a\"name = b"),
            "unexpected \"name\" at position 11; separate restrictions with whitespace"
        );
        assert_eq!(
            fails("name = \"abc"),
            "string starting at position 8 has no closing \""
        );
        assert_eq!(
            fails("name = \"abc\\"),
            "string starting at position 8 has no closing \""
        );
        assert_eq!(
            fails(r#"name = "a\nb""#),
            r#"unsupported escape "\n" at position 10; only \" and \\ are allowed in strings"#
        );
    }

    #[test]
    fn control_characters_are_refused_with_their_position() {
        assert_eq!(
            fails("name = \"a\u{0}b\""),
            "control character U+0000 at position 10 is not allowed in a filter"
        );
        assert_eq!(
            fails("labels.k = \"\u{1b}[31m\""),
            "control character U+001B at position 13 is not allowed in a filter"
        );
        assert_eq!(
            fails("host = \"é\u{7f}\""),
            "control character U+007F at position 10 is not allowed in a filter"
        );
        assert_eq!(ok("name = \"a\tb\""), name("a\tb"));
    }

    #[test]
    fn positions_count_characters_not_bytes() {
        assert_eq!(
            fails("name = \"é\" AND colour = x"),
            "unknown field \"colour\" at position 16; filterable fields are status, connection_method, name, host and labels.KEY (labels:KEY tests presence)"
        );
    }

    #[test]
    fn limits() {
        let longest = format!("name = \"{}\"", "x".repeat(MAX_LENGTH - 9));
        assert_eq!(longest.chars().count(), MAX_LENGTH);
        assert!(parse(&longest).is_ok());
        let too_long = format!("name = \"{}\"", "x".repeat(MAX_LENGTH - 8));
        assert_eq!(
            fails(&too_long),
            "filter is 2001 characters long; the limit is 2000"
        );

        let nested = |depth: usize| format!("{}name = a{}", "(".repeat(depth), ")".repeat(depth));
        assert_eq!(ok(&nested(MAX_DEPTH)), name("a"));
        assert_eq!(
            fails(&nested(MAX_DEPTH + 1)),
            "\"(\" at position 33 nests parentheses deeper than 32 levels"
        );
        assert_eq!(
            fails(&"(".repeat(MAX_LENGTH)),
            "\"(\" at position 33 nests parentheses deeper than 32 levels"
        );
    }

    /// Every error must say where; a panic anywhere fails the test.
    fn assert_no_panic(input: &str) {
        if let Err(error) = parse(input) {
            assert!(
                error.message.contains("at position") || error.message.starts_with("filter is"),
                "{input:?} gave {:?}",
                error.message
            );
        }
    }

    #[test]
    fn garbage_never_panics() {
        let seeds = [
            r#"(status = SERVER_STATUS_ACTIVE OR connection_method:"vpn") AND -name = "db-*" NOT labels:env"#,
            r#"labels.app = "web\"*\\" host != 10.0.0.1:3306 OR (labels.team:* AND NOT (name < x))"#,
            "status=active name=a\u{e9}\u{1F600} OR -(host:h*) labels.a-b!=\"%_\\\\\" AND ((((x))))",
        ];
        for seed in seeds {
            assert_no_panic(seed);
            let chars: Vec<char> = seed.chars().collect();
            for start in 0..chars.len() {
                for end in start..=chars.len() {
                    assert_no_panic(&chars[start..end].iter().collect::<String>());
                }
            }
        }
        let alphabet = b"()\"\\ =!:<>-*.%_AaNnDdOoRrTt\t\xc3\xa9\x00\xff";
        let mut state: u64 = 0x9E37_79B9_7F4A_7C15;
        let mut random = move |bound: usize| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state % bound as u64) as usize
        };
        for round in 0..20_000 {
            let mut bytes = seeds[round % seeds.len()].as_bytes().to_vec();
            for _ in 0..=random(6) {
                let at = random(bytes.len() + 1);
                let byte = if random(2) == 0 {
                    alphabet[random(alphabet.len())]
                } else {
                    random(256) as u8
                };
                match random(4) {
                    0 if at < bytes.len() => bytes[at] = byte,
                    1 if at < bytes.len() => {
                        bytes.remove(at);
                    }
                    2 => {
                        let chunk = bytes[at..]
                            .iter()
                            .take(random(12))
                            .copied()
                            .collect::<Vec<_>>();
                        bytes.splice(at..at, chunk);
                    }
                    _ => bytes.insert(at, byte),
                }
            }
            assert_no_panic(&String::from_utf8_lossy(&bytes));
            let noise: Vec<u8> = (0..random(40))
                .map(|_| alphabet[random(alphabet.len())])
                .collect();
            assert_no_panic(&String::from_utf8_lossy(&noise));
        }
        assert_no_panic(&"NOT -".repeat(400));
        assert_no_panic(&"a=b OR ".repeat(285));
        assert_no_panic(&"\"".repeat(3_000));
    }
}
