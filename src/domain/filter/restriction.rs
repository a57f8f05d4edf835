//! What a restriction means: which fields a filter may name (and label keys), enum values in
//! their short or proto spelling, wildcard values escaped into SQL LIKE patterns, and the
//! flattening of AND/OR joins.

use std::fmt;

use super::parser::is_keyword;
use super::{
    ConnectionMethod, FILTERABLE_FIELDS, Filter, FilterError, FilterField, LABELS, ServerStatus,
    error,
};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Comparator {
    Equals,
    NotEquals,
    Has,
}

/// What the left-hand side of a restriction names; bare `labels` is only meaningful with `:`.
pub(super) enum Target {
    Status,
    ConnectionMethod,
    Field(FilterField),
    LabelPresence,
}

fn is_label_key(key: &str) -> bool {
    !key.is_empty()
        && key
            .chars()
            .all(|character| character.is_ascii_alphanumeric() || matches!(character, '_' | '-'))
}

pub(super) fn unknown_field(name: &str, position: usize) -> FilterError {
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

pub(super) fn resolve_field(name: &str, position: usize) -> Result<Target, FilterError> {
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
pub(super) fn build(
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
pub(super) fn join(mut items: Vec<Filter>, conjunction: bool) -> Filter {
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
