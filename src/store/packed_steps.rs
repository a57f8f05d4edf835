//! A server's onboarding steps as the store reads and writes them: written as the `steps` jsonb,
//! read from `steps_packed`, the text array PostgreSQL derives from it (migration 000014), in
//! PostgreSQL's binary array format, so that a server read parses no JSON (the steps' JSON was
//! about 19k instructions of a GetServer, `scripts/bench callgrind`). A WatchServers history
//! row, which keeps the server as JSON, reads them from its `steps` member.

use std::io::Write;

use diesel::{
    deserialize::{self, FromSql, FromSqlRow},
    expression::AsExpression,
    pg::{Pg, PgValue},
    serialize::{self, Output, ToSql},
    sql_types::{Array, Jsonb, Nullable, Text},
};

use crate::domain::{OnboardingStep, StepStatus, onboarding::StepProgress, stored_time};

/// The version byte of PostgreSQL's binary jsonb format, followed by the JSON text.
const JSONB_VERSION: u8 = 1;

/// The steps of a servers row, in their stored order.
#[derive(Debug, Clone, PartialEq, Eq, FromSqlRow, AsExpression, serde::Deserialize)]
#[diesel(sql_type = Jsonb)]
#[serde(transparent)]
pub struct StoredSteps(pub Vec<StepProgress>);

impl ToSql<Jsonb, Pg> for StoredSteps {
    fn to_sql<'b>(&'b self, out: &mut Output<'b, '_, Pg>) -> serialize::Result {
        out.write_all(&[JSONB_VERSION])?;
        serde_json::to_writer(out, &self.0)?;
        Ok(serialize::IsNull::No)
    }
}

impl FromSql<Array<Nullable<Text>>, Pg> for StoredSteps {
    fn from_sql(value: PgValue<'_>) -> deserialize::Result<Self> {
        let mut elements = Elements::new(value.as_bytes())?;
        let mut steps = Vec::with_capacity(OnboardingStep::ALL.len());
        while elements.remaining > 0 {
            steps.push(step(&mut elements)?);
        }
        Ok(StoredSteps(steps))
    }
}

/// One step: its seven fields, the number of its warnings, and the warnings.
fn step(elements: &mut Elements<'_>) -> deserialize::Result<StepProgress> {
    let name = elements.required()?;
    let name = OnboardingStep::parse(name).ok_or_else(|| corrupt("step name", name))?;
    let status = elements.required()?;
    let status = StepStatus::parse(status).ok_or_else(|| corrupt("step status", status))?;
    let started_at = elements.time()?;
    let completed_at = elements.time()?;
    let message = elements.required()?.to_owned();
    let error = elements.next()?.map(str::to_owned);
    let attempts = elements.number("step attempts")?;
    let count: usize = elements.number("step warnings")?;
    let mut warnings = Vec::with_capacity(count.min(elements.remaining));
    for _ in 0..count {
        warnings.push(elements.required()?.to_owned());
    }
    Ok(StepProgress {
        name,
        status,
        started_at,
        completed_at,
        message,
        error,
        attempts,
        warnings,
    })
}

fn corrupt(what: &str, text: &str) -> Box<dyn std::error::Error + Send + Sync> {
    format!("stored {what} {text:?}").into()
}

/// The elements of a one-dimensional text array in PostgreSQL's binary format: a header
/// (dimensions, a null flag, the element type, then each dimension's length and lower bound),
/// then each element as its length (-1 for NULL) and its bytes.
struct Elements<'a> {
    bytes: &'a [u8],
    remaining: usize,
}

impl<'a> Elements<'a> {
    fn new(bytes: &'a [u8]) -> deserialize::Result<Elements<'a>> {
        let mut elements = Elements {
            bytes,
            remaining: 0,
        };
        let dimensions = elements.int()?;
        elements.int()?; // whether there are NULLs
        elements.int()?; // the element type
        match dimensions {
            0 => {}
            1 => {
                elements.remaining = usize::try_from(elements.int()?)?;
                elements.int()?; // the lower bound
            }
            _ => return Err("the packed steps are not a one-dimensional array".into()),
        }
        Ok(elements)
    }

    fn int(&mut self) -> deserialize::Result<i32> {
        let (head, rest) = self
            .bytes
            .split_first_chunk::<4>()
            .ok_or("the packed steps end early")?;
        self.bytes = rest;
        Ok(i32::from_be_bytes(*head))
    }

    /// The next element; none when it is NULL.
    fn next(&mut self) -> deserialize::Result<Option<&'a str>> {
        if self.remaining == 0 {
            return Err("the packed steps end within a step".into());
        }
        self.remaining -= 1;
        let Ok(length) = usize::try_from(self.int()?) else {
            return Ok(None);
        };
        if self.bytes.len() < length {
            return Err("the packed steps end within an element".into());
        }
        let (text, rest) = self.bytes.split_at(length);
        self.bytes = rest;
        Ok(Some(std::str::from_utf8(text)?))
    }

    fn required(&mut self) -> deserialize::Result<&'a str> {
        self.next()?
            .ok_or_else(|| "a packed step lacks a field".into())
    }

    fn time(&mut self) -> deserialize::Result<Option<chrono::DateTime<chrono::Utc>>> {
        match self.next()? {
            Some(text) => Ok(Some(
                stored_time::parse(text).ok_or_else(|| corrupt("step time", text))?,
            )),
            None => Ok(None),
        }
    }

    fn number<T: std::str::FromStr>(&mut self, what: &str) -> deserialize::Result<T> {
        let text = self.required()?;
        text.parse().map_err(|_| corrupt(what, text))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A text array in the binary format, as PostgreSQL sends `steps_packed`.
    fn packed(elements: &[Option<&str>]) -> Vec<u8> {
        let mut bytes = Vec::new();
        for value in [1, 1, 25, elements.len() as i32, 1] {
            bytes.extend_from_slice(&i32::to_be_bytes(value));
        }
        for element in elements {
            match element {
                Some(text) => {
                    bytes.extend_from_slice(&(text.len() as i32).to_be_bytes());
                    bytes.extend_from_slice(text.as_bytes());
                }
                None => bytes.extend_from_slice(&(-1i32).to_be_bytes()),
            }
        }
        bytes
    }

    fn read(bytes: &[u8]) -> deserialize::Result<StoredSteps> {
        const TEXT_ARRAY_OID: std::num::NonZeroU32 = std::num::NonZeroU32::new(1009).unwrap();
        FromSql::<Array<Nullable<Text>>, Pg>::from_sql(PgValue::new(bytes, &TEXT_ARRAY_OID))
    }

    #[test]
    fn reads_the_steps_as_their_json_says() {
        let bytes = packed(&[
            Some("provisioning"),
            Some("completed"),
            Some("2026-12-03T15:37:36.249220Z"),
            None,
            Some("ok \"quoted\" é"),
            None,
            Some("1"),
            Some("2"),
            Some("w1"),
            Some("w,2"),
            Some("awaiting_firewall"),
            Some("failed"),
            None,
            None,
            Some(""),
            Some("refused"),
            Some("0"),
            Some("0"),
        ]);
        let json = serde_json::json!([
            {"name": "provisioning", "status": "completed",
             "started_at": "2026-12-03T15:37:36.249220Z", "completed_at": null,
             "message": "ok \"quoted\" é", "error": null, "attempts": 1, "warnings": ["w1", "w,2"]},
            {"name": "awaiting_firewall", "status": "failed", "started_at": null,
             "completed_at": null, "message": "", "error": "refused", "attempts": 0},
        ]);
        let from_json: StoredSteps = serde_json::from_value(json).unwrap();
        assert_eq!(read(&bytes).unwrap(), from_json);
    }

    #[test]
    fn an_empty_array_is_no_steps_and_broken_ones_are_errors() {
        let mut empty = Vec::new();
        for value in [0, 0, 25] {
            empty.extend_from_slice(&i32::to_be_bytes(value));
        }
        assert_eq!(read(&empty).unwrap(), StoredSteps(Vec::new()));
        let short = packed(&[Some("provisioning"), Some("completed")]);
        assert!(read(&short).is_err());
        let bad_name = packed(&[
            Some("nope"),
            Some("pending"),
            None,
            None,
            Some(""),
            None,
            Some("0"),
            Some("0"),
        ]);
        assert!(read(&bad_name).is_err());
        let truncated = &packed(&[Some("provisioning")])[..22];
        assert!(read(truncated).is_err());
    }
}
