//! The changes the registry makes to names: entries written to fresh files
//! and renamed into place, and removals, each under the name's claim.

use agentmux_registry_core::{Entry, Error};
use wasi::filesystem::types::{Descriptor, DescriptorFlags, ErrorCode, OpenFlags, PathFlags};

use super::{io, TEMP_PREFIX};
use crate::claim::{busy, is_identity, patiently, Claim, Taken};

pub(crate) fn unique_name(prefix: &str) -> String {
    format!("{prefix}{:016x}", wasi::random::random::get_random_u64())
}

/// Creates a new temporary file holding `bytes`; returns its name.
pub(super) fn write_temp(dir: &Descriptor, bytes: &[u8]) -> Result<String, Error> {
    let mut attempts = 0;
    let (name, file) = loop {
        let name = unique_name(TEMP_PREFIX);
        match dir.open_at(
            PathFlags::empty(),
            &name,
            OpenFlags::CREATE | OpenFlags::EXCLUSIVE,
            DescriptorFlags::WRITE,
        ) {
            Ok(file) => break (name, file),
            Err(ErrorCode::Exist) if attempts < 8 => attempts += 1,
            Err(code) => return Err(io("create", &name, code)),
        }
    };
    let mut written = 0usize;
    while written < bytes.len() {
        match file.write(&bytes[written..], written as u64) {
            Ok(0) => {
                let _ = dir.unlink_file_at(&name);
                return Err(Error::Io(format!("write {name:?}: no progress")));
            }
            Ok(n) => written += n as usize,
            Err(code) => {
                let _ = dir.unlink_file_at(&name);
                return Err(io("write", &name, code));
            }
        }
    }
    Ok(name)
}

/// Writes `entry` to a new file and renames it over `name`, whose claim the
/// caller holds.
pub(super) fn replace_with(
    dir: &Descriptor,
    claim: &Claim,
    name: &str,
    entry: &Entry,
) -> Result<(), Error> {
    let temp = write_temp(dir, &entry.to_json())?;
    let placed = claim.check(name).and_then(|()| {
        patiently(|| dir.rename_at(&temp, dir, name)).map_err(|code| io("rename into", name, code))
    });
    if placed.is_err() {
        let _ = dir.unlink_file_at(&temp);
    }
    placed
}

/// Takes `name`'s claim, waiting for a call that holds it.
pub(super) fn claim<'d>(dir: &'d Descriptor, name: &str) -> Result<Claim<'d>, Error> {
    match Claim::take(dir, name, true)? {
        Taken::Held(claim) => Ok(claim),
        Taken::Busy => Err(busy(name)),
    }
}

/// Removes the judged file at `name`. Under the claim nothing else changes
/// the name; the identity check keeps writers that take no claim safe too.
pub(super) fn remove_judged(
    dir: &Descriptor,
    claim: &Claim,
    name: &str,
    judged: Descriptor,
) -> Result<bool, Error> {
    let identity = judged
        .metadata_hash()
        .map_err(|code| io("identify", name, code))?;
    // Closed before the removal: Windows refuses to remove an open file.
    drop(judged);
    claim.check(name)?;
    // Checked again before every try: a writer that takes no claim may put
    // a new file at the name while a reader holds the old one open.
    unlink_while(dir, name, || is_identity(dir, name, identity))
}

/// Unlinks `name`; false when it was already gone.
pub(super) fn unlink(dir: &Descriptor, name: &str) -> Result<bool, Error> {
    unlink_while(dir, name, || true)
}

/// Unlinks `name` if `still` holds just before; false when it was already
/// gone or `still` failed. Windows refuses to unlink a file another reader
/// has open for a moment: tried again while the call's budget lasts.
fn unlink_while(dir: &Descriptor, name: &str, still: impl Fn() -> bool) -> Result<bool, Error> {
    let unlinked = patiently(|| {
        if !still() {
            return Ok(false);
        }
        dir.unlink_file_at(name).map(|()| true)
    });
    match unlinked {
        Ok(unlinked) => Ok(unlinked),
        Err(ErrorCode::NoEntry) => Ok(false),
        Err(code) => Err(io("unlink", name, code)),
    }
}
