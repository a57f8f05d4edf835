//! The JSON log line: one object per event, in the shape of tracing-subscriber's JSON format
//! (`timestamp`, `level`, `fields`, `target`, and the current `span` with its fields and name),
//! written straight into the line's buffer. tracing-subscriber's own JSON formatter checked every
//! fragment it wrote as UTF-8 and parsed the span's stored fields back into a JSON value for each
//! line: the per-call access line cost a GetServer about a tenth of its instructions.

use std::fmt::{self, Write};

use chrono::{DateTime, Datelike, SecondsFormat, Timelike, Utc};
use tracing::{
    Event, Subscriber,
    field::{Field, Visit},
    span,
};
use tracing_log::NormalizeEvent;
use tracing_subscriber::{
    field::RecordFields,
    fmt::{FmtContext, FormatEvent, FormatFields, FormattedFields, format::Writer},
    registry::LookupSpan,
};

/// Formats each event as one JSON line.
pub struct JsonLines;

/// Keeps a span's fields as the members of a JSON object without its braces, so that every line
/// of the span copies them as they are.
pub struct JsonMembers;

impl<'writer> FormatFields<'writer> for JsonMembers {
    fn format_fields<R: RecordFields>(
        &self,
        mut writer: Writer<'writer>,
        fields: R,
    ) -> fmt::Result {
        let mut members = Members::new(&mut writer, true);
        fields.record(&mut members);
        members.result
    }

    fn add_fields(
        &self,
        current: &'writer mut FormattedFields<Self>,
        fields: &span::Record<'_>,
    ) -> fmt::Result {
        let first = current.fields.is_empty();
        let mut members = Members::new(&mut current.fields, first);
        fields.record(&mut members);
        members.result
    }
}

impl<S> FormatEvent<S, JsonMembers> for JsonLines
where
    S: Subscriber + for<'lookup> LookupSpan<'lookup>,
{
    fn format_event(
        &self,
        context: &FmtContext<'_, S, JsonMembers>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        // Records of the `log` crate carry their real target in fields of their own.
        let normalized = event.normalized_metadata();
        let metadata = normalized.as_ref().unwrap_or_else(|| event.metadata());
        writer.write_str("{\"timestamp\":\"")?;
        timestamp(&mut writer, Utc::now())?;
        writer.write_str("\",\"level\":\"")?;
        writer.write_str(metadata.level().as_str())?;
        writer.write_str("\",\"fields\":{")?;
        let mut members = Members::new(&mut writer, true);
        event.record(&mut members);
        members.result?;
        writer.write_str("},\"target\":")?;
        string(&mut writer, metadata.target())?;
        if let Some(span) = context.parent_span() {
            writer.write_str(",\"span\":{")?;
            let extensions = span.extensions();
            let fields = extensions.get::<FormattedFields<JsonMembers>>();
            if let Some(fields) = fields.filter(|fields| !fields.is_empty()) {
                writer.write_str(fields)?;
                writer.write_str(",")?;
            }
            writer.write_str("\"name\":")?;
            string(&mut writer, span.name())?;
            writer.write_str("}")?;
        }
        writer.write_str("}\n")
    }
}

/// `time` as chrono's RFC 3339 with microseconds and `Z` (`2026-12-05T14:13:16.123456Z`),
/// written digit by digit: chrono's formatter cost each line about 700 instructions.
fn timestamp(out: &mut dyn Write, time: DateTime<Utc>) -> fmt::Result {
    let year = time.year();
    if !(0..=9999).contains(&year) {
        return out.write_str(&time.to_rfc3339_opts(SecondsFormat::Micros, true));
    }
    // A leap second's nanoseconds run past 1e9; chrono writes them as they are, so does this.
    let micros = time.nanosecond() / 1_000;
    let mut text = *b"0000-00-00T00:00:00.000000Z";
    let mut digits = |at: usize, width: usize, mut value: u32| {
        for index in (at..at + width).rev() {
            text[index] = b'0' + (value % 10) as u8;
            value /= 10;
        }
    };
    digits(0, 4, year as u32);
    digits(5, 2, time.month());
    digits(8, 2, time.day());
    digits(11, 2, time.hour());
    digits(14, 2, time.minute());
    digits(17, 2, time.second());
    if micros >= 1_000_000 {
        return out.write_str(&time.to_rfc3339_opts(SecondsFormat::Micros, true));
    }
    digits(20, 6, micros);
    out.write_str(std::str::from_utf8(&text).map_err(|_| fmt::Error)?)
}

/// Writes fields as `"name":value` members, separated by commas.
struct Members<'a> {
    out: &'a mut dyn Write,
    first: bool,
    result: fmt::Result,
}

impl<'a> Members<'a> {
    fn new(out: &'a mut dyn Write, first: bool) -> Members<'a> {
        Members {
            out,
            first,
            result: Ok(()),
        }
    }

    /// One member; the `log` crate's own fields are left out (the line's target says it).
    fn member(&mut self, field: &Field, value: impl FnOnce(&mut dyn Write) -> fmt::Result) {
        let name = field.name();
        if self.result.is_err() || name.starts_with("log.") {
            return;
        }
        self.result = self.name(name.strip_prefix("r#").unwrap_or(name));
        if self.result.is_ok() {
            self.result = value(&mut *self.out);
        }
    }

    fn name(&mut self, name: &str) -> fmt::Result {
        if !std::mem::take(&mut self.first) {
            self.out.write_str(",")?;
        }
        string(&mut *self.out, name)?;
        self.out.write_str(":")
    }
}

impl Visit for Members<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.member(field, |out| string(out, value));
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.member(field, |out| write!(out, "{value}"));
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.member(field, |out| write!(out, "{value}"));
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.member(field, |out| write!(out, "{value}"));
    }

    fn record_f64(&mut self, field: &Field, value: f64) {
        // JSON has no NaN or infinity.
        self.member(field, |out| {
            if value.is_finite() {
                write!(out, "{value}")
            } else {
                out.write_str("null")
            }
        });
    }

    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        self.member(field, |out| quoted(out, format_args!("{value}")));
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.member(field, |out| quoted(out, format_args!("{value:?}")));
    }
}

/// `text` as a JSON string.
fn string(out: &mut dyn Write, text: &str) -> fmt::Result {
    out.write_str("\"")?;
    Escaped(&mut *out).write_str(text)?;
    out.write_str("\"")
}

/// What `value` displays as, as a JSON string, without an intermediate String.
fn quoted(out: &mut dyn Write, value: fmt::Arguments<'_>) -> fmt::Result {
    out.write_str("\"")?;
    Escaped(&mut *out).write_fmt(value)?;
    out.write_str("\"")
}

/// The bytes a JSON string escapes: `"`, `\\` and the control characters.
const ESCAPED: [bool; 256] = {
    let mut escaped = [false; 256];
    let mut byte = 0;
    while byte < 0x20 {
        escaped[byte] = true;
        byte += 1;
    }
    escaped[b'"' as usize] = true;
    escaped[b'\\' as usize] = true;
    escaped
};

/// Escapes what is written to it for the inside of a JSON string.
struct Escaped<'a>(&'a mut dyn Write);

impl Write for Escaped<'_> {
    fn write_str(&mut self, text: &str) -> fmt::Result {
        let bytes = text.as_bytes();
        // Most text needs no escape: one scan of a table, then one write.
        let Some(first) = bytes.iter().position(|&byte| ESCAPED[usize::from(byte)]) else {
            return self.0.write_str(text);
        };
        let mut start = 0;
        for (at, byte) in text.bytes().enumerate().skip(first) {
            let escape = match byte {
                b'"' => Some("\\\""),
                b'\\' => Some("\\\\"),
                b'\n' => Some("\\n"),
                b'\r' => Some("\\r"),
                b'\t' => Some("\\t"),
                0..=0x1f => None,
                _ => continue,
            };
            // Every byte escaped is ASCII, so `at` is a character boundary.
            self.0.write_str(&text[start..at])?;
            match escape {
                Some(escape) => self.0.write_str(escape)?,
                None => write!(self.0, "\\u{byte:04x}")?,
            }
            start = at + 1;
        }
        self.0.write_str(&text[start..])
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use serde_json::{Value, json};
    use tracing_subscriber::{fmt::MakeWriter, layer::SubscriberExt};

    use super::*;

    /// Collects what the subscriber writes.
    #[derive(Clone, Default)]
    struct Lines(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Lines {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(bytes);
            Ok(bytes.len())
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl<'a> MakeWriter<'a> for Lines {
        type Writer = Lines;

        fn make_writer(&'a self) -> Lines {
            self.clone()
        }
    }

    /// The lines `work` logs, each parsed as JSON.
    fn logged(work: impl FnOnce()) -> Vec<Value> {
        let lines = Lines::default();
        let layer = tracing_subscriber::fmt::layer()
            .fmt_fields(JsonMembers)
            .event_format(JsonLines)
            .with_writer(lines.clone());
        tracing::subscriber::with_default(tracing_subscriber::registry().with(layer), work);
        let text = String::from_utf8(lines.0.lock().unwrap().clone()).unwrap();
        text.lines()
            .map(|line| serde_json::from_str(line).unwrap_or_else(|_| panic!("JSON: {line}")))
            .collect()
    }

    #[test]
    fn a_line_has_the_fields_target_and_current_span() {
        let lines = logged(|| {
            let span = tracing::info_span!("call", method = "/a/B", request_id = %"r-1",
                late = tracing::field::Empty);
            span.record("late", 7);
            let _entered = span.enter();
            tracing::info!(count = 3_u64, delta = -2_i64, ok = true, ratio = 0.5, what = ?"x",
                "finished");
        });
        let [line] = &lines[..] else {
            panic!("one line: {lines:?}")
        };
        assert!(line["timestamp"].as_str().unwrap().ends_with('Z'), "{line}");
        assert_eq!(line["level"], "INFO");
        assert_eq!(
            line["fields"],
            json!({"message": "finished", "count": 3, "delta": -2, "ok": true, "ratio": 0.5,
                "what": "\"x\""})
        );
        assert_eq!(line["target"], module_path!());
        assert_eq!(
            line["span"],
            json!({"method": "/a/B", "request_id": "r-1", "late": 7, "name": "call"})
        );
    }

    #[test]
    fn the_timestamp_is_chronos_rfc_3339_with_microseconds() {
        let times = [
            "2026-12-05T14:13:16.123456789Z",
            "2026-01-01T00:00:00Z",
            "0999-09-09T09:09:09.000001Z",
            "2026-06-30T23:59:59.999999999Z",
        ];
        for text in times {
            let time: DateTime<Utc> = text.parse().unwrap();
            let mut written = String::new();
            timestamp(&mut written, time).unwrap();
            assert_eq!(
                written,
                time.to_rfc3339_opts(SecondsFormat::Micros, true),
                "{text}"
            );
        }
    }

    #[test]
    fn text_is_escaped_and_a_line_outside_spans_has_none() {
        let hostile = "quote \" backslash \\ newline \n tab \t bell \u{7} é ✓";
        let lines = logged(|| {
            tracing::warn!(
                text = hostile,
                error = &std::fmt::Error as &dyn std::error::Error
            );
            tracing::info_span!("empty").in_scope(|| tracing::info!("inside"));
        });
        assert_eq!(lines[0]["fields"]["text"], hostile);
        assert_eq!(lines[0]["fields"]["error"], std::fmt::Error.to_string());
        assert_eq!(lines[0]["level"], "WARN");
        assert!(lines[0].get("span").is_none(), "{}", lines[0]);
        assert_eq!(lines[1]["span"], json!({"name": "empty"}));
    }
}
