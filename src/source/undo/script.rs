//! The script's frame: the header (comments that say what it undoes and how it treats rows
//! changed since, then the session it sets and its transaction) and the footer (the commit and
//! the session as it was).

use chrono::{DateTime, SecondsFormat, Utc};

use super::{RevertMode, literal::comment_text};

/// What the header says about the selection.
#[derive(Debug, Clone)]
pub struct ScriptHeader {
    pub server_id: String,
    pub server_name: String,
    /// The filter as sent (empty for none).
    pub filter: String,
    /// How many event ids were listed (0 for none).
    pub event_ids: usize,
    pub mode: RevertMode,
    /// How many changes the script undoes.
    pub changes: u64,
    /// The oldest and newest selected changes: event id and commit time.
    pub oldest: Option<(String, DateTime<Utc>)>,
    pub newest: Option<(String, DateTime<Utc>)>,
    pub generated_at: DateTime<Utc>,
}

/// The script's first lines: the comments, then the session it runs in and the transaction.
pub fn header(header: &ScriptHeader) -> String {
    let mut lines = selection_comments(header);
    lines.extend(promise_comments(header.mode, header.changes));
    lines.extend(SESSION_START.map(str::to_owned));
    let mut text = lines.join("\n");
    text.push('\n');
    text
}

/// How the script is applied: the session settings it saves and sets, and its transaction.
const SESSION_START: [&str; 9] = [
    "-- Apply with: mysql [connection options] < this-file (the script is ASCII: text that is \
     not is written as hex).",
    "SET NAMES utf8mb4;",
    "SET @dbtrail_sql_mode = @@session.sql_mode;",
    "SET @dbtrail_time_zone = @@session.time_zone;",
    "SET @dbtrail_foreign_key_checks = @@session.foreign_key_checks;",
    "SET SESSION sql_mode = 'NO_AUTO_VALUE_ON_ZERO,STRICT_ALL_TABLES,NO_ENGINE_SUBSTITUTION';",
    "SET SESSION time_zone = '+00:00';",
    "SET SESSION foreign_key_checks = 0;",
    "START TRANSACTION;",
];

/// The comments that say what the script undoes: the server, the selection, its ends.
fn selection_comments(header: &ScriptHeader) -> Vec<String> {
    let filter = if header.filter.is_empty() {
        "(none)".to_owned()
    } else {
        comment_text(&header.filter)
    };
    let mut lines = vec![
        "-- dbtrail revert script: undoes captured row changes, newest first, in one transaction."
            .to_owned(),
        format!(
            "-- Server: {} ({})",
            comment_text(&header.server_id),
            comment_text(&header.server_name)
        ),
        format!("-- Filter: {filter}"),
    ];
    if header.event_ids > 0 {
        lines.push(format!("-- Event ids: {} listed", header.event_ids));
    }
    let place = |end: &Option<(String, DateTime<Utc>)>| match end {
        Some((id, at)) => format!(
            "{} (committed {})",
            comment_text(id),
            at.to_rfc3339_opts(SecondsFormat::Secs, true)
        ),
        None => "none".to_owned(),
    };
    lines.extend([
        format!(
            "-- Events: {} changes, from {} to {}",
            header.changes,
            place(&header.oldest),
            place(&header.newest)
        ),
        format!(
            "-- Generated: {}",
            header
                .generated_at
                .to_rfc3339_opts(SecondsFormat::Secs, true)
        ),
    ]);
    lines
}

/// The comments that say what the script does to rows in `mode`, and how many it expects.
fn promise_comments(mode: RevertMode, changes: u64) -> [String; 5] {
    [
        format!("-- Mode: {}", mode.name()),
        format!("-- Expects to change {changes} rows: each statement exactly one."),
        "-- A statement touches its row only while the row still is what the change left (its \
         primary key and every column"
            .to_owned(),
        "-- but JSON, floating-point and generated ones, which are not compared); generated \
         columns are never written."
            .to_owned(),
        match mode {
            RevertMode::Strict => "-- Strict: a row changed since stops the script with an error \
                naming it (Variable sql_mode can't be set to the value of dbtrail revert stopped: \
                row ...), before COMMIT: nothing is applied."
                .to_owned(),
            RevertMode::Force => "-- Force: a row changed since is skipped, and a `skipped` line \
                names it; the rest is applied."
                .to_owned(),
        },
    ]
}

/// The script's last lines: the commit, and the session as it was.
pub fn footer(changes: u64) -> String {
    format!(
        "COMMIT;\n\
         SET SESSION foreign_key_checks = @dbtrail_foreign_key_checks;\n\
         SET SESSION time_zone = @dbtrail_time_zone;\n\
         SET SESSION sql_mode = @dbtrail_sql_mode;\n\
         -- End of the dbtrail revert script: {changes} changes undone.\n"
    )
}
