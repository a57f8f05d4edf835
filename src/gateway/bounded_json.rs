//! A request body's JSON, read with a bound on every array and object: an entry past
//! `max_entries` is counted, never kept, so a body of 100,000 table names costs the count, not
//! 100,000 values and their two translations (the probe of issue 32 measured 257 MB for one).
//! The bound is the longest list any request rule allows; the refusal names the field by its
//! proto path, as the validators would, with the exact count.

use std::fmt;

use prost_reflect::{Kind, MessageDescriptor};
use serde::de::{DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Value as Json};

/// An array or object longer than the bound: where (JSON keys and indexes from the root) and
/// how many entries it has.
#[derive(Debug, PartialEq, Eq)]
pub struct TooManyEntries {
    pub path: Vec<String>,
    pub entries: usize,
    pub max_entries: usize,
}

/// Why a body could not be read.
#[derive(Debug)]
pub enum BoundedError {
    TooMany(TooManyEntries),
    Syntax(serde_json::Error),
}

/// Parses `bytes` as one JSON value, refusing any array or object of more than `max_entries`.
pub fn parse(bytes: &[u8], max_entries: usize) -> Result<Json, BoundedError> {
    let mut over = None;
    let mut path = Vec::new();
    let mut deserializer = serde_json::Deserializer::from_slice(bytes);
    let seed = Bounded {
        max_entries,
        path: &mut path,
        over: &mut over,
    };
    let parsed = seed.deserialize(&mut deserializer).and_then(|json| {
        deserializer.end()?;
        Ok(json)
    });
    match (parsed, over) {
        (_, Some(too_many)) => Err(BoundedError::TooMany(too_many)),
        (Ok(json), None) => Ok(json),
        (Err(error), None) => Err(BoundedError::Syntax(error)),
    }
}

/// The proto path of a JSON path under `message` (`stream_options.tables` for
/// `streamOptions/tables`), array indexes left out; keys that name no field stay as sent.
pub fn field_path(message: &MessageDescriptor, path: &[String]) -> String {
    let mut names = Vec::new();
    let mut current = Some(message.clone());
    for key in path {
        let Some(message) = current.take() else {
            if key.parse::<usize>().is_err() {
                names.push(key.clone());
            }
            continue;
        };
        let field = message
            .get_field_by_json_name(key)
            .or_else(|| message.get_field_by_name(key));
        match field {
            Some(field) => {
                names.push(field.name().to_owned());
                current = match field.kind() {
                    Kind::Message(inner) if !field.is_map() => Some(inner),
                    _ => None,
                };
            }
            None => names.push(key.clone()),
        }
    }
    names.join(".")
}

/// One value, bounded, at `path`; the first value past the bound is recorded in `over`.
struct Bounded<'a> {
    max_entries: usize,
    path: &'a mut Vec<String>,
    over: &'a mut Option<TooManyEntries>,
}

impl<'de> DeserializeSeed<'de> for Bounded<'_> {
    type Value = Json;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Json, D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl Bounded<'_> {
    fn nested(&mut self) -> Bounded<'_> {
        Bounded {
            max_entries: self.max_entries,
            path: self.path,
            over: self.over,
        }
    }

    /// Records the refusal; the caller counts the rest of the entries without keeping them.
    fn refuse<E: serde::de::Error>(&mut self, entries: usize) -> E {
        *self.over = Some(TooManyEntries {
            path: self.path.clone(),
            entries,
            max_entries: self.max_entries,
        });
        E::custom("too many entries")
    }
}

impl<'de> Visitor<'de> for Bounded<'_> {
    type Value = Json;

    fn expecting(&self, formatter: &mut fmt::Formatter) -> fmt::Result {
        formatter.write_str("a JSON value")
    }

    fn visit_bool<E>(self, value: bool) -> Result<Json, E> {
        Ok(Json::Bool(value))
    }

    fn visit_i64<E>(self, value: i64) -> Result<Json, E> {
        Ok(Json::from(value))
    }

    fn visit_u64<E>(self, value: u64) -> Result<Json, E> {
        Ok(Json::from(value))
    }

    fn visit_f64<E>(self, value: f64) -> Result<Json, E> {
        Ok(serde_json::Number::from_f64(value).map_or(Json::Null, Json::Number))
    }

    fn visit_str<E>(self, value: &str) -> Result<Json, E> {
        Ok(Json::String(value.to_owned()))
    }

    fn visit_string<E>(self, value: String) -> Result<Json, E> {
        Ok(Json::String(value))
    }

    fn visit_unit<E>(self) -> Result<Json, E> {
        Ok(Json::Null)
    }

    fn visit_none<E>(self) -> Result<Json, E> {
        Ok(Json::Null)
    }

    fn visit_seq<A: SeqAccess<'de>>(mut self, mut seq: A) -> Result<Json, A::Error> {
        let mut items = Vec::new();
        loop {
            self.path.push(items.len().to_string());
            let item = seq.next_element_seed(self.nested());
            self.path.pop();
            match item? {
                Some(item) if items.len() < self.max_entries => items.push(item),
                Some(_) => {
                    let mut entries = items.len() + 1;
                    while seq.next_element::<IgnoredAny>()?.is_some() {
                        entries += 1;
                    }
                    return Err(self.refuse(entries));
                }
                None => return Ok(Json::Array(items)),
            }
        }
    }

    fn visit_map<A: MapAccess<'de>>(mut self, mut map: A) -> Result<Json, A::Error> {
        let mut object = Map::new();
        while let Some(key) = map.next_key::<String>()? {
            if object.len() == self.max_entries {
                map.next_value::<IgnoredAny>()?;
                let mut entries = object.len() + 1;
                while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {
                    entries += 1;
                }
                return Err(self.refuse(entries));
            }
            self.path.push(key);
            let value = map.next_value_seed(self.nested());
            let key = self.path.pop().unwrap_or_default();
            object.insert(key, value?);
        }
        Ok(Json::Object(object))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn values_within_the_bound_are_read_as_serde_json_reads_them() {
        let text = r#"{"a": [1, -2, 3.5, "x", null, true], "b": {"c": {}}, "d": []}"#;
        let parsed = parse(text.as_bytes(), 6).unwrap();
        assert_eq!(parsed, serde_json::from_str::<Json>(text).unwrap());
    }

    #[test]
    fn a_longer_array_or_object_is_refused_with_its_path_and_exact_count() {
        let long: Vec<&str> = vec!["x"; 100_000];
        let body = json!({ "server": { "streamOptions": { "tables": long } } }).to_string();
        let Err(BoundedError::TooMany(too_many)) = parse(body.as_bytes(), 1_000) else {
            panic!("not refused");
        };
        assert_eq!(
            too_many,
            TooManyEntries {
                path: vec!["server".into(), "streamOptions".into(), "tables".into()],
                entries: 100_000,
                max_entries: 1_000,
            }
        );
        let labels: Map<String, Json> = (0..1_001).map(|at| (at.to_string(), json!("v"))).collect();
        let body = json!({ "labels": labels }).to_string();
        let Err(BoundedError::TooMany(too_many)) = parse(body.as_bytes(), 1_000) else {
            panic!("not refused");
        };
        assert_eq!(
            (too_many.path, too_many.entries),
            (vec!["labels".into()], 1_001)
        );
        // In an array of objects, the index is in the path.
        let body = json!([{}, { "deep": [1, 2, 3] }]).to_string();
        let Err(BoundedError::TooMany(too_many)) = parse(body.as_bytes(), 2) else {
            panic!("not refused");
        };
        assert_eq!(too_many.path, ["1", "deep"]);
    }

    #[test]
    fn bad_json_is_a_syntax_error() {
        assert!(matches!(
            parse(b"{\"a\": [1,", 10),
            Err(BoundedError::Syntax(_))
        ));
        assert!(matches!(parse(b"{} {}", 10), Err(BoundedError::Syntax(_))));
    }
}
