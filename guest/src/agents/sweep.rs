//! Sweeping: stale and malformed entries, unsafe names and the debris of
//! interrupted calls, a bounded number of names per step.

use agentmux_registry_core::name::CLAIM_PREFIX;
use agentmux_registry_core::{Error, SweepProgress};
use wasi::filesystem::types::{Descriptor, DescriptorType, ErrorCode, PathFlags};

use super::files::{remove_judged, unlink};
use super::listing::{is_entry_name, Names};
use super::slot::{inspect, Slot};
use super::{
    io, now_ms, with_dir, DEBRIS_MAX_AGE_MS, FUTURE_TOLERANCE_MS, GRAB_PREFIX, TEMP_PREFIX,
};
use crate::claim::{break_if_stale, Claim, Stale, Taken};

/// A sweep done in steps of a bounded number of names.
pub struct Sweep {
    ages: Ages,
    names: Option<Names>,
    progress: SweepProgress,
}

impl Sweep {
    pub fn new(max_age_ms: u64) -> Sweep {
        Sweep {
            ages: Ages::new(max_age_ms),
            names: None,
            progress: SweepProgress::default(),
        }
    }

    pub fn next_batch(&mut self, max_names: u32) -> Result<SweepProgress, Error> {
        if self.progress.done {
            return Ok(self.progress.clone());
        }
        with_dir(|dir| {
            let names = match &mut self.names {
                Some(names) => names,
                None => self.names.insert(Names::open(dir)?),
            };
            for _ in 0..max_names.max(1) {
                let Some(name) = names.next()? else {
                    self.progress.done = true;
                    self.names = None;
                    break;
                };
                self.progress.examined += 1;
                let gone = self.ages.sweep_name(dir, &name);
                count(&mut self.progress, gone);
            }
            Ok(self.progress.clone())
        })
    }
}

/// Counts what sweeping one name did. A name that failed is counted and
/// left for the next sweep: one bad name must not stop the rest. (Names
/// another instance removes or rewrites meanwhile are not failures.)
pub(crate) fn count(progress: &mut SweepProgress, gone: Result<bool, Error>) {
    match gone {
        Ok(gone) => progress.removed += u64::from(gone),
        Err(error) => {
            progress.failed += 1;
            progress
                .first_failure
                .get_or_insert_with(|| error.to_string());
        }
    }
}

/// What a sweep removes, by age, fixed when it starts.
#[derive(Clone, Copy)]
pub(crate) struct Ages {
    now: u64,
    cutoff: u64,
    latest: u64,
}

impl Ages {
    pub(crate) fn new(max_age_ms: u64) -> Ages {
        let now = now_ms();
        Ages {
            now,
            cutoff: now.saturating_sub(max_age_ms),
            latest: now.saturating_add(FUTURE_TOLERANCE_MS),
        }
    }

    /// Sweeps one name of `dir`: debris, a stale claim, or an entry that is
    /// stale, malformed or not a regular file. True when it was removed.
    pub(crate) fn sweep_name(&self, dir: &Descriptor, name: &str) -> Result<bool, Error> {
        if name.starts_with(TEMP_PREFIX) || name.starts_with(GRAB_PREFIX) {
            sweep_debris(dir, name, self.now)
        } else if name.starts_with(CLAIM_PREFIX) {
            break_if_stale(dir, name).map(|stale| stale == Stale::Broken)
        } else if is_entry_name(name) {
            sweep_entry(dir, name, self.cutoff, self.latest)
        } else {
            Ok(false)
        }
    }
}

/// A whole sweep in one call.
pub fn cleanup_stale(max_age_ms: u64) -> Result<SweepProgress, Error> {
    let mut sweep = Sweep::new(max_age_ms);
    loop {
        let progress = sweep.next_batch(u32::MAX)?;
        if progress.done {
            return Ok(progress);
        }
    }
}

fn sweep_debris(dir: &Descriptor, name: &str, now: u64) -> Result<bool, Error> {
    let stat = match dir.stat_at(PathFlags::empty(), name) {
        Ok(stat) => stat,
        Err(ErrorCode::NoEntry) => return Ok(false),
        Err(code) => return Err(io("stat", name, code)),
    };
    // A temporary file is written right after it is created, so its
    // modification time is its age. A grabbed entry keeps the entry's old
    // modification time; the rename that grabbed it set its status-change time.
    let since = if name.starts_with(GRAB_PREFIX) {
        stat.status_change_timestamp
    } else {
        stat.data_modification_timestamp
    };
    let Some(since) = since else {
        return Ok(false);
    };
    let since_ms = since.seconds.saturating_mul(1000);
    if stat.type_ == DescriptorType::Directory || now.saturating_sub(since_ms) <= DEBRIS_MAX_AGE_MS
    {
        return Ok(false);
    }
    unlink(dir, name)
}

fn sweep_entry(dir: &Descriptor, name: &str, cutoff: u64, latest: u64) -> Result<bool, Error> {
    // A name another call is changing right now is left for the next sweep.
    let claim = match Claim::take(dir, name, false)? {
        Taken::Held(claim) => claim,
        Taken::Busy => return Ok(false),
    };
    match inspect(dir, name)? {
        // Directories are not ours to delete; a superseded file is no longer
        // at this name.
        Slot::Missing | Slot::Special(DescriptorType::Directory) => Ok(false),
        Slot::File { current: false, .. } => Ok(false),
        // The registry never creates these. Unlinking removes the name only;
        // it never opens or follows what the name points at.
        Slot::Special(_) => {
            claim.check(name)?;
            unlink(dir, name)
        }
        Slot::File {
            entry: None, file, ..
        } => remove_judged(dir, &claim, name, file),
        Slot::File {
            entry: Some(entry),
            file,
            ..
        } if entry.updated_at < cutoff || entry.updated_at > latest => {
            remove_judged(dir, &claim, name, file)
        }
        Slot::File { .. } => Ok(false),
    }
}
