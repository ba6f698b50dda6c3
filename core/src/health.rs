//! How healthy an entry is, graded the same way by every reader.

use crate::Entry;

/// Missed beats after which an entry is [`Health::Stale`].
pub const STALE_AFTER_MISSED_BEATS: u64 = 3;

/// The longest beat interval that counts (a day): an entry recording a
/// longer one is renewed on no schedule a reader can count on.
pub const MAX_BEAT_INTERVAL_MS: u64 = 86_400_000;

/// An entry's health, as any reader can grade it without configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Health {
    /// Renewed within [`STALE_AFTER_MISSED_BEATS`] of its recorded beat
    /// intervals, and its owner not provably dead.
    Fresh,
    /// Its owner has missed [`STALE_AFTER_MISSED_BEATS`] beats or more: it
    /// may have hung or died where no reader can see it (another machine,
    /// another pid namespace).
    Stale,
    /// Its owning process is provably gone.
    Dead,
    /// Neither: the entry records no beat interval (a plain write, a writer
    /// that predates the key, or one over [`MAX_BEAT_INTERVAL_MS`]) and its
    /// owner is not provably dead.
    Unknown,
}

impl Health {
    /// Grades `entry` at `now_ms` (Unix milliseconds); `owner_dead` is
    /// whether its owning process is provably gone (only the host can tell).
    /// A death proven outweighs a recent beat; a beat interval of 0, which
    /// no writer stores, counts as none.
    pub fn grade(entry: &Entry, now_ms: u64, owner_dead: bool) -> Health {
        if owner_dead {
            return Health::Dead;
        }
        match entry.beat_interval_ms {
            Some(interval) if (1..=MAX_BEAT_INTERVAL_MS).contains(&interval) => {
                // A clock behind the writer's makes the age 0: fresh.
                let age = now_ms.saturating_sub(entry.updated_at);
                if age > interval.saturating_mul(STALE_AFTER_MISSED_BEATS) {
                    Health::Stale
                } else {
                    Health::Fresh
                }
            }
            _ => Health::Unknown,
        }
    }

    /// The health's name, as the CLI and JSON output show it.
    pub fn as_str(self) -> &'static str {
        match self {
            Health::Fresh => "fresh",
            Health::Stale => "stale",
            Health::Dead => "dead",
            Health::Unknown => "unknown",
        }
    }

    /// The Unix millisecond at which `entry` turns stale: the first at which
    /// [`Health::grade`] says [`Health::Stale`] (its owner alive), or `None`
    /// when it never will (no interval recorded).
    pub fn stale_at(entry: &Entry) -> Option<u64> {
        let interval = entry
            .beat_interval_ms
            .filter(|i| (1..=MAX_BEAT_INTERVAL_MS).contains(i))?;
        Some(
            entry
                .updated_at
                .saturating_add(interval.saturating_mul(STALE_AFTER_MISSED_BEATS))
                .saturating_add(1),
        )
    }
}

/// An entry with its [`Health`] when it was read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Graded {
    /// The entry as stored.
    pub entry: Entry,
    /// How healthy it was when read.
    pub health: Health,
}

impl std::fmt::Display for Health {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn beating(interval: Option<u64>) -> Entry {
        Entry {
            agent_id: "a1".into(),
            updated_at: 1_000_000,
            beat_interval_ms: interval,
            ..Entry::default()
        }
    }

    #[test]
    fn an_entry_turns_stale_after_three_missed_beats_and_not_before() {
        let entry = beating(Some(20_000));
        let written = entry.updated_at;
        assert_eq!(Health::grade(&entry, written, false), Health::Fresh);
        assert_eq!(
            Health::grade(&entry, written + 60_000, false),
            Health::Fresh
        );
        assert_eq!(
            Health::grade(&entry, written + 60_001, false),
            Health::Stale
        );
        assert_eq!(Health::stale_at(&entry), Some(written + 60_001));
        // A reader whose clock is behind the writer's.
        assert_eq!(Health::grade(&entry, written - 5_000, false), Health::Fresh);
    }

    #[test]
    fn a_proven_death_outweighs_a_recent_beat() {
        let entry = beating(Some(20_000));
        assert_eq!(Health::grade(&entry, entry.updated_at, true), Health::Dead);
        assert_eq!(Health::grade(&beating(None), 0, true), Health::Dead);
    }

    #[test]
    fn without_an_interval_or_a_death_the_health_is_unknown() {
        for interval in [None, Some(0)] {
            let entry = beating(interval);
            assert_eq!(Health::grade(&entry, u64::MAX, false), Health::Unknown);
            assert_eq!(Health::stale_at(&entry), None);
        }
        // An interval too long to count is no schedule.
        let entry = beating(Some(MAX_BEAT_INTERVAL_MS + 1));
        assert_eq!(
            Health::grade(&entry, entry.updated_at, false),
            Health::Unknown
        );
        let entry = beating(Some(MAX_BEAT_INTERVAL_MS));
        assert_eq!(Health::grade(&entry, u64::MAX, false), Health::Stale);
    }
}
