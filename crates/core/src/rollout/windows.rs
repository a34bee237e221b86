//! Maintenance windows: on which days, from when to when, in which IANA time zone a node
//! may start. Pure, with injected time, correct across midnight and DST changes.
//!
//! A window opens on each listed day at `start` local time and closes at `end` local
//! time — the next day when `end` is not after `start`. A local time that does not exist
//! (the spring-forward gap) or exists twice (fall-back) is resolved as most tools do
//! ("compatible"): a time in the gap moves forward by the gap's length, an ambiguous time
//! is the earlier instant. So a window over the change is shorter or longer in real time,
//! exactly like the wall clock the operator reads.

use jiff::civil::{Date, Time, Weekday};
use jiff::tz::TimeZone;
use jiff::{Timestamp, ToSpan};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WindowError {
    #[error(
        "unknown time zone {0:?} (want an IANA name such as Europe/Berlin or America/New_York)"
    )]
    UnknownTimeZone(String),
    #[error("invalid time {0:?} (want HH:MM, 24-hour)")]
    InvalidTime(String),
    #[error("unknown day {0:?} (want Mon, Tue, ... or Monday, Tuesday, ...)")]
    UnknownDay(String),
    #[error("a maintenance window needs at least one day")]
    NoDays,
    #[error("a maintenance window cannot start and end at the same time ({0})")]
    Empty(String),
}

#[derive(Debug, Clone, PartialEq)]
pub struct MaintenanceWindow {
    days: Vec<Weekday>,
    start: Time,
    end: Time,
    zone: TimeZone,
}

fn parse_day(text: &str) -> Result<Weekday, WindowError> {
    let lower = text.trim().to_ascii_lowercase();
    let day = match lower.get(..3) {
        Some("mon") => Weekday::Monday,
        Some("tue") => Weekday::Tuesday,
        Some("wed") => Weekday::Wednesday,
        Some("thu") => Weekday::Thursday,
        Some("fri") => Weekday::Friday,
        Some("sat") => Weekday::Saturday,
        Some("sun") => Weekday::Sunday,
        _ => return Err(WindowError::UnknownDay(text.to_owned())),
    };
    let full = [
        "monday",
        "tuesday",
        "wednesday",
        "thursday",
        "friday",
        "saturday",
        "sunday",
    ];
    if lower.len() == 3 || full.contains(&lower.as_str()) {
        Ok(day)
    } else {
        Err(WindowError::UnknownDay(text.to_owned()))
    }
}

fn parse_time(text: &str) -> Result<Time, WindowError> {
    let invalid = || WindowError::InvalidTime(text.to_owned());
    let (h, m) = text.trim().split_once(':').ok_or_else(invalid)?;
    if h.len() != 2 || m.len() != 2 {
        return Err(invalid());
    }
    let (h, m): (i8, i8) = (
        h.parse().map_err(|_| invalid())?,
        m.parse().map_err(|_| invalid())?,
    );
    Time::new(h, m, 0, 0).map_err(|_| invalid())
}

impl MaintenanceWindow {
    /// Builds a window from its spec fields, naming what is wrong.
    pub fn parse(
        days: &[String],
        start: &str,
        end: &str,
        time_zone: &str,
    ) -> Result<Self, WindowError> {
        if days.is_empty() {
            return Err(WindowError::NoDays);
        }
        let days = days
            .iter()
            .map(|d| parse_day(d))
            .collect::<Result<Vec<_>, _>>()?;
        let (start, end) = (parse_time(start)?, parse_time(end)?);
        if start == end {
            return Err(WindowError::Empty(start.to_string()));
        }
        let zone = TimeZone::get(time_zone)
            .map_err(|_| WindowError::UnknownTimeZone(time_zone.to_owned()))?;
        Ok(Self {
            days,
            start,
            end,
            zone,
        })
    }

    fn instant(&self, date: Date, time: Time) -> Option<Timestamp> {
        self.zone
            .to_ambiguous_zoned(date.to_datetime(time))
            .compatible()
            .ok()
            .map(|z| z.timestamp())
    }

    /// The openings (start, end) that begin on the local dates from the day before `at`
    /// to a week after it, in order.
    fn openings_around(&self, at: Timestamp) -> Vec<(Timestamp, Timestamp)> {
        let today = at.to_zoned(self.zone.clone()).date();
        (-1..=8)
            .filter_map(|offset: i64| today.checked_add(offset.days()).ok())
            .filter(|d| self.days.contains(&d.weekday()))
            .filter_map(|d| {
                let end_date = if self.end > self.start {
                    d
                } else {
                    d.tomorrow().ok()?
                };
                Some((
                    self.instant(d, self.start)?,
                    self.instant(end_date, self.end)?,
                ))
            })
            .collect()
    }

    /// The end of the opening `at` falls in, if it is open.
    pub fn open_until(&self, at: Timestamp) -> Option<Timestamp> {
        self.openings_around(at)
            .into_iter()
            .find(|(start, end)| *start <= at && at < *end)
            .map(|(_, end)| end)
    }

    /// The next opening that starts after `at`.
    pub fn next_start(&self, at: Timestamp) -> Option<Timestamp> {
        self.openings_around(at)
            .into_iter()
            .map(|(s, _)| s)
            .find(|s| *s > at)
    }
}

/// Two windows that are open at once, named by their positions, if any: overlapping
/// windows are almost always a typo. Checked over two weeks from a fixed date.
pub fn overlapping(windows: &[MaintenanceWindow]) -> Option<(usize, usize)> {
    let from = Timestamp::from_second(1_767_571_200).unwrap_or(Timestamp::UNIX_EPOCH); // Mon 2026-01-05
    let week = Timestamp::from_second(1_767_571_200 + 7 * 86_400).unwrap_or(Timestamp::UNIX_EPOCH);
    let openings: Vec<Vec<(Timestamp, Timestamp)>> = windows
        .iter()
        .map(|w| {
            let mut all = w.openings_around(from);
            all.extend(w.openings_around(week));
            all
        })
        .collect();
    for i in 0..openings.len() {
        for j in i + 1..openings.len() {
            let overlap = openings[i]
                .iter()
                .any(|(s1, e1)| openings[j].iter().any(|(s2, e2)| s1 < e2 && s2 < e1));
            if overlap {
                return Some((i, j));
            }
        }
    }
    None
}

/// Whether a node may start at `at`: always when no window is configured, else while
/// any window is open.
pub fn may_start(windows: &[MaintenanceWindow], at: Timestamp) -> bool {
    windows.is_empty() || windows.iter().any(|w| w.open_until(at).is_some())
}

/// When the next window opens (for the status), if none is open now.
pub fn next_opening(windows: &[MaintenanceWindow], at: Timestamp) -> Option<Timestamp> {
    if may_start(windows, at) {
        return None;
    }
    windows.iter().filter_map(|w| w.next_start(at)).min()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn window(days: &[&str], start: &str, end: &str, tz: &str) -> MaintenanceWindow {
        let days: Vec<String> = days.iter().map(|d| d.to_string()).collect();
        MaintenanceWindow::parse(&days, start, end, tz).unwrap()
    }

    /// The instant of a local wall-clock time in `tz` (earlier one if ambiguous).
    fn local(text: &str, tz: &str) -> Timestamp {
        let dt: jiff::civil::DateTime = text.parse().unwrap();
        TimeZone::get(tz)
            .unwrap()
            .to_ambiguous_zoned(dt)
            .earlier()
            .unwrap()
            .timestamp()
    }

    #[test]
    fn a_weekly_window_opens_and_closes_on_local_time() {
        // 2026-12-01 is a Tuesday.
        let w = window(&["Tue"], "01:00", "03:00", "Europe/Berlin");
        assert!(
            w.open_until(local("2026-12-01T00:59", "Europe/Berlin"))
                .is_none()
        );
        assert_eq!(
            w.open_until(local("2026-12-01T01:30", "Europe/Berlin")),
            Some(local("2026-12-01T03:00", "Europe/Berlin"))
        );
        assert!(
            w.open_until(local("2026-12-01T03:00", "Europe/Berlin"))
                .is_none(),
            "the end is exclusive"
        );
        assert_eq!(
            w.next_start(local("2026-12-01T03:00", "Europe/Berlin")),
            Some(local("2026-12-08T01:00", "Europe/Berlin"))
        );
        assert!(
            w.open_until(local("2026-12-02T01:30", "Europe/Berlin"))
                .is_none(),
            "Wednesday is not listed"
        );
    }

    #[test]
    fn a_window_crossing_midnight_belongs_to_the_day_it_starts() {
        // Friday 22:00 to Saturday 02:00; 2026-12-04 is a Friday.
        let w = window(&["Friday"], "22:00", "02:00", "America/New_York");
        assert!(
            w.open_until(local("2026-12-04T23:00", "America/New_York"))
                .is_some()
        );
        assert_eq!(
            w.open_until(local("2026-12-05T01:59", "America/New_York")),
            Some(local("2026-12-05T02:00", "America/New_York"))
        );
        assert!(
            w.open_until(local("2026-12-05T02:00", "America/New_York"))
                .is_none()
        );
        assert!(
            w.open_until(local("2026-12-05T23:00", "America/New_York"))
                .is_none(),
            "Saturday night is not a window"
        );
        assert!(
            w.open_until(local("2026-12-04T01:00", "America/New_York"))
                .is_none(),
            "Thursday's night is not one either"
        );
    }

    #[test]
    fn spring_forward_shortens_a_window_that_starts_in_the_gap() {
        // Europe/Berlin, Sunday 2026-03-29: 02:00 CET jumps to 03:00 CEST. 02:30 does not
        // exist; the window starts at 03:30 CEST and ends at 04:00 CEST: 30 real minutes.
        let w = window(&["Sun"], "02:30", "04:00", "Europe/Berlin");
        let start = "2026-03-29T01:30:00Z".parse::<Timestamp>().unwrap(); // 03:30 CEST
        assert!(w.open_until(start - 1.second()).is_none());
        let end = w.open_until(start).unwrap();
        assert_eq!(end, "2026-03-29T02:00:00Z".parse::<Timestamp>().unwrap());
    }

    #[test]
    fn fall_back_lengthens_a_window_across_the_repeated_hour() {
        // Europe/Berlin, Sunday 2026-10-25: 03:00 CEST falls back to 02:00 CET. A 01:00–04:00
        // window lasts four real hours, and the second 02:30 is inside it.
        let w = window(&["Sun"], "01:00", "04:00", "Europe/Berlin");
        let opens = "2026-10-24T23:00:00Z".parse::<Timestamp>().unwrap(); // 01:00 CEST
        let closes = w.open_until(opens).unwrap();
        assert_eq!(
            closes.duration_since(opens),
            jiff::SignedDuration::from_hours(4)
        );
        let second_two_thirty = "2026-10-25T01:30:00Z".parse::<Timestamp>().unwrap(); // 02:30 CET
        assert!(w.open_until(second_two_thirty).is_some());
    }

    #[test]
    fn the_same_rule_means_different_instants_in_different_zones() {
        let at = "2026-12-01T16:30:00Z".parse::<Timestamp>().unwrap(); // Tue 01:30 in Tokyo (Wed)
        assert!(
            window(&["Wed"], "01:00", "02:00", "Asia/Tokyo")
                .open_until(at)
                .is_some()
        );
        assert!(
            window(&["Tue"], "16:00", "17:00", "UTC")
                .open_until(at)
                .is_some()
        );
        assert!(
            window(&["Tue"], "01:00", "02:00", "America/New_York")
                .open_until(at)
                .is_none()
        );
    }

    #[test]
    fn nodes_start_only_inside_a_window_and_the_next_opening_is_known() {
        let windows = [
            window(&["Sat", "Sun"], "02:00", "05:00", "UTC"),
            window(&["Wed"], "12:00", "13:00", "UTC"),
        ];
        let monday = "2026-11-30T10:00:00Z".parse::<Timestamp>().unwrap();
        assert!(!may_start(&windows, monday));
        assert_eq!(
            next_opening(&windows, monday),
            Some("2026-12-02T12:00:00Z".parse().unwrap())
        );
        let wednesday_noon = "2026-12-02T12:15:00Z".parse::<Timestamp>().unwrap();
        assert!(may_start(&windows, wednesday_noon));
        assert_eq!(next_opening(&windows, wednesday_noon), None);
        assert!(may_start(&[], monday), "no windows: always");
    }

    #[test]
    fn bad_input_names_what_is_wrong() {
        let days = |d: &[&str]| d.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(
            MaintenanceWindow::parse(&days(&["Mon"]), "01:00", "02:00", "Mars/Olympus"),
            Err(WindowError::UnknownTimeZone("Mars/Olympus".into()))
        );
        assert_eq!(
            MaintenanceWindow::parse(&days(&["Mon"]), "1:00", "02:00", "UTC"),
            Err(WindowError::InvalidTime("1:00".into()))
        );
        assert_eq!(
            MaintenanceWindow::parse(&days(&["Mon"]), "24:00", "02:00", "UTC"),
            Err(WindowError::InvalidTime("24:00".into()))
        );
        assert_eq!(
            MaintenanceWindow::parse(&days(&["Funday"]), "01:00", "02:00", "UTC"),
            Err(WindowError::UnknownDay("Funday".into()))
        );
        assert_eq!(
            MaintenanceWindow::parse(&days(&[]), "01:00", "02:00", "UTC"),
            Err(WindowError::NoDays)
        );
        assert!(matches!(
            MaintenanceWindow::parse(&days(&["Mon"]), "01:00", "01:00", "UTC"),
            Err(WindowError::Empty(_))
        ));
        let err = MaintenanceWindow::parse(&days(&["Mon"]), "01:00", "02:00", "Europe/Berln")
            .unwrap_err();
        assert!(err.to_string().contains("Europe/Berln"), "{err}");
    }

    #[test]
    fn overlapping_windows_are_found_also_across_time_zones() {
        let w = |days: &[&str], start: &str, end: &str, tz: &str| {
            MaintenanceWindow::parse(
                &days.iter().map(|d| d.to_string()).collect::<Vec<_>>(),
                start,
                end,
                tz,
            )
            .unwrap()
        };
        let night = w(&["Sat"], "22:00", "04:00", "Europe/Berlin");
        let sunday = w(&["Sun"], "06:00", "08:00", "Europe/Berlin");
        assert_eq!(overlapping(&[night.clone(), sunday.clone()]), None);
        // Sunday 02:00 in Berlin is still inside Saturday night's window.
        let early = w(&["Sun"], "02:00", "03:00", "Europe/Berlin");
        assert_eq!(overlapping(&[night.clone(), early]), Some((0, 1)));
        // 01:00 UTC on Sunday is 02:00 in Berlin (winter): the same instants.
        let utc = w(&["Sun"], "01:00", "01:30", "UTC");
        assert_eq!(overlapping(&[sunday, night, utc]), Some((1, 2)));
    }
}
