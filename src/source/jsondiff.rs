//! MySQL's partial JSON updates (`binlog_row_value_options=PARTIAL_JSON`): a
//! PARTIAL_UPDATE_ROWS event carries, for a JSON column, the list of changes made to the before
//! image instead of the whole after image. Applying them here gives the full after document.

use mysql_common::binlog::{
    jsonb,
    jsondiff::{JsonDiff, JsonDiffOperation},
};
use serde_json::Value as Json;

/// One step of a JSON path: `.member` or `[index]`.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Leg {
    Member(String),
    Index(usize),
}

/// A binary JSON value (as MySQL stores it) as a JSON document.
pub fn jsonb_to_json(value: &jsonb::Value<'_>) -> Result<Json, String> {
    value
        .clone()
        .into_owned()
        .parse()
        .map(Json::from)
        .map_err(|error| format!("unreadable binary JSON: {error}"))
}

/// The after image of a JSON column: `before` with `diffs` applied in order.
pub fn apply(before: &Json, diffs: &[JsonDiff<'_>]) -> Result<Json, String> {
    let mut document = before.clone();
    for diff in diffs {
        let path = diff.path_str();
        let legs = parse_path(&path)?;
        let value = diff.value().map(jsonb_to_json).transpose()?;
        apply_one(&mut document, &legs, diff.operation(), value)
            .map_err(|problem| format!("the JSON diff at {path} {problem}"))?;
    }
    Ok(document)
}

fn apply_one(
    document: &mut Json,
    legs: &[Leg],
    operation: JsonDiffOperation,
    value: Option<Json>,
) -> Result<(), String> {
    let Some((last, parents)) = legs.split_last() else {
        // The path `$` itself: only a replacement of the whole document makes sense.
        return match (operation, value) {
            (JsonDiffOperation::REPLACE, Some(value)) => {
                *document = value;
                Ok(())
            }
            _ => Err("changes the document's root in a way MySQL never writes".into()),
        };
    };
    let parent = parents
        .iter()
        .try_fold(document, step)
        .ok_or("names a place the before image does not have")?;
    match (operation, value) {
        (JsonDiffOperation::REMOVE, _) => remove(parent, last),
        (JsonDiffOperation::REPLACE, Some(value)) => replace(parent, last, value),
        (JsonDiffOperation::INSERT, Some(value)) => insert(parent, last, value),
        _ => Err("carries no value".into()),
    }
}

fn step<'a>(document: &'a mut Json, leg: &Leg) -> Option<&'a mut Json> {
    match (document, leg) {
        (Json::Object(object), Leg::Member(name)) => object.get_mut(name),
        (Json::Array(array), Leg::Index(index)) => array.get_mut(*index),
        _ => None,
    }
}

fn replace(parent: &mut Json, leg: &Leg, value: Json) -> Result<(), String> {
    let target = step(parent, leg).ok_or("replaces a value the before image does not have")?;
    *target = value;
    Ok(())
}

fn insert(parent: &mut Json, leg: &Leg, value: Json) -> Result<(), String> {
    match (parent, leg) {
        (Json::Object(object), Leg::Member(name)) => {
            object.insert(name.clone(), value);
            Ok(())
        }
        (Json::Array(array), Leg::Index(index)) => {
            array.insert((*index).min(array.len()), value);
            Ok(())
        }
        _ => Err("inserts into a value that is neither an object nor an array".into()),
    }
}

fn remove(parent: &mut Json, leg: &Leg) -> Result<(), String> {
    let removed = match (parent, leg) {
        (Json::Object(object), Leg::Member(name)) => object.remove(name).is_some(),
        (Json::Array(array), Leg::Index(index)) if *index < array.len() => {
            array.remove(*index);
            true
        }
        _ => false,
    };
    if removed {
        Ok(())
    } else {
        Err("removes a value the before image does not have".into())
    }
}

/// Parses the paths MySQL writes in JSON diffs: `$`, then `.name`, `."quoted name"` or `[n]`.
fn parse_path(path: &str) -> Result<Vec<Leg>, String> {
    let unreadable = || format!("the JSON diff path {path:?} cannot be read");
    let mut rest = path.strip_prefix('$').ok_or_else(unreadable)?;
    let mut legs = Vec::new();
    while !rest.is_empty() {
        let (leg, after) = if let Some(inner) = rest.strip_prefix('[') {
            let (index, after) = inner.split_once(']').ok_or_else(unreadable)?;
            (
                Leg::Index(index.trim().parse().map_err(|_| unreadable())?),
                after,
            )
        } else if let Some(member) = rest.strip_prefix('.') {
            member_leg(member).ok_or_else(unreadable)?
        } else {
            return Err(unreadable());
        };
        legs.push(leg);
        rest = after;
    }
    Ok(legs)
}

/// A member name after the dot: a JSON string when quoted, else up to the next leg.
fn member_leg(text: &str) -> Option<(Leg, &str)> {
    if text.starts_with('"') {
        let mut escaped = false;
        let end = text
            .char_indices()
            .skip(1)
            .find(|&(_, c)| {
                let closes = c == '"' && !escaped;
                escaped = c == '\\' && !escaped;
                closes
            })?
            .0;
        let name: String = serde_json::from_str(&text[..=end]).ok()?;
        Some((Leg::Member(name), &text[end + 1..]))
    } else {
        let end = text.find(['.', '[']).unwrap_or(text.len());
        (end > 0).then(|| (Leg::Member(text[..end].to_owned()), &text[end..]))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn paths_read_members_quoted_members_and_cells() {
        assert_eq!(
            parse_path(r#"$.a."b c\"d"[2].e"#).unwrap(),
            vec![
                Leg::Member("a".into()),
                Leg::Member("b c\"d".into()),
                Leg::Index(2),
                Leg::Member("e".into())
            ]
        );
        assert_eq!(parse_path("$").unwrap(), vec![]);
        assert!(parse_path("a.b").is_err());
        assert!(parse_path("$[x]").is_err());
        assert!(parse_path("$.").is_err());
    }

    #[test]
    fn operations_replace_insert_and_remove() {
        let mut document = json!({"a": "hulu", "b": [1, 2], "c": {"d": 1}});
        let member = |name: &str| Leg::Member(name.into());
        // Applied in order: each step's path, operation and value.
        let steps = [
            (
                vec![member("a")],
                JsonDiffOperation::REPLACE,
                Some(json!("x")),
            ),
            (
                vec![member("b"), Leg::Index(1)],
                JsonDiffOperation::INSERT,
                Some(json!(9)),
            ),
            (
                vec![member("b"), Leg::Index(7)],
                JsonDiffOperation::INSERT,
                Some(json!(3)),
            ),
            (
                vec![member("c"), member("d")],
                JsonDiffOperation::REMOVE,
                None,
            ),
            (
                vec![member("c"), member("e")],
                JsonDiffOperation::INSERT,
                Some(json!(true)),
            ),
        ];
        for (path, operation, value) in steps {
            apply_one(&mut document, &path, operation, value).unwrap();
        }
        assert_eq!(
            document,
            json!({"a": "x", "b": [1, 9, 2, 3], "c": {"e": true}})
        );
        assert!(
            apply_one(
                &mut document,
                &[member("zz"), member("y")],
                JsonDiffOperation::REPLACE,
                Some(json!(1)),
            )
            .is_err()
        );
        assert!(
            apply_one(
                &mut document,
                &[member("q")],
                JsonDiffOperation::REMOVE,
                None
            )
            .is_err()
        );
    }
}
