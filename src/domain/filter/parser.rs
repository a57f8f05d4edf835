//! The filter's lexer and recursive-descent parser: characters to tokens (field names, values,
//! quoted strings, keywords, comparators) and tokens to a [`Filter`] tree, with positioned error
//! messages. What a restriction's field and value mean is `restriction`'s.

use super::restriction::{Comparator, Target, build, join, resolve_field, unknown_field};
use super::{Filter, FilterError, MAX_DEPTH, error};

pub(super) struct Parser {
    chars: Vec<char>,
    index: usize,
}

impl Parser {
    pub(super) fn new(input: &str) -> Self {
        Parser {
            chars: input.chars().collect(),
            index: 0,
        }
    }

    pub(super) fn peek(&self) -> Option<char> {
        self.chars.get(self.index).copied()
    }

    fn position(&self) -> usize {
        self.index + 1
    }

    pub(super) fn skip_whitespace(&mut self) {
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

    pub(super) fn unexpected(&self, detail: &str) -> FilterError {
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
    pub(super) fn expression(&mut self, depth: usize) -> Result<Filter, FilterError> {
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

/// Field names stop before `:` so that `labels:env` and `host:db1` split at the operator.
fn is_field_char(character: char) -> bool {
    character.is_ascii_alphanumeric() || matches!(character, '_' | '.' | '-' | '*' | '/' | '@')
}

fn is_value_char(character: char) -> bool {
    is_field_char(character) || character == ':'
}

pub(super) fn is_keyword(word: &str) -> bool {
    matches!(word, "AND" | "OR" | "NOT")
}
