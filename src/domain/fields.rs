//! The validated fields of a server's settings: each type's constructor is its rule, so a
//! value of the type is valid wherever it travels. A rule's error says what is wrong in words a
//! client can act on; the field path is the caller's to add.

use std::{borrow::Borrow, collections::BTreeMap, fmt, net::IpAddr, ops::Deref};

/// Declares a text newtype that reads as the text it holds.
macro_rules! text_field {
    ($(#[$meta:meta])* $name:ident) => {
        $(#[$meta])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(String);

        impl $name {
            /// The text.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl Deref for $name {
            type Target = str;

            fn deref(&self) -> &str {
                &self.0
            }
        }

        impl Borrow<str> for $name {
            fn borrow(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
                formatter.write_str(&self.0)
            }
        }

        impl From<$name> for String {
            fn from(value: $name) -> String {
                value.0
            }
        }
    };
}

text_field!(
    /// A server's name: 1 to 100 printable characters, no white space around it; unique among a
    /// tenant's live servers.
    ServerName
);
text_field!(
    /// A DNS name (RFC 1123, lowercased) or an IP literal.
    Host
);
text_field!(
    /// A login name: up to a maximum length, without control characters.
    UserName
);
text_field!(
    /// An OpenSSH SHA256 host key fingerprint: `SHA256:` and 43 unpadded base64 characters.
    HostKeyFingerprint
);
text_field!(
    /// A MySQL identifier: 1 to 64 characters, no control characters.
    Identifier
);
text_field!(
    /// A table as `schema.table`, both MySQL identifiers.
    QualifiedTable
);

/// Validated values as the texts they are on the wire and in the database.
pub fn texts<T: ToString>(values: &[T]) -> Vec<String> {
    values.iter().map(ToString::to_string).collect()
}

fn has_control_characters(text: &str) -> bool {
    text.chars().any(char::is_control)
}

/// Characters that change how text around them is shown without showing themselves: the
/// bidirectional embeddings, overrides, isolates and marks (the "Trojan Source" characters),
/// zero-width spaces and joiners, the byte order mark, and the line and paragraph separators.
/// A name holding one can look like another name.
pub fn is_invisible_or_bidirectional(character: char) -> bool {
    INVISIBLE_OR_BIDIRECTIONAL
        .iter()
        .any(|(first, last)| (*first..=*last).contains(&character))
}

impl ServerName {
    /// A name, or why it cannot be one.
    pub fn parse(name: &str) -> Result<ServerName, String> {
        let length = name.chars().count();
        if length == 0 {
            return Err(format!(
                "is required: 1 to {MAX_NAME_LENGTH} printable characters"
            ));
        }
        if length > MAX_NAME_LENGTH {
            return Err(format!(
                "is {length} characters long; at most {MAX_NAME_LENGTH} allowed"
            ));
        }
        if let Some((position, character)) = name
            .chars()
            .enumerate()
            .find(|(_, character)| character.is_control())
        {
            return Err(format!(
                "must contain only printable characters: {} at character {} is a control character",
                code_point(character),
                position + 1
            ));
        }
        if let Some((position, character)) = name
            .chars()
            .enumerate()
            .find(|(_, character)| is_invisible_or_bidirectional(*character))
        {
            return Err(format!(
                "must not contain invisible or bidirectional formatting characters: {} at \
                 character {}",
                code_point(character),
                position + 1
            ));
        }
        if name.trim() != name {
            return Err("must not start or end with white space".into());
        }
        Ok(ServerName(name.to_owned()))
    }

    /// A name read back from storage, under the rule of the day it was written: invisible and
    /// bidirectional characters were accepted before, so they do not make the row unreadable.
    pub fn from_stored(name: &str) -> Result<ServerName, String> {
        if name.is_empty() || has_control_characters(name) {
            return Err("is not a name".into());
        }
        Ok(ServerName(name.to_owned()))
    }
}

impl Host {
    /// A DNS name (lowercased) or an IP literal, or why `host` is neither.
    pub fn parse(host: &str) -> Result<Host, String> {
        if host.is_empty() {
            return Err("is required: a DNS name or an IP address".into());
        }
        if host.parse::<IpAddr>().is_ok() {
            return Ok(Host(host.to_owned()));
        }
        let shown = shown(host);
        let invalid = || format!("\"{shown}\" is neither a DNS name nor an IP address");
        let name = host.strip_suffix('.').unwrap_or(host);
        if name.len() > MAX_HOST_LENGTH || name.is_empty() {
            return Err(invalid());
        }
        let labels_ok = name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= MAX_HOST_LABEL_LENGTH
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .bytes()
                    .all(|byte| byte.is_ascii_alphanumeric() || byte == b'-' || byte == b'_')
        });
        let all_numeric = name
            .split('.')
            .all(|label| label.bytes().all(|byte| byte.is_ascii_digit()));
        if labels_ok && !all_numeric {
            Ok(Host(host.to_ascii_lowercase()))
        } else {
            Err(invalid())
        }
    }
}

impl UserName {
    /// A required login of at most `max` characters (`what` names it in the message).
    pub fn parse(user: &str, what: &str, max: usize) -> Result<UserName, String> {
        if user.is_empty() {
            return Err(format!("{what} is required"));
        }
        check_text(user, max)?;
        Ok(UserName(user.to_owned()))
    }
}

/// Longest server name, in characters.
pub const MAX_NAME_LENGTH: usize = 100;
/// Longest DNS name (RFC 1035), without a trailing dot.
pub const MAX_HOST_LENGTH: usize = 253;
/// Longest DNS label.
pub const MAX_HOST_LABEL_LENGTH: usize = 63;
/// Longest MySQL identifier, in characters.
pub const MAX_IDENTIFIER_LENGTH: usize = 64;
/// Longest request id (`request_id`), in characters.
pub const MAX_REQUEST_ID_LENGTH: usize = 128;
/// The base64 characters of an OpenSSH SHA256 fingerprint after `SHA256:`.
pub const FINGERPRINT_DIGEST_LENGTH: usize = 43;
/// The control characters (Unicode category Cc, what `char::is_control` tests), as ranges.
pub const CONTROL_CHARACTERS: [(char, char); 2] = [('\u{0}', '\u{1F}'), ('\u{7F}', '\u{9F}')];
/// The invisible and bidirectional formatting characters a name refuses, as ranges (see
/// [`is_invisible_or_bidirectional`]).
pub const INVISIBLE_OR_BIDIRECTIONAL: [(char, char); 6] = [
    ('\u{061C}', '\u{061C}'),
    ('\u{200B}', '\u{200F}'),
    ('\u{2028}', '\u{202E}'),
    ('\u{2060}', '\u{2064}'),
    ('\u{2066}', '\u{2069}'),
    ('\u{FEFF}', '\u{FEFF}'),
];

/// A character as `U+XXXX`, to name one that cannot be shown.
pub fn code_point(character: char) -> String {
    format!("U+{:04X}", u32::from(character))
}

/// A free text of at most `max` characters, without control characters.
pub fn check_text(text: &str, max: usize) -> Result<(), String> {
    let length = text.chars().count();
    if length > max {
        return Err(format!(
            "is {length} characters long; at most {max} allowed"
        ));
    }
    if has_control_characters(text) {
        return Err("must not contain control characters".into());
    }
    Ok(())
}

impl HostKeyFingerprint {
    /// A fingerprint in OpenSSH's form, or what that form is.
    pub fn parse(text: &str) -> Result<HostKeyFingerprint, String> {
        let valid = text.strip_prefix("SHA256:").is_some_and(|digest| {
            digest.len() == FINGERPRINT_DIGEST_LENGTH
                && digest
                    .bytes()
                    .all(|byte| byte.is_ascii_alphanumeric() || byte == b'+' || byte == b'/')
        });
        if valid {
            Ok(HostKeyFingerprint(text.to_owned()))
        } else {
            Err(
                "must be an OpenSSH SHA256 fingerprint: SHA256: followed by 43 base64 characters"
                    .into(),
            )
        }
    }
}

impl Identifier {
    /// A MySQL identifier, or why `identifier` is not one.
    pub fn parse(identifier: &str) -> Result<Identifier, String> {
        if identifier.is_empty() || identifier.chars().count() > MAX_IDENTIFIER_LENGTH {
            return Err(format!(
                "\"{}\" must be a MySQL identifier of 1 to {MAX_IDENTIFIER_LENGTH} characters",
                shown(identifier)
            ));
        }
        if has_control_characters(identifier) {
            return Err("must not contain control characters".into());
        }
        Ok(Identifier(identifier.to_owned()))
    }
}

impl QualifiedTable {
    /// `schema.table`, or what is wrong with it.
    pub fn parse(table: &str) -> Result<QualifiedTable, String> {
        let (schema, name) = table
            .split_once('.')
            .ok_or_else(|| format!("\"{}\" must be schema.table", shown(table)))?;
        Identifier::parse(schema)?;
        Identifier::parse(name)?;
        Ok(QualifiedTable(table.to_owned()))
    }

    /// The schema and the table.
    pub fn parts(&self) -> (&str, &str) {
        self.0.split_once('.').unwrap_or((&self.0, ""))
    }
}

/// A TCP port, 1 to 65535.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Port(u16);

impl Port {
    /// A request's port: 0 means `default`; anything outside 1 to 65535 is refused.
    pub fn parse(port: i32, default: u16) -> Result<Port, String> {
        match port {
            0 => Ok(Port(default)),
            1..=65535 => Ok(Port(port as u16)),
            _ => Err(format!("{port} is out of range: 1 to 65535")),
        }
    }

    /// The number.
    pub fn get(self) -> u16 {
        self.0
    }
}

impl fmt::Display for Port {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(formatter)
    }
}

impl From<Port> for i32 {
    fn from(port: Port) -> i32 {
        i32::from(port.0)
    }
}

/// Most labels on one server.
pub const MAX_LABELS: usize = 64;
/// Longest label key and label value (Kubernetes' limit for a label's name and value).
pub const MAX_LABEL_LENGTH: usize = 63;

/// A server's labels, by the Kubernetes label rules: at most 64; a key is 1 to 63 characters of
/// letters, digits, `_` and `-`, beginning and ending with a letter or digit (Kubernetes' name
/// segment, without `.` and a prefix: a ListServers filter addresses a label as `labels.KEY`); a
/// value is empty or 1 to 63 characters of letters, digits, `_`, `-` and `.`, beginning and ending
/// with a letter or digit.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Labels(BTreeMap<String, String>);

impl Labels {
    /// The labels, or the first one that breaks the rule.
    pub fn parse(labels: BTreeMap<String, String>) -> Result<Labels, String> {
        if labels.len() > MAX_LABELS {
            return Err(format!(
                "has {} labels; at most {MAX_LABELS} allowed",
                labels.len()
            ));
        }
        for (key, value) in &labels {
            if !is_label_key(key) {
                return Err(format!(
                    "key {:?} must be 1 to {MAX_LABEL_LENGTH} letters, digits, '_' and '-', \
                     beginning and ending with a letter or digit",
                    shown(key)
                ));
            }
            if !is_label_value(value) {
                return Err(format!(
                    "value of {key:?} ({:?}) must be empty or 1 to {MAX_LABEL_LENGTH} letters, \
                     digits, '_', '-' and '.', beginning and ending with a letter or digit",
                    shown(value)
                ));
            }
        }
        Ok(Labels(labels))
    }

    /// Labels read back from storage: written under the rules of their day, which may have been
    /// looser than today's (values of up to 256 printable characters), so they are kept as they
    /// are; only a request's labels must follow [`Labels::parse`].
    pub fn from_stored(labels: BTreeMap<String, String>) -> Labels {
        Labels(labels)
    }

    /// The labels by key.
    pub fn as_map(&self) -> &BTreeMap<String, String> {
        &self.0
    }
}

/// `text` to quote in a message: whole up to 100 characters, else its first 99 and an ellipsis,
/// so that a message stays short whatever was sent.
fn shown(text: &str) -> String {
    if text.chars().count() <= 100 {
        return text.to_owned();
    }
    let mut cut: String = text.chars().take(99).collect();
    cut.push('…');
    cut
}

/// Whether `key` is a label key (see [`Labels`]).
pub fn is_label_key(key: &str) -> bool {
    is_label_word(key, |byte| byte == b'_' || byte == b'-')
}

/// Whether `value` is a label value (see [`Labels`]).
pub fn is_label_value(value: &str) -> bool {
    value.is_empty() || is_label_word(value, |byte| matches!(byte, b'_' | b'-' | b'.'))
}

/// 1 to 63 ASCII letters, digits and `inner` punctuation, alphanumeric at both ends.
fn is_label_word(text: &str, inner: fn(u8) -> bool) -> bool {
    let bytes = text.as_bytes();
    let (Some(first), Some(last)) = (bytes.first(), bytes.last()) else {
        return false;
    };
    bytes.len() <= MAX_LABEL_LENGTH
        && first.is_ascii_alphanumeric()
        && last.is_ascii_alphanumeric()
        && bytes
            .iter()
            .all(|byte| byte.is_ascii_alphanumeric() || inner(*byte))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts() {
        for good in [
            "db.example.com",
            "10.0.0.1",
            "::1",
            "localhost",
            "db-1.internal.",
        ] {
            assert!(Host::parse(good).is_ok(), "{good}");
        }
        for bad in [
            "",
            "-db.example.com",
            "a..b",
            "db_ex ample",
            "300.1.1.1",
            "1.2.3",
        ] {
            assert!(Host::parse(bad).is_err(), "{bad}");
        }
        assert_eq!(
            Host::parse("DB.Example.com").unwrap().as_str(),
            "db.example.com"
        );
    }

    #[test]
    fn ports_default_and_range() {
        assert_eq!(Port::parse(0, 3306).unwrap().get(), 3306);
        assert_eq!(Port::parse(22, 3306).unwrap().get(), 22);
        assert_eq!(
            Port::parse(70000, 22).unwrap_err(),
            "70000 is out of range: 1 to 65535"
        );
    }

    #[test]
    fn tables_are_schema_dot_table() {
        assert!(QualifiedTable::parse("shop.orders").is_ok());
        assert_eq!(
            QualifiedTable::parse("orders").unwrap_err(),
            "\"orders\" must be schema.table"
        );
        assert!(QualifiedTable::parse("shop.").is_err());
    }

    #[test]
    fn fingerprints_and_labels() {
        let digest = "A".repeat(43);
        assert!(HostKeyFingerprint::parse(&format!("SHA256:{digest}")).is_ok());
        assert!(HostKeyFingerprint::parse("MD5:aa").is_err());
        let bad = BTreeMap::from([("bad key".to_owned(), "v".to_owned())]);
        assert!(Labels::parse(bad).is_err());
    }

    #[test]
    fn names_refuse_control_invisible_and_bidirectional_characters() {
        assert!(ServerName::parse("orders db (eu) — café").is_ok());
        assert_eq!(
            ServerName::parse("a\u{0}b").unwrap_err(),
            "must contain only printable characters: U+0000 at character 2 is a control character"
        );
        for (bad, code) in [
            ("admin\u{202E}gpj.exe", "U+202E"),
            ("a\u{200B}b", "U+200B"),
            ("\u{2066}x", "U+2066"),
            ("x\u{FEFF}", "U+FEFF"),
            ("x\u{200D}y", "U+200D"),
        ] {
            let problem = ServerName::parse(bad).unwrap_err();
            assert!(problem.contains(code), "{bad:?}: {problem}");
            assert!(problem.contains("bidirectional"), "{bad:?}: {problem}");
        }
        // Rows written under the older rule stay readable.
        assert!(ServerName::from_stored("a\u{200B}b").is_ok());
        assert!(ServerName::from_stored("a\u{0}b").is_err());
    }

    #[test]
    fn labels_follow_the_kubernetes_rules() {
        let labels = |pairs: &[(&str, &str)]| {
            Labels::parse(
                pairs
                    .iter()
                    .map(|(key, value)| (key.to_string(), value.to_string()))
                    .collect(),
            )
        };
        assert!(labels(&[("env", "prod"), ("team-a_1", "v1.2-rc_3"), ("empty", "")]).is_ok());
        assert!(labels(&[(&"k".repeat(63), &"v".repeat(63))]).is_ok());
        for (key, value) in [
            ("_env", "prod"),
            ("env-", "prod"),
            ("a.b", "prod"),
            ("a/b", "prod"),
            ("", "prod"),
            (&"k".repeat(64), "v"),
            ("env", "pro d"),
            ("env", "-prod"),
            ("env", "prod."),
            ("env", "a\u{0}b"),
            ("env", "café"),
            ("env", &"v".repeat(64)),
        ] {
            assert!(labels(&[(key, value)]).is_err(), "{key:?}={value:?}");
        }
        let many: Vec<(String, String)> = (0..=MAX_LABELS)
            .map(|index| (format!("k{index}"), String::new()))
            .collect();
        assert_eq!(
            Labels::parse(many.into_iter().collect()).unwrap_err(),
            "has 65 labels; at most 64 allowed"
        );
    }
}
