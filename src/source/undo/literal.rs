//! MySQL literals for the undo script: identifiers in backticks, and each captured JSON value
//! written back by its column's kind. Whatever the data holds, a literal never contains a quote,
//! a backslash or a control character of its own: text that is not plain printable ASCII is
//! written as the hex of its UTF-8 bytes, so the script is ASCII and nothing can leave a literal.

use base64::Engine;
use serde_json::Value as Json;

use crate::source::decode::ColumnKind;

/// Why a captured value cannot be written as a literal of its column.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct LiteralError(pub String);

/// A name in backticks, a backtick in it doubled. MySQL names cannot hold NUL; one that does is
/// refused rather than written.
pub fn identifier(name: &str) -> Result<String, LiteralError> {
    if name.contains('\0') {
        return Err(LiteralError(format!(
            "the name {:?} holds a NUL character, which MySQL names cannot",
            comment_text(name)
        )));
    }
    Ok(format!("`{}`", name.replace('`', "``")))
}

/// `schema`.`table`.
pub fn qualified(schema: &str, table: &str) -> Result<String, LiteralError> {
    Ok(format!("{}.{}", identifier(schema)?, identifier(table)?))
}

/// Whether `text` can stand between single quotes as it is: printable ASCII without `'` or `\`.
fn plain(text: &str) -> bool {
    text.bytes()
        .all(|byte| (0x20..0x7f).contains(&byte) && byte != b'\'' && byte != b'\\')
}

/// A character string: `'text'` when plain, else `_utf8mb4 X'<hex of its UTF-8 bytes>'`.
pub fn text(value: &str) -> String {
    if plain(value) {
        format!("'{value}'")
    } else {
        format!("_utf8mb4 X'{}'", hex::encode_upper(value.as_bytes()))
    }
}

/// A byte string: `X'<hex>'`.
pub fn bytes(value: &[u8]) -> String {
    format!("X'{}'", hex::encode_upper(value))
}

/// Text for a `--` comment: printable ASCII kept (but backslashes), anything else as
/// `<U+XXXX>`, so a comment stays one line whatever a name holds (the client ignores quotes in
/// a `-- ` comment, which runs to the end of its line).
pub fn comment_text(value: &str) -> String {
    let mut kept = String::with_capacity(value.len());
    for character in value.chars() {
        if (' '..='~').contains(&character) && character != '\\' {
            kept.push(character);
        } else {
            kept.push_str(&format!("<U+{:04X}>", u32::from(character)));
        }
    }
    kept
}

/// `-?digits`.
fn is_integer(text: &str) -> bool {
    let digits = text.strip_prefix('-').unwrap_or(text);
    !digits.is_empty() && digits.bytes().all(|byte| byte.is_ascii_digit())
}

/// `-?digits[.digits]` or `-?.digits`: a plain decimal, as MySQL prints DECIMAL.
fn is_decimal(text: &str) -> bool {
    let unsigned = text.strip_prefix('-').unwrap_or(text);
    let (whole, fraction) = unsigned.split_once('.').unwrap_or((unsigned, ""));
    let digits = |part: &str| part.bytes().all(|byte| byte.is_ascii_digit());
    !(whole.is_empty() && fraction.is_empty())
        && digits(whole)
        && digits(fraction)
        && (!unsigned.contains('.') || !fraction.is_empty())
}

/// A JSON number as MySQL reads it: serde_json writes integers and floats (`1e300` too) in forms
/// MySQL accepts; checked anyway, since nothing unchecked goes into the script.
fn number(value: &serde_json::Number) -> Result<String, LiteralError> {
    let text = value.to_string();
    let valid = !text.is_empty()
        && text
            .bytes()
            .all(|byte| byte.is_ascii_digit() || matches!(byte, b'-' | b'+' | b'.' | b'e' | b'E'));
    if valid {
        Ok(text)
    } else {
        Err(LiteralError(format!("{text:?} is not a number")))
    }
}

/// A string that must be made of `allowed` characters only, quoted.
fn checked_quoted(
    value: &str,
    what: &str,
    allowed: impl Fn(u8) -> bool,
) -> Result<String, LiteralError> {
    if !value.is_empty() && value.bytes().all(allowed) {
        Ok(format!("'{value}'"))
    } else {
        Err(LiteralError(format!(
            "{:?} is not a {what} value",
            comment_text(value)
        )))
    }
}

/// A TIMESTAMP as captured (RFC 3339, `0000-00-00T00:00:00Z` for the zero value) as MySQL's
/// `'YYYY-MM-DD HH:MM:SS[.ffffff]'` in UTC: the script sets time_zone to +00:00.
fn timestamp(value: &str) -> Result<String, LiteralError> {
    if value.starts_with("0000-00-00") {
        return Ok("'0000-00-00 00:00:00'".to_owned());
    }
    let time = chrono::DateTime::parse_from_rfc3339(value)
        .map_err(|_| {
            LiteralError(format!(
                "{:?} is not an RFC 3339 timestamp",
                comment_text(value)
            ))
        })?
        .with_timezone(&chrono::Utc);
    let micros = time.timestamp_subsec_micros();
    let fraction = if micros == 0 {
        String::new()
    } else {
        format!(".{micros:06}")
    };
    Ok(format!("'{}{fraction}'", time.format("%Y-%m-%d %H:%M:%S")))
}

/// One captured value as a literal of a column of `kind`.
pub fn value(value: &Json, kind: &ColumnKind) -> Result<String, LiteralError> {
    match (kind, value) {
        (_, Json::Null) => Ok("NULL".to_owned()),
        (ColumnKind::Json, json) => Ok(text(&json.to_string())),
        (_, Json::Number(number_value)) => number(number_value),
        (ColumnKind::Signed | ColumnKind::Unsigned(_) | ColumnKind::Year, Json::String(digits))
            if is_integer(digits) =>
        {
            Ok(digits.clone())
        }
        (ColumnKind::Decimal | ColumnKind::Float, Json::String(digits)) if is_decimal(digits) => {
            Ok(digits.clone())
        }
        (ColumnKind::Date, Json::String(date)) => {
            checked_quoted(date, "DATE", |byte| byte.is_ascii_digit() || byte == b'-')
        }
        (ColumnKind::DateTime, Json::String(time)) => {
            checked_quoted(&time.replacen('T', " ", 1), "DATETIME", |byte| {
                byte.is_ascii_digit() || matches!(byte, b'-' | b':' | b'.' | b' ')
            })
        }
        (ColumnKind::Time, Json::String(time)) => checked_quoted(time, "TIME", |byte| {
            byte.is_ascii_digit() || matches!(byte, b'-' | b':' | b'.')
        }),
        (ColumnKind::Timestamp, Json::String(time)) => timestamp(time),
        (ColumnKind::Binary, Json::String(encoded)) => base64::engine::general_purpose::STANDARD
            .decode(encoded)
            .map(|decoded| bytes(&decoded))
            .map_err(|_| LiteralError("a binary value is not base64".to_owned())),
        // A BIT as its number: MySQL compares a BIT column with a number, not with X'..'.
        (ColumnKind::Bit, Json::String(encoded)) => base64::engine::general_purpose::STANDARD
            .decode(encoded)
            .ok()
            .filter(|decoded| decoded.len() <= 8)
            .map(|decoded| {
                decoded
                    .iter()
                    .fold(0u64, |bits, byte| bits << 8 | u64::from(*byte))
                    .to_string()
            })
            .ok_or_else(|| LiteralError("a BIT value is not base64 of at most 8 bytes".to_owned())),
        (ColumnKind::Text | ColumnKind::Enum(_) | ColumnKind::Set(_), Json::String(string)) => {
            Ok(text(string))
        }
        (kind, other) => Err(LiteralError(format!(
            "{} is not a value of a {kind:?} column",
            comment_text(&other.to_string())
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn literal(json: Json, kind: ColumnKind) -> String {
        value(&json, &kind).unwrap()
    }

    #[test]
    fn identifiers_double_their_backticks() {
        assert_eq!(identifier("a`b").unwrap(), "`a``b`");
        assert_eq!(qualified("s", "t*/--").unwrap(), "`s`.`t*/--`");
        assert!(identifier("a\0b").is_err());
    }

    #[test]
    fn text_is_plain_only_when_nothing_in_it_could_leave_the_quotes() {
        assert_eq!(text("plain -- /* */ text"), "'plain -- /* */ text'");
        assert_eq!(text("it's"), "_utf8mb4 X'69742773'");
        assert_eq!(text("a\\b"), "_utf8mb4 X'615C62'");
        assert_eq!(text("é"), "_utf8mb4 X'C3A9'");
        assert_eq!(text("a\nb"), "_utf8mb4 X'610A62'");
        assert_eq!(text(""), "''");
    }

    #[test]
    fn values_are_written_by_their_column_kind() {
        assert_eq!(literal(json!(null), ColumnKind::Signed), "NULL");
        assert_eq!(literal(json!(-5), ColumnKind::Signed), "-5");
        assert_eq!(
            literal(json!("18446744073709551615"), ColumnKind::Unsigned(64)),
            "18446744073709551615"
        );
        assert_eq!(literal(json!("-12.50"), ColumnKind::Decimal), "-12.50");
        assert_eq!(literal(json!(1.5), ColumnKind::Float), "1.5");
        assert_eq!(literal(json!(2024), ColumnKind::Year), "2024");
        assert_eq!(
            literal(json!("2026-12-02"), ColumnKind::Date),
            "'2026-12-02'"
        );
        assert_eq!(
            literal(json!("2026-12-02T10:05:01.000250"), ColumnKind::DateTime),
            "'2026-12-02 10:05:01.000250'"
        );
        assert_eq!(literal(json!("-26:03:04"), ColumnKind::Time), "'-26:03:04'");
        assert_eq!(
            literal(json!("2025-12-02T10:00:00.5+02:00"), ColumnKind::Timestamp),
            "'2025-12-02 08:00:00.500000'"
        );
        assert_eq!(
            literal(json!("0000-00-00T00:00:00Z"), ColumnKind::Timestamp),
            "'0000-00-00 00:00:00'"
        );
        assert_eq!(literal(json!("AP8="), ColumnKind::Binary), "X'00FF'");
        assert_eq!(literal(json!(""), ColumnKind::Binary), "X''");
        assert_eq!(literal(json!("AFA="), ColumnKind::Bit), "80");
        assert_eq!(
            literal(json!("//////////8="), ColumnKind::Bit),
            u64::MAX.to_string()
        );
        assert_eq!(
            literal(json!({"a": [1, "x"]}), ColumnKind::Json),
            r#"'{"a":[1,"x"]}'"#
        );
        assert_eq!(
            literal(json!("b"), ColumnKind::Enum(vec!["a".into(), "b".into()])),
            "'b'"
        );
        assert_eq!(literal(json!(2), ColumnKind::Enum(Vec::new())), "2");
    }

    #[test]
    fn values_that_are_not_what_their_kind_says_are_refused() {
        for (json, kind) in [
            (json!("1; DROP TABLE t"), ColumnKind::Signed),
            (json!("1e5"), ColumnKind::Decimal),
            (json!("."), ColumnKind::Decimal),
            (json!("2026-01-01' OR 1"), ColumnKind::DateTime),
            (json!("yesterday"), ColumnKind::Timestamp),
            (json!("not base64!"), ColumnKind::Binary),
            (json!(true), ColumnKind::Text),
        ] {
            assert!(value(&json, &kind).is_err(), "{json} as {kind:?}");
        }
    }

    proptest::proptest! {
        #[test]
        fn no_text_leaves_its_literal(input in ".*") {
            let written = text(&input);
            // Only the delimiting quotes, and no backslash or control character at all.
            let inner = written
                .strip_prefix('\'')
                .and_then(|rest| rest.strip_suffix('\''))
                .or_else(|| written.strip_prefix("_utf8mb4 X'").and_then(|rest| rest.strip_suffix('\'')))
                .unwrap();
            proptest::prop_assert!(!inner.contains('\''));
            proptest::prop_assert!(written.bytes().all(|byte| (0x20..0x7f).contains(&byte) && byte != b'\\'));
            if written.starts_with("_utf8mb4") {
                proptest::prop_assert_eq!(hex::decode(inner).unwrap(), input.as_bytes().to_vec());
            } else {
                proptest::prop_assert_eq!(inner, input.as_str());
            }
        }

        #[test]
        fn identifiers_round_trip(input in "[^\u{0}]*") {
            let written = identifier(&input).unwrap();
            let inner = &written[1..written.len() - 1];
            proptest::prop_assert_eq!(inner.replace("``", "`"), input);
        }
    }
}
