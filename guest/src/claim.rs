//! Claims: one registry call at a time changes a given entry name.
//!
//! Before it changes an entry, a call creates the name's claim file
//! (`.claim-<hash of the entry name>`) exclusively, and it removes it when it
//! is done. Every call that changes entries (write, renew, remove,
//! compare-and-remove, sweep) does so, so while a call holds a claim, the
//! entry it judged stays what it judged. That is what lets a renewal replace
//! an entry with one atomic rename: the name is never absent, and a
//! successor's entry can never be overwritten by a judgment made before it.
//!
//! A claim left by a call that died (or stopped for longer than
//! [`CLAIM_STALE_MS`]) is broken by the next call that needs the name, and
//! swept as debris. A holder checks that its claim is still its own right
//! before each change it makes, so a broken claim's holder that resumes
//! changes nothing.

use std::cell::Cell;

use agentmux_registry_core::entry::BUSY_PREFIX;
use agentmux_registry_core::name::claim_file_name;
use agentmux_registry_core::Error;
use wasi::filesystem::types::{
    Descriptor, DescriptorFlags, DescriptorType, ErrorCode, MetadataHashValue, OpenFlags, PathFlags,
};

use crate::agents::{io, now_ms, unique_name, GRAB_PREFIX};

/// Age after which a claim is taken for the debris of a call that died. A
/// call holds a claim for a few file operations (microseconds); this is long
/// enough that only a process stopped mid-call for that long loses its claim.
pub const CLAIM_STALE_MS: u64 = 10_000;
/// How long a call that needs a claimed name waits for it, looking again
/// every [`CLAIM_POLL_NS`], before it reports the name busy: a claim is
/// normally released within that time. There is no timer a blocking host
/// can wake, so the wait spins; longer waits are the host's, which can sleep.
const CLAIM_WAIT_MS: u64 = 10;
/// A claim is held for tens of microseconds: look again that often.
const CLAIM_POLL_NS: u64 = 50_000;

/// Whether the claim was taken, or another call held it throughout the wait.
pub enum Taken<'d> {
    Held(Claim<'d>),
    Busy,
}

/// A held claim; released on drop.
pub struct Claim<'d> {
    dir: &'d Descriptor,
    name: String,
    identity: MetadataHashValue,
}

impl<'d> Claim<'d> {
    /// Takes the claim on `entry_name`, waiting up to [`CLAIM_WAIT_MS`]
    /// when `wait` is set (otherwise not at all) while another call holds it.
    pub fn take(dir: &'d Descriptor, entry_name: &str, wait: bool) -> Result<Taken<'d>, Error> {
        let name = claim_file_name(entry_name);
        let started = monotonic_ms();
        loop {
            // Windows refuses, for a moment, to create a name whose previous
            // file was removed while another process had it open.
            match patiently(|| {
                dir.open_at(
                    PathFlags::empty(),
                    &name,
                    OpenFlags::CREATE | OpenFlags::EXCLUSIVE,
                    DescriptorFlags::WRITE,
                )
            }) {
                Ok(file) => {
                    let identity = file
                        .metadata_hash()
                        .map_err(|code| io("identify", &name, code))?;
                    // Closed at once: Windows cannot remove an open file.
                    drop(file);
                    return Ok(Taken::Held(Claim {
                        dir,
                        name,
                        identity,
                    }));
                }
                Err(ErrorCode::Exist) => {
                    if break_if_stale(dir, &name)? != Stale::Fresh {
                        continue;
                    }
                    if !wait || monotonic_ms().saturating_sub(started) >= CLAIM_WAIT_MS {
                        return Ok(Taken::Busy);
                    }
                    pause(CLAIM_POLL_NS);
                }
                Err(code) => return Err(io("create", &name, code)),
            }
        }
    }

    /// Whether this call still holds its claim: false only if it was broken
    /// as stale while this call was stopped.
    pub fn is_held(&self) -> bool {
        is_identity(self.dir, &self.name, self.identity)
    }

    /// Fails unless the claim is still held.
    pub fn check(&self, entry_name: &str) -> Result<(), Error> {
        if self.is_held() {
            Ok(())
        } else {
            Err(Error::Io(format!(
                "{entry_name:?}: this call was stopped for longer than {} s and another call \
                 took its claim over; nothing was changed, try again",
                CLAIM_STALE_MS / 1000
            )))
        }
    }
}

impl Drop for Claim<'_> {
    fn drop(&mut self) {
        if self.is_held() {
            let _ = self.dir.unlink_file_at(&self.name);
        }
    }
}

/// The error a call reports when a claim stayed busy.
pub fn busy(entry_name: &str) -> Error {
    Error::Io(format!(
        "{BUSY_PREFIX}{entry_name:?} is being changed by another call; try again"
    ))
}

/// Whether the file at `name` is the one identified by `identity`.
pub fn is_identity(dir: &Descriptor, name: &str, identity: MetadataHashValue) -> bool {
    matches!(
        dir.metadata_hash_at(PathFlags::empty(), name),
        Ok(hash) if (hash.lower, hash.upper) == (identity.lower, identity.upper)
    )
}

/// What [`break_if_stale`] found.
#[derive(PartialEq)]
pub enum Stale {
    /// A claim younger than [`CLAIM_STALE_MS`]: left in place.
    Fresh,
    /// A stale claim, removed by this call.
    Broken,
    /// Nothing by that name any more.
    Gone,
}

/// Removes the claim file `name` if it is older than [`CLAIM_STALE_MS`].
/// Two calls breaking the same stale claim at once never remove a fresh
/// claim: the one removed is the one judged (taken aside and identified
/// first).
pub fn break_if_stale(dir: &Descriptor, name: &str) -> Result<Stale, Error> {
    let stat = match dir.stat_at(PathFlags::empty(), name) {
        Ok(stat) => stat,
        Err(ErrorCode::NoEntry) => return Ok(Stale::Gone),
        Err(code) => return Err(io("stat", name, code)),
    };
    // Only this registry creates claims, as empty files: a directory here
    // was put by hand, and could not be removed as debris.
    if stat.type_ == DescriptorType::Directory {
        return Err(Error::Conflict(format!(
            "{name:?} is a directory where a claim file belongs; remove it"
        )));
    }
    let Some(modified) = stat.data_modification_timestamp else {
        return Ok(Stale::Fresh);
    };
    // Stale when its time is far from now either way: a claim stamped in
    // the future (the clock was set back since) would otherwise hold the
    // name until the clock caught up.
    let modified_ms = modified.seconds.saturating_mul(1000);
    if now_ms().abs_diff(modified_ms) <= CLAIM_STALE_MS {
        return Ok(Stale::Fresh);
    }
    let judged = match dir.metadata_hash_at(PathFlags::empty(), name) {
        Ok(hash) => hash,
        Err(ErrorCode::NoEntry) => return Ok(Stale::Gone),
        Err(code) => return Err(io("identify", name, code)),
    };
    let grabbed = unique_name(GRAB_PREFIX);
    match dir.rename_at(name, dir, &grabbed) {
        Ok(()) => {}
        Err(ErrorCode::NoEntry) => return Ok(Stale::Gone),
        Err(code) => return Err(io("rename", name, code)),
    }
    let broken = is_identity(dir, &grabbed, judged);
    if !broken {
        // A fresh claim was taken meanwhile: put it back.
        let _ = dir.link_at(PathFlags::empty(), &grabbed, dir, name);
    }
    let _ = dir.unlink_file_at(&grabbed);
    Ok(if broken { Stale::Broken } else { Stale::Gone })
}

/// Monotonic milliseconds.
fn monotonic_ms() -> u64 {
    wasi::clocks::monotonic_clock::now() / 1_000_000
}

/// Waits `nanos` without a pollable: hosts that run calls outside an
/// async runtime (this crate's blocking API) have no timer to wake one.
fn pause(nanos: u64) {
    use wasi::clocks::monotonic_clock::now;
    let until = now().saturating_add(nanos);
    while now() < until {}
}

thread_local! {
    /// Milliseconds the current call may still spend retrying refusals.
    static RETRY_BUDGET_MS: Cell<u32> = const { Cell::new(0) };
}

/// Most a call spends retrying refusals, whatever the number of names.
const RETRY_BUDGET_PER_CALL_MS: u32 = 50;

/// Gives the current call its retry budget; called once per exported call.
pub fn reset_retry_budget() {
    RETRY_BUDGET_MS.with(|b| b.set(RETRY_BUDGET_PER_CALL_MS));
}

/// Runs a call that Windows may refuse with `access` for a moment (a
/// rename onto a name another process has open, or any call on a name whose
/// file was removed while still open: Windows keeps such a name until its
/// last handle closes), trying again a millisecond later while the call's
/// budget lasts. Elsewhere `access` is a real permission problem; it then
/// costs at most the budget once per call, never a wait per name.
pub fn patiently<T>(mut op: impl FnMut() -> Result<T, ErrorCode>) -> Result<T, ErrorCode> {
    loop {
        match op() {
            Err(ErrorCode::Access) if take_a_millisecond() => pause(1_000_000),
            done => return done,
        }
    }
}

fn take_a_millisecond() -> bool {
    RETRY_BUDGET_MS.with(|b| {
        let left = b.get();
        b.set(left.saturating_sub(1));
        left > 0
    })
}
