//! The filter grammar of the lists that are read in order of one key (captured changes, schema
//! changes, audit events): an AIP-160 subset of comparisons `field op value` joined by AND, with
//! errors that name the character where the problem is. Which fields a list has, and what their
//! values mean, is the caller's: this file owns the words, operators and quoting.

/// Longest accepted filter, in characters.
pub const MAX_LENGTH: usize = 2_000;
/// Most comparisons in one filter.
const MAX_CONDITIONS: usize = 16;

/// A comparison operator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Comparison {
    Equals,
    NotEquals,
    Less,
    LessOrEqual,
    Greater,
    GreaterOrEqual,
}

impl Comparison {
    /// Whether a value that compares to the operand as `ordering` passes.
    pub fn holds(self, ordering: std::cmp::Ordering) -> bool {
        use std::cmp::Ordering::{Equal, Greater, Less};
        match self {
            Comparison::Equals => ordering == Equal,
            Comparison::NotEquals => ordering != Equal,
            Comparison::Less => ordering == Less,
            Comparison::LessOrEqual => ordering != Greater,
            Comparison::Greater => ordering == Greater,
            Comparison::GreaterOrEqual => ordering != Less,
        }
    }

    /// The operator as a filter writes it.
    pub fn as_str(self) -> &'static str {
        match self {
            Comparison::Equals => "=",
            Comparison::NotEquals => "!=",
            Comparison::Less => "<",
            Comparison::LessOrEqual => "<=",
            Comparison::Greater => ">",
            Comparison::GreaterOrEqual => ">=",
        }
    }

    /// Whether it is `=` or `!=` (the only comparisons of a field without an order).
    pub fn is_equality(self) -> bool {
        matches!(self, Comparison::Equals | Comparison::NotEquals)
    }
}

/// The fields of one list's filter: each name with what the caller makes of it.
#[derive(Debug, Clone, Copy)]
pub struct Fields<F: 'static> {
    pub names: &'static [(&'static str, F)],
    /// The names as an error message lists them ("schema, table and committed_at").
    pub listed: &'static str,
}

/// One comparison as the filter wrote it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Written<F> {
    pub field: F,
    pub comparison: Comparison,
    pub value: String,
    /// Where the value starts (1-based, in characters), for the caller's errors.
    pub value_position: usize,
}

/// Parses `field op value AND ...` over `fields`; empty is no comparison. The error says what is
/// wrong and at which character.
pub fn parse<F: Copy>(input: &str, fields: &Fields<F>) -> Result<Vec<Written<F>>, String> {
    let length = input.chars().count();
    if length > MAX_LENGTH {
        return Err(format!(
            "filter is {length} characters long; the limit is {MAX_LENGTH}"
        ));
    }
    if let Some((index, character)) = super::filter::first_control_character(input) {
        return Err(format!(
            "control character {} at character {} is not allowed in a filter",
            super::fields::code_point(character),
            index + 1
        ));
    }
    let mut lexer = Lexer {
        input,
        chars: input.char_indices().collect(),
        index: 0,
    };
    let mut written = Vec::new();
    if lexer.at_end() {
        return Ok(written);
    }
    loop {
        written.push(comparison(&mut lexer, fields)?);
        if written.len() > MAX_CONDITIONS {
            return Err(format!("filter has more than {MAX_CONDITIONS} comparisons"));
        }
        if lexer.at_end() {
            return Ok(written);
        }
        let position = lexer.position();
        let joiner = lexer.word();
        if joiner != "AND" {
            return Err(format!(
                "expected AND at character {position}, found {joiner:?}; comparisons are joined by AND"
            ));
        }
    }
}

fn comparison<F: Copy>(lexer: &mut Lexer<'_>, fields: &Fields<F>) -> Result<Written<F>, String> {
    lexer.skip_whitespace();
    let position = lexer.position();
    let name = lexer.word();
    let listed = fields.listed;
    if name.is_empty() {
        return Err(format!(
            "expected a field ({listed}) at character {position}"
        ));
    }
    let field = fields
        .names
        .iter()
        .find(|(named, _)| *named == name)
        .map(|(_, field)| *field)
        .ok_or_else(|| {
            format!(
                "unknown field {name:?} at character {position}; filterable fields are {listed}"
            )
        })?;
    let comparison = lexer.comparison()?;
    lexer.skip_whitespace();
    let value_position = lexer.position();
    let value = lexer.value()?;
    Ok(Written {
        field,
        comparison,
        value,
        value_position,
    })
}

struct Lexer<'a> {
    input: &'a str,
    chars: Vec<(usize, char)>,
    index: usize,
}

impl<'a> Lexer<'a> {
    fn skip_whitespace(&mut self) {
        while self
            .chars
            .get(self.index)
            .is_some_and(|(_, c)| c.is_whitespace())
        {
            self.index += 1;
        }
    }

    fn at_end(&mut self) -> bool {
        self.skip_whitespace();
        self.index >= self.chars.len()
    }

    fn position(&self) -> usize {
        self.index + 1
    }

    fn word(&mut self) -> &'a str {
        self.skip_whitespace();
        let start = self.offset();
        while self
            .chars
            .get(self.index)
            .is_some_and(|(_, c)| c.is_alphanumeric() || matches!(c, '_' | '.' | '-' | ':'))
        {
            self.index += 1;
        }
        &self.input[start..self.offset()]
    }

    fn offset(&self) -> usize {
        self.chars
            .get(self.index)
            .map_or(self.input.len(), |(offset, _)| *offset)
    }

    fn comparison(&mut self) -> Result<Comparison, String> {
        self.skip_whitespace();
        let position = self.position();
        let rest = &self.input[self.offset()..];
        let (comparison, length) = [
            ("<=", Comparison::LessOrEqual),
            (">=", Comparison::GreaterOrEqual),
            ("!=", Comparison::NotEquals),
            ("<", Comparison::Less),
            (">", Comparison::Greater),
            ("=", Comparison::Equals),
        ]
        .into_iter()
        .find(|(text, _)| rest.starts_with(text))
        .map(|(text, comparison)| (comparison, text.len()))
        .ok_or_else(|| {
            format!("expected a comparison (=, !=, <, <=, >, >=) at character {position}")
        })?;
        self.index += length;
        Ok(comparison)
    }

    fn value(&mut self) -> Result<String, String> {
        self.skip_whitespace();
        let position = self.position();
        if self.chars.get(self.index).map(|(_, c)| *c) != Some('"') {
            let word = self.word();
            if word.is_empty() {
                return Err(format!("expected a value at character {position}"));
            }
            return Ok(word.to_owned());
        }
        self.index += 1;
        let mut value = String::new();
        loop {
            match self.chars.get(self.index).map(|(_, c)| *c) {
                None => {
                    return Err(format!(
                        "the string starting at character {position} is not closed"
                    ));
                }
                Some('"') => {
                    self.index += 1;
                    return Ok(value);
                }
                Some('\\') => {
                    self.index += 1;
                    if let Some((_, escaped)) = self.chars.get(self.index) {
                        value.push(*escaped);
                        self.index += 1;
                    }
                }
                Some(other) => {
                    value.push(other);
                    self.index += 1;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FIELDS: Fields<u8> = Fields {
        names: &[("a", 1), ("b.c", 2)],
        listed: "a and b.c",
    };

    #[test]
    fn comparisons_are_read_with_their_value_positions() {
        let written = parse(r#"a >= 5 AND b.c != "x \"y\"""#, &FIELDS).unwrap();
        assert_eq!(
            written,
            vec![
                Written {
                    field: 1,
                    comparison: Comparison::GreaterOrEqual,
                    value: "5".into(),
                    value_position: 6
                },
                Written {
                    field: 2,
                    comparison: Comparison::NotEquals,
                    value: "x \"y\"".into(),
                    value_position: 19
                },
            ]
        );
        assert!(parse("   ", &FIELDS).unwrap().is_empty());
    }

    #[test]
    fn errors_name_the_character() {
        assert_eq!(
            parse("z = 1", &FIELDS).unwrap_err(),
            "unknown field \"z\" at character 1; filterable fields are a and b.c"
        );
        assert_eq!(
            parse("a = 1 OR a = 2", &FIELDS).unwrap_err(),
            "expected AND at character 7, found \"OR\"; comparisons are joined by AND"
        );
        assert_eq!(
            parse("a ~ 1", &FIELDS).unwrap_err(),
            "expected a comparison (=, !=, <, <=, >, >=) at character 3"
        );
        let many = vec!["a = 1"; MAX_CONDITIONS + 1].join(" AND ");
        assert!(parse(&many, &FIELDS).unwrap_err().contains("more than 16"));
    }
}
