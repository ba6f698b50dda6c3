//! Registry operations on the agents directory, through `wasi:filesystem`:
//! [`slot`] judges what a name holds, [`files`] makes the changes (fresh
//! files renamed into place, removals), [`entries`] are the operations on
//! one entry, [`listing`] and [`sweep`] go through the whole directory.
//!
//! Rules every operation follows:
//! - Nothing is ever followed: every `*_at` call passes no `symlink-follow`.
//! - A name is an entry only if it is a regular file of at most
//!   [`MAX_ENTRY_FILE_BYTES`]; it is `stat`ed before it is opened (so a FIFO
//!   is never opened) and `stat`ed again through the opened descriptor (so
//!   what is read is what was checked; a link count of zero there means the
//!   file was replaced after it was opened, and what was read is the complete
//!   previous version).
//! - Entries are never written in place: a write goes to a fresh temporary
//!   file that is renamed over the entry, so readers see the old entry or the
//!   new one, never a partial one and never no entry, and a hard link planted
//!   at an entry's name is replaced rather than written through.
//! - Every change to an entry name is made under that name's claim (see
//!   [`crate::claim`]): the entry judged is the entry replaced or removed,
//!   so a renewal never overwrites a successor and a sweep never removes a
//!   registration renewed after it was judged.
//! - The directory is read as a stream, one name at a time; a listing keeps
//!   only the ids it returned (to return each once).

pub(crate) mod entries;
mod files;
pub(crate) mod listing;
pub(crate) mod slot;
pub(crate) mod sweep;

use std::cell::OnceCell;

use agentmux_registry_core::Error;
use wasi::filesystem::types::{Descriptor, ErrorCode};

use crate::claim::reset_retry_budget;

pub use entries::{entries_at, evict, lookup, lookup_every, remove, remove_owned, renew, write};
pub(crate) use files::unique_name;
pub use listing::{list_entries, Listing};
pub use sweep::{cleanup_stale, Sweep};

/// Prefix of a new entry being written. Entry names never start with `.`.
pub(crate) const TEMP_PREFIX: &str = ".tmp-";
/// Prefix of a file taken aside to be removed only if it is the one judged
/// (stale claims; earlier versions took entries aside this way too).
pub(crate) const GRAB_PREFIX: &str = ".grab-";
/// Age after which a temporary or grabbed file is debris of an interrupted
/// call.
pub(crate) const DEBRIS_MAX_AGE_MS: u64 = 60_000;
/// How far in the future an entry's `updated_at` may be (clock differences)
/// before a sweep treats it as malformed: no writer can have stamped it, and
/// it would otherwise never age.
pub(crate) const FUTURE_TOLERANCE_MS: u64 = 3_600_000;

thread_local! {
    static AGENTS_DIR: OnceCell<Descriptor> = const { OnceCell::new() };
}

/// Runs one operation with the agents directory: the first (and only)
/// preopen, whatever its guest name. Each operation gets a fresh retry
/// budget.
pub(crate) fn with_dir<T>(f: impl FnOnce(&Descriptor) -> Result<T, Error>) -> Result<T, Error> {
    reset_retry_budget();
    AGENTS_DIR.with(|cell| {
        if cell.get().is_none() {
            let dir = wasi::filesystem::preopens::get_directories()
                .into_iter()
                .next()
                .map(|(dir, _guest_name)| dir)
                .ok_or_else(|| {
                    Error::Io(
                        "no directory was preopened: the host must grant the agents directory"
                            .into(),
                    )
                })?;
            let _ = cell.set(dir);
        }
        f(cell.get().expect("set above"))
    })
}

pub(crate) fn io(op: &str, name: &str, code: ErrorCode) -> Error {
    Error::Io(format!("{op} {name:?}: {}", code.message()))
}

/// The WASI wall clock, in Unix milliseconds.
pub(crate) fn now_ms() -> u64 {
    let t = wasi::clocks::wall_clock::now();
    t.seconds
        .saturating_mul(1000)
        .saturating_add(u64::from(t.nanoseconds / 1_000_000))
}
