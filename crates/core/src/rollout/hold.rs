//! Whether the current wave may start new nodes now: the operator's pause, a manual
//! approval not given yet, or no maintenance window open. Pure, with injected time.
//! Nodes already in flight finish their sequence whatever this says.

use std::collections::BTreeSet;

use jiff::Timestamp;

use super::windows::{MaintenanceWindow, may_start, next_opening};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Hold {
    /// `spec.paused`.
    Paused,
    /// `approval: Manual` and the wave is not in `approvedWaves`.
    AwaitingApproval { wave: String },
    /// No maintenance window is open; the next one opens then (none within a week:
    /// `None`).
    OutsideWindow { next: Option<Timestamp> },
}

/// What holds `wave` back at `now`, if anything. A pause comes first, then the approval
/// (an operator's decision), then the clock.
pub fn hold(
    paused: bool,
    manual_approval: bool,
    approved: &BTreeSet<String>,
    wave: &str,
    windows: &[MaintenanceWindow],
    now: Timestamp,
) -> Option<Hold> {
    if paused {
        return Some(Hold::Paused);
    }
    if manual_approval && !approved.contains(wave) {
        return Some(Hold::AwaitingApproval {
            wave: wave.to_owned(),
        });
    }
    if !may_start(windows, now) {
        return Some(Hold::OutsideWindow {
            next: next_opening(windows, now),
        });
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    fn saturday_night() -> Vec<MaintenanceWindow> {
        vec![MaintenanceWindow::parse(&["Sat".into()], "22:00", "04:00", "Europe/Berlin").unwrap()]
    }

    #[test]
    fn a_pause_comes_before_an_approval_and_an_approval_before_the_clock() {
        let none = BTreeSet::new();
        // Wednesday noon in Berlin: outside the window.
        let wednesday = t("2026-12-02T11:00:00Z");
        assert_eq!(
            hold(true, true, &none, "a", &saturday_night(), wednesday),
            Some(Hold::Paused)
        );
        assert_eq!(
            hold(false, true, &none, "a", &saturday_night(), wednesday),
            Some(Hold::AwaitingApproval { wave: "a".into() })
        );
        let approved = BTreeSet::from(["a".to_owned()]);
        assert_eq!(
            hold(false, true, &approved, "a", &saturday_night(), wednesday),
            Some(Hold::OutsideWindow {
                next: Some(t("2026-12-05T21:00:00Z"))
            })
        );
        // Approving one wave does not approve the next.
        assert_eq!(
            hold(false, true, &approved, "b", &[], wednesday),
            Some(Hold::AwaitingApproval { wave: "b".into() })
        );
    }

    #[test]
    fn nothing_holds_an_approved_wave_inside_its_window() {
        let approved = BTreeSet::from(["a".to_owned()]);
        let saturday_late = t("2026-12-05T23:30:00Z");
        assert_eq!(
            hold(
                false,
                true,
                &approved,
                "a",
                &saturday_night(),
                saturday_late
            ),
            None
        );
        assert_eq!(
            hold(false, false, &BTreeSet::new(), "b", &[], saturday_late),
            None
        );
        // Resuming (paused false again) lets the wave go on.
        assert_eq!(
            hold(true, false, &BTreeSet::new(), "b", &[], saturday_late),
            Some(Hold::Paused)
        );
        assert_eq!(
            hold(false, false, &BTreeSet::new(), "b", &[], saturday_late),
            None
        );
    }
}
