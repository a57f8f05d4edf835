//! Timestamps inside stored JSON (onboarding steps, stream progress), read by a fast path for
//! the one form the service writes (chrono's `2026-12-03T15:37:36.249220Z`) and by chrono's
//! RFC 3339 parser for anything else. chrono's general parser took about 5.5k instructions of
//! a GetServer (`scripts/bench callgrind`); this path takes about 2.6k, its String included.

use chrono::{DateTime, NaiveDate, NaiveTime, Utc};
use serde::{Deserialize, Deserializer, de::Error};

/// For `#[serde(default, deserialize_with = "stored_time::optional")]` on an
/// `Option<DateTime<Utc>>`.
pub fn optional<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<DateTime<Utc>>, D::Error> {
    let Some(text) = Option::<String>::deserialize(deserializer)? else {
        return Ok(None);
    };
    parse(&text)
        .map(Some)
        .ok_or_else(|| D::Error::custom(format!("not an RFC 3339 timestamp: {text:?}")))
}

/// For `#[serde(deserialize_with = "stored_time::required")]` on a `DateTime<Utc>`.
pub fn required<'de, D: Deserializer<'de>>(deserializer: D) -> Result<DateTime<Utc>, D::Error> {
    let text = String::deserialize(deserializer)?;
    parse(&text).ok_or_else(|| D::Error::custom(format!("not an RFC 3339 timestamp: {text:?}")))
}

/// An RFC 3339 timestamp in UTC.
pub fn parse(text: &str) -> Option<DateTime<Utc>> {
    utc_fast_path(text).or_else(|| {
        DateTime::parse_from_rfc3339(text)
            .ok()
            .map(|time| time.with_timezone(&Utc))
    })
}

/// `YYYY-MM-DDTHH:MM:SS[.F{1,9}]Z`; None for any other form (the general parser decides).
fn utc_fast_path(text: &str) -> Option<DateTime<Utc>> {
    let bytes = text.as_bytes();
    let separators = [(4, b'-'), (7, b'-'), (10, b'T'), (13, b':'), (16, b':')];
    if bytes.len() < 20
        || bytes.last() != Some(&b'Z')
        || separators.iter().any(|&(at, byte)| bytes[at] != byte)
    {
        return None;
    }
    let number = |digits: &[u8]| {
        digits.iter().try_fold(0u32, |value, &digit| {
            digit
                .is_ascii_digit()
                .then(|| value * 10 + u32::from(digit - b'0'))
        })
    };
    let nanos = match &bytes[19..bytes.len() - 1] {
        [] => 0,
        [b'.', digits @ ..] if (1..=9).contains(&digits.len()) => {
            number(digits)? * 10u32.pow(9 - digits.len() as u32)
        }
        _ => return None,
    };
    let year = i32::try_from(number(&bytes[0..4])?).ok()?;
    let date = NaiveDate::from_ymd_opt(year, number(&bytes[5..7])?, number(&bytes[8..10])?)?;
    let (hour, minute, second) = (
        number(&bytes[11..13])?,
        number(&bytes[14..16])?,
        number(&bytes[17..19])?,
    );
    // A leap second (:60) is left to chrono, which has its own rule for it.
    let time = NaiveTime::from_hms_nano_opt(hour, minute, second, nanos)?;
    Some(date.and_time(time).and_utc())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chrono(text: &str) -> Option<DateTime<Utc>> {
        DateTime::parse_from_rfc3339(text)
            .ok()
            .map(|time| time.with_timezone(&Utc))
    }

    #[test]
    fn the_fast_path_agrees_with_chrono() {
        for text in [
            "2026-12-03T15:37:36Z",
            "2026-12-03T15:37:36.2Z",
            "2026-12-03T15:37:36.249Z",
            "2026-12-03T15:37:36.249220Z",
            "2026-12-03T15:37:36.249220123Z",
            "2024-02-29T23:59:59.999999Z",
            "1970-01-01T00:00:00Z",
        ] {
            assert!(utc_fast_path(text).is_some(), "{text} takes the fast path");
            assert_eq!(utc_fast_path(text), chrono(text), "{text}");
        }
    }

    #[test]
    fn other_forms_go_to_chrono() {
        for text in [
            "2026-12-03T15:37:36+00:00",
            "2026-12-03T16:37:36.5+01:00",
            "2016-12-31T23:59:60Z",
        ] {
            assert_eq!(utc_fast_path(text), None, "{text}");
            assert_eq!(parse(text), chrono(text), "{text}");
            assert!(parse(text).is_some(), "{text}");
        }
    }

    #[test]
    fn what_is_no_timestamp_is_refused() {
        for text in [
            "",
            "2026-12-03",
            "2026-02-30T00:00:00Z",
            "2026-12-03T24:00:00Z",
            "2026-12-03T15:37:36.Z",
            "2026-12-03T15:37:3xZ",
            "+026-12-03T15:37:36Z",
        ] {
            assert_eq!(parse(text), None, "{text}");
        }
    }

    #[test]
    fn reads_what_serde_writes() {
        #[derive(Deserialize)]
        struct Stored {
            #[serde(default, deserialize_with = "optional")]
            at: Option<DateTime<Utc>>,
        }
        let now = crate::domain::now();
        let json = format!("{{\"at\": {}}}", serde_json::to_string(&now).unwrap());
        let stored: Stored = serde_json::from_str(&json).unwrap();
        assert_eq!(stored.at, Some(now));
        let stored: Stored = serde_json::from_str("{\"at\": null}").unwrap();
        assert_eq!(stored.at, None);
        let stored: Stored = serde_json::from_str("{}").unwrap();
        assert_eq!(stored.at, None);
        assert!(serde_json::from_str::<Stored>("{\"at\": \"yesterday\"}").is_err());
    }
}
