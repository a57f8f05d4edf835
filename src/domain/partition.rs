//! The time partitions of the change index, as rules: how wide one is, where one starts, and
//! how many are kept ready ahead.

use std::time::Duration;

use chrono::{DateTime, TimeZone, Utc};

/// The width of a partition: a whole number of minutes, from one minute to a day.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PartitionWidth(Duration);

impl PartitionWidth {
    pub const MIN: Duration = Duration::from_secs(60);
    pub const MAX: Duration = Duration::from_secs(24 * 3600);

    pub fn new(width: Duration) -> Result<PartitionWidth, String> {
        if width < Self::MIN
            || width > Self::MAX
            || !width.as_nanos().is_multiple_of(60_000_000_000)
        {
            return Err(format!(
                "a change partition is a whole number of minutes from 1m to 1day wide, not {}",
                humantime::format_duration(width)
            ));
        }
        Ok(PartitionWidth(width))
    }

    pub fn duration(self) -> Duration {
        self.0
    }

    pub fn seconds(self) -> i64 {
        self.0.as_secs() as i64
    }

    /// How many partitions are kept ready ahead: a day's worth, at least 3 and at most 60.
    pub fn ahead(self) -> i64 {
        (Self::MAX.as_secs() as i64 / self.seconds()).clamp(3, 60)
    }

    /// The start of the partition holding `at`, partitions aligned on the Unix epoch.
    pub fn start_of(self, at: DateTime<Utc>) -> DateTime<Utc> {
        let seconds = at.timestamp().div_euclid(self.seconds()) * self.seconds();
        Utc.timestamp_opt(seconds, 0).single().unwrap_or(at)
    }
}

impl Default for PartitionWidth {
    fn default() -> PartitionWidth {
        PartitionWidth(Duration::from_secs(3600))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn widths_are_whole_minutes_from_a_minute_to_a_day() {
        assert!(PartitionWidth::new(Duration::from_secs(60)).is_ok());
        assert!(PartitionWidth::new(Duration::from_secs(24 * 3600)).is_ok());
        let error = PartitionWidth::new(Duration::from_secs(90)).unwrap_err();
        assert!(error.contains("whole number of minutes"), "{error}");
        assert!(PartitionWidth::new(Duration::from_secs(30)).is_err());
        assert!(PartitionWidth::new(Duration::from_secs(2 * 24 * 3600)).is_err());
    }

    #[test]
    fn partitions_align_on_the_epoch_and_are_kept_ready_a_day_ahead() {
        let hour = PartitionWidth::default();
        let at = Utc.with_ymd_and_hms(2026, 12, 5, 14, 37, 12).unwrap();
        assert_eq!(
            hour.start_of(at),
            Utc.with_ymd_and_hms(2026, 12, 5, 14, 0, 0).unwrap()
        );
        assert_eq!(hour.ahead(), 24);
        assert_eq!(
            PartitionWidth::new(Duration::from_secs(60))
                .unwrap()
                .ahead(),
            60
        );
        assert_eq!(PartitionWidth::new(PartitionWidth::MAX).unwrap().ahead(), 3);
    }
}
