//! The live binlog stream's health as a server carries it (streaming.md §3): the state and
//! error, which are revisions of the server, and the progress, which the stream's holder keeps
//! current and readers see live.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::StreamState;

/// How long a stream may stay disconnected before its server's status says so.
pub const DISCONNECTED_GRACE: chrono::TimeDelta = chrono::TimeDelta::seconds(10);

/// A stream's progress: what the holder last wrote (never a revision).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StreamProgress {
    pub binlog_file: String,
    pub binlog_position: i64,
    pub gtid_set: String,
    pub source_server_uuid: String,
    #[serde(default, deserialize_with = "super::stored_time::optional")]
    pub last_event_at: Option<DateTime<Utc>>,
    #[serde(default, deserialize_with = "super::stored_time::optional")]
    pub last_heartbeat_at: Option<DateTime<Utc>>,
    #[serde(default, deserialize_with = "super::stored_time::optional")]
    pub last_checkpoint_at: Option<DateTime<Utc>>,
    /// How far the index is behind the source, in milliseconds (0 when caught up).
    pub lag_millis: i64,
    pub events_indexed: i64,
    pub reconnects: i32,
    pub holder_agent_id: Option<Uuid>,
    /// Since when the stream is disconnected, while it is.
    #[serde(default, deserialize_with = "super::stored_time::optional")]
    pub disconnected_since: Option<DateTime<Utc>>,
    /// Statement-format DML met since onboarding: rows the binlog does not carry as rows.
    #[serde(default)]
    pub statement_changes: StatementChanges,
    /// The recent lag and event count, one sample per [`SAMPLE_INTERVAL`] at most, the newest
    /// [`SAMPLES_KEPT`] (the console draws them as sparklines).
    #[serde(default)]
    pub samples: Vec<StreamSample>,
}

/// At most one sample per this interval.
pub const SAMPLE_INTERVAL: chrono::TimeDelta = chrono::TimeDelta::seconds(10);
/// How many samples a stream keeps: five minutes' worth.
pub const SAMPLES_KEPT: usize = 30;

/// A stream's lag and event count at one moment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StreamSample {
    #[serde(deserialize_with = "super::stored_time::required")]
    pub at: DateTime<Utc>,
    pub lag_millis: i64,
    pub events_indexed: i64,
}

impl StreamProgress {
    /// Appends the progress as it is at `now` to the samples when the newest is at least
    /// [`SAMPLE_INTERVAL`] old (or there is none, or the clock went back), keeping the newest
    /// [`SAMPLES_KEPT`].
    pub fn sample(&mut self, now: DateTime<Utc>) {
        if let Some(newest) = self.samples.last() {
            let age = now - newest.at;
            if age < SAMPLE_INTERVAL && age >= chrono::TimeDelta::zero() {
                return;
            }
        }
        self.samples.push(StreamSample {
            at: now,
            lag_millis: self.lag_millis,
            events_indexed: self.events_indexed,
        });
        if self.samples.len() > SAMPLES_KEPT {
            let excess = self.samples.len() - SAMPLES_KEPT;
            self.samples.drain(..excess);
        }
    }
}

/// Statement-format DML a stream met (a session with `binlog_format=STATEMENT` or MIXED): rows
/// changed that cannot be captured, counted so that their absence is never silent.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatementChanges {
    /// How many statements.
    pub skipped: i64,
    /// When the first one was met.
    pub since: Option<DateTime<Utc>>,
    /// Where the last one is in the binlog (`file:position`).
    pub last_position: String,
}

impl StatementChanges {
    /// One more statement, at `position`.
    pub fn record(&mut self, position: String) {
        self.skipped += 1;
        self.since.get_or_insert_with(super::now);
        self.last_position = position;
    }

    /// Those of `later` after these.
    pub fn add(&mut self, later: StatementChanges) {
        if later.skipped == 0 {
            return;
        }
        self.skipped += later.skipped;
        self.since = self.since.or(later.since);
        self.last_position = later.last_position;
    }
}

/// A server's stream: null until onboarding reaches `streaming`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamHealth {
    pub state: StreamState,
    pub error: Option<String>,
    pub progress: StreamProgress,
}

impl StreamHealth {
    /// A stream about to start.
    pub fn starting() -> StreamHealth {
        StreamHealth {
            state: StreamState::Starting,
            error: None,
            progress: StreamProgress::default(),
        }
    }
}

impl StreamState {
    /// Whether a replica should hold and run this stream.
    pub fn wants_a_reader(self) -> bool {
        !matches!(
            self,
            StreamState::LostPosition | StreamState::Failed | StreamState::Stopped
        )
    }
}

/// A place in a source's binlog. The file names of one server sort in binlog order, so places
/// compare as the binlog runs.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct BinlogPoint {
    pub file: String,
    pub position: u64,
}

impl std::fmt::Display for BinlogPoint {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(formatter, "{}:{}", self.file, self.position)
    }
}

/// The longest binlog file name accepted (MySQL's own limit is FN_REFLEN, 512).
pub const MAX_BINLOG_FILE_LENGTH: usize = 255;

/// Where RestartStream starts the stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StreamStart {
    /// A binlog file and a position in it.
    Position(BinlogPoint),
    /// Just after the last transaction of each source (or MariaDB domain) in the set.
    Gtids(Vec<GtidEnd>),
    /// The source's current position.
    Current,
}

/// The last transaction of one source (MySQL: uuid and tag) or MariaDB domain in a GTID set,
/// as the binlog's GTID events name it (`uuid:n`, `uuid:tag:n`, `domain-server-sequence`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GtidEnd(pub String);

/// The longest GTID set accepted.
pub const MAX_GTID_SET_LENGTH: usize = 4096;

/// The last GTID of each source or domain of a set, or what is wrong with it.
fn gtid_ends(set: &str) -> Result<Vec<GtidEnd>, String> {
    if set.len() > MAX_GTID_SET_LENGTH {
        return Err(format!("must be at most {MAX_GTID_SET_LENGTH} characters"));
    }
    let mut ends = Vec::new();
    for part in set
        .split(',')
        .map(str::trim)
        .filter(|part| !part.is_empty())
    {
        ends.extend(part_ends(part).ok_or_else(|| {
            format!(
                "{part:?} is not a GTID set member: MySQL's uuid:1-5 (uuid:tag:1-5 when tagged) or \
                 MariaDB's domain-server-sequence"
            )
        })?);
    }
    if ends.is_empty() {
        return Err("is empty".into());
    }
    Ok(ends)
}

/// One member's last GTIDs: per tag for MySQL, the one GTID for MariaDB.
fn part_ends(part: &str) -> Option<Vec<GtidEnd>> {
    let number = |text: &str| text.parse::<u64>().ok();
    let Some((uuid, intervals)) = part.split_once(':') else {
        let numbers: Vec<u64> = part.split('-').map(number).collect::<Option<_>>()?;
        return (numbers.len() == 3).then(|| vec![GtidEnd(part.to_owned())]);
    };
    let uuid = uuid::Uuid::parse_str(uuid).ok()?.to_string();
    let mut ends = Vec::new();
    let mut tag = String::new();
    let mut last: Option<u64> = None;
    for token in intervals.split(':') {
        if token.starts_with(|c: char| c.is_ascii_digit()) {
            let (start, end) = token.split_once('-').unwrap_or((token, token));
            let (start, end) = (number(start)?, number(end)?);
            (start >= 1 && start <= end).then_some(())?;
            last = Some(last.map_or(end, |last| last.max(end)));
        } else {
            let valid = token.len() <= 32
                && token.starts_with(|c: char| c.is_ascii_lowercase() || c == '_')
                && token
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
            valid.then_some(())?;
            ends.extend(last.take().map(|n| mysql_end(&uuid, &tag, n)));
            tag = token.to_owned();
        }
    }
    ends.push(mysql_end(&uuid, &tag, last?));
    Some(ends)
}

fn mysql_end(uuid: &str, tag: &str, number: u64) -> GtidEnd {
    GtidEnd(if tag.is_empty() {
        format!("{uuid}:{number}")
    } else {
        format!("{uuid}:{tag}:{number}")
    })
}

impl StreamStart {
    /// The start a request names: exactly one of a file with its position, a GTID set, or the
    /// current position.
    pub fn parse(
        binlog_file: &str,
        binlog_position: i64,
        gtid_set: &str,
        current: bool,
    ) -> Result<StreamStart, super::Violations> {
        let mut violations = super::Violations::default();
        let named = !binlog_file.is_empty() || binlog_position != 0;
        let gtids = !gtid_set.is_empty();
        match usize::from(named) + usize::from(gtids) + usize::from(current) {
            0 => violations.add(
                "binlog_file",
                "say where the stream starts: binlog_file and binlog_position, gtid_set, or \
                 current_position: true",
            ),
            1 => {}
            _ => violations.add(
                if current {
                    "current_position"
                } else {
                    "gtid_set"
                },
                "give one start: binlog_file and binlog_position, gtid_set, or current_position",
            ),
        }
        if named {
            check_binlog_file(binlog_file, &mut violations);
            if binlog_position < 4 {
                violations.add(
                    "binlog_position",
                    "must be 4 (a file's first event) or more: the first 4 bytes of a binlog file \
                     are its magic number",
                );
            }
        }
        let ends = if gtids {
            gtid_ends(gtid_set)
                .map_err(|problem| violations.add("gtid_set", problem))
                .ok()
        } else {
            None
        };
        violations.into_result()?;
        Ok(match (current, ends) {
            (true, _) => StreamStart::Current,
            (false, Some(ends)) => StreamStart::Gtids(ends),
            (false, None) => StreamStart::Position(BinlogPoint {
                file: binlog_file.to_owned(),
                position: u64::try_from(binlog_position).unwrap_or_default(),
            }),
        })
    }
}

fn check_binlog_file(name: &str, violations: &mut super::Violations) {
    let fine = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_');
    if name.is_empty() {
        violations.add("binlog_file", "is required with binlog_position");
    } else if name.len() > MAX_BINLOG_FILE_LENGTH {
        violations.add(
            "binlog_file",
            format!("must be at most {MAX_BINLOG_FILE_LENGTH} characters"),
        );
    } else if !name.chars().all(fine) || name.starts_with('.') {
        violations.add(
            "binlog_file",
            "must be a binlog file name as SHOW BINARY LOGS lists it (letters, digits, '.', '-' \
             and '_'), without a directory",
        );
    }
}

/// What a restart does against the stream's checkpoint: positions skipped (a gap), read again
/// (an overlap), or neither.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RestartPlan {
    /// The restart as the server's history tells it.
    pub description: String,
    /// On an overlap, the old checkpoint: rows before it are stored already.
    pub replay_until: Option<BinlogPoint>,
    /// On a gap, the positions skipped (from, to).
    pub gap: Option<(BinlogPoint, BinlogPoint)>,
}

impl RestartPlan {
    /// The plan of a restart from `checkpoint` to `start`.
    pub fn between(checkpoint: &BinlogPoint, start: &BinlogPoint) -> RestartPlan {
        let (description, replay_until, gap) = match start.cmp(checkpoint) {
            std::cmp::Ordering::Greater => (
                format!(
                    "stream restarted at {start} by RestartStream; gap: the changes from \
                     {checkpoint} to {start} are not captured"
                ),
                None,
                Some((checkpoint.clone(), start.clone())),
            ),
            std::cmp::Ordering::Less => (
                format!(
                    "stream restarted at {start} by RestartStream; overlap: {start} to \
                     {checkpoint} is read again, and what was captured there is not stored twice"
                ),
                Some(checkpoint.clone()),
                None,
            ),
            std::cmp::Ordering::Equal => (
                format!("stream restarted at its checkpoint {start} by RestartStream"),
                None,
                None,
            ),
        };
        RestartPlan {
            description,
            replay_until,
            gap,
        }
    }

    /// The plan of a restart from a checkpoint read from the source `old` to `start` on the
    /// source `new`, another server: positions of two servers do not compare, so nothing read
    /// from `start` on is taken as stored already, and what `old` had past the checkpoint is a
    /// gap.
    pub fn onto_another_source(
        checkpoint: &BinlogPoint,
        old: &str,
        start: &BinlogPoint,
        new: &str,
    ) -> RestartPlan {
        RestartPlan {
            description: format!(
                "stream restarted at {start} by RestartStream on another source ({new}; the \
                 checkpoint {checkpoint} was read from {old}); gap: the changes after \
                 {checkpoint} on the old source are not captured, and every row from {start} on \
                 is read as new"
            ),
            replay_until: None,
            gap: Some((checkpoint.clone(), start.clone())),
        }
    }
}

#[cfg(test)]
mod restart_tests {
    use super::*;

    fn point(file: &str, position: u64) -> BinlogPoint {
        BinlogPoint {
            file: file.into(),
            position,
        }
    }

    #[test]
    fn a_start_is_a_file_and_position_or_the_current_position() {
        assert_eq!(
            StreamStart::parse("mysql-bin.000001", 4, "", false).unwrap(),
            StreamStart::Position(point("mysql-bin.000001", 4))
        );
        assert_eq!(
            StreamStart::parse("", 0, "", true).unwrap(),
            StreamStart::Current
        );
        let fields = |result: Result<StreamStart, crate::domain::Violations>| {
            result
                .unwrap_err()
                .0
                .into_iter()
                .map(|violation| violation.field)
                .collect::<Vec<_>>()
        };
        assert_eq!(
            fields(StreamStart::parse("", 0, "", false)),
            ["binlog_file"]
        );
        assert_eq!(
            fields(StreamStart::parse("mysql-bin.000001", 4, "", true)),
            ["current_position"]
        );
        assert_eq!(
            fields(StreamStart::parse("../etc/passwd", 2, "", false)),
            ["binlog_file", "binlog_position"]
        );
        assert_eq!(
            fields(StreamStart::parse("", 0, "x:1", false)),
            ["gtid_set"]
        );
        assert_eq!(
            fields(StreamStart::parse("", 120, "", false)),
            ["binlog_file"]
        );
    }

    #[test]
    fn plans_name_gaps_and_overlaps() {
        let checkpoint = point("mysql-bin.000002", 400);
        let later = RestartPlan::between(&checkpoint, &point("mysql-bin.000003", 4));
        assert_eq!(
            later.gap,
            Some((checkpoint.clone(), point("mysql-bin.000003", 4)))
        );
        assert!(later.description.contains("gap"));
        let earlier = RestartPlan::between(&checkpoint, &point("mysql-bin.000002", 4));
        assert_eq!(earlier.replay_until, Some(checkpoint.clone()));
        assert!(earlier.description.contains("overlap"));
        let same = RestartPlan::between(&checkpoint, &checkpoint);
        assert_eq!((same.gap, same.replay_until), (None, None));
    }

    #[test]
    fn a_restart_onto_another_source_is_a_gap_and_never_an_overlap() {
        // The same file names on another server: its rows at earlier positions were never read.
        let checkpoint = point("mysql-bin.000001", 1_200);
        let start = point("mysql-bin.000001", 4);
        let plan = RestartPlan::onto_another_source(
            &checkpoint,
            "server_id 1, gtid domain 0",
            &start,
            "server_id 2, gtid domain 0",
        );
        assert_eq!(plan.replay_until, None);
        assert_eq!(plan.gap, Some((checkpoint, start)));
        assert!(
            plan.description.contains("another source") && plan.description.contains("server_id 2"),
            "{}",
            plan.description
        );
    }
}

#[cfg(test)]
mod sample_tests {
    use super::*;

    fn at(seconds: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_800_000_000 + seconds, 0).expect("a time")
    }

    #[test]
    fn samples_are_spaced_by_the_interval_and_bounded() {
        let mut progress = StreamProgress::default();
        for second in 0..1000 {
            progress.events_indexed = second;
            progress.lag_millis = second * 10;
            progress.sample(at(second));
        }
        assert_eq!(progress.samples.len(), SAMPLES_KEPT);
        let newest = progress.samples.last().expect("a sample");
        assert_eq!(newest.at, at(990));
        assert_eq!((newest.events_indexed, newest.lag_millis), (990, 9900));
        assert!(
            progress
                .samples
                .windows(2)
                .all(|pair| pair[1].at - pair[0].at == SAMPLE_INTERVAL)
        );
    }

    #[test]
    fn a_clock_that_went_back_samples_again_and_samples_survive_a_json_round_trip() {
        let mut progress = StreamProgress::default();
        progress.sample(at(100));
        progress.sample(at(105));
        assert_eq!(progress.samples.len(), 1);
        progress.sample(at(50));
        assert_eq!(progress.samples.len(), 2);
        let stored = serde_json::to_string(&progress).expect("JSON");
        let read: StreamProgress = serde_json::from_str(&stored).expect("read back");
        assert_eq!(read, progress);
        let older: StreamProgress =
            serde_json::from_str(r#"{"binlog_file":"b.1","binlog_position":4,"gtid_set":"","source_server_uuid":"","lag_millis":0,"events_indexed":0,"reconnects":0,"holder_agent_id":null}"#)
                .expect("progress stored before samples");
        assert!(older.samples.is_empty());
    }
}
