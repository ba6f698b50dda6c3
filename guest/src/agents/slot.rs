//! What a name in the agents directory holds, judged without following or
//! blocking on it.

use agentmux_registry_core::entry::MAX_ENTRY_FILE_BYTES;
use agentmux_registry_core::{Entry, Error};
use wasi::filesystem::types::{
    Descriptor, DescriptorFlags, DescriptorType, ErrorCode, OpenFlags, PathFlags,
};

use super::io;
use crate::claim::patiently;

/// What a name in the agents directory holds.
pub(crate) enum Slot {
    /// Nothing by that name.
    Missing,
    /// Not a regular file: a symlink, FIFO, socket, device or directory.
    Special(DescriptorType),
    /// A regular file, opened and read; `entry` is `None` when it is not a
    /// valid entry. `current` is false when it was replaced or removed after
    /// it was opened: what was read is then a complete but superseded version.
    File {
        file: Descriptor,
        entry: Option<Entry>,
        current: bool,
    },
}

impl Slot {
    /// The entry read, if it is `agent_id`'s (in any spelling).
    pub(super) fn entry_of(self, agent_id: &str) -> Option<Entry> {
        match self {
            Slot::File {
                entry: Some(entry), ..
            } if entry.is_of(agent_id) => Some(entry),
            _ => None,
        }
    }
}

pub(crate) fn inspect(dir: &Descriptor, name: &str) -> Result<Slot, Error> {
    // Look before opening: opening a FIFO would block. Windows refuses even
    // a stat, with `access`, at the name of a file removed while still open
    // until its last handle closes.
    let stat = match patiently(|| dir.stat_at(PathFlags::empty(), name)) {
        Ok(stat) => stat,
        Err(ErrorCode::NoEntry) => return Ok(Slot::Missing),
        Err(code) => return Err(io("stat", name, code)),
    };
    if stat.type_ != DescriptorType::RegularFile {
        return Ok(Slot::Special(stat.type_));
    }
    // A refusal here, after the stat succeeded, is a real permission
    // problem (a file of another user): reported at once, never waited on.
    let file = match dir.open_at(
        PathFlags::empty(),
        name,
        OpenFlags::empty(),
        DescriptorFlags::READ,
    ) {
        Ok(file) => file,
        Err(ErrorCode::NoEntry) => return Ok(Slot::Missing),
        // Replaced by a symlink since the stat.
        Err(ErrorCode::Loop) => return Ok(Slot::Special(DescriptorType::SymbolicLink)),
        Err(ErrorCode::Access | ErrorCode::NotPermitted) => {
            return Err(Error::Io(format!(
                "entry file {name:?} cannot be read: permission denied (is it another \
                 user's? remove it or give it back to this user)"
            )))
        }
        Err(code) => return Err(io("open", name, code)),
    };
    // Check what was actually opened: the name may have changed hands.
    let stat = file.stat().map_err(|code| io("stat", name, code))?;
    if stat.type_ != DescriptorType::RegularFile {
        return Ok(Slot::Special(stat.type_));
    }
    let current = stat.link_count > 0;
    let entry = if stat.size > MAX_ENTRY_FILE_BYTES {
        None
    } else {
        read_capped(&file, name, stat.size)?.and_then(|bytes| Entry::parse(&bytes))
    };
    Ok(Slot::File {
        file,
        entry,
        current,
    })
}

/// The whole file, or `None` if it is longer than [`MAX_ENTRY_FILE_BYTES`].
///
/// Asks for one byte more than the size the descriptor reported: a read that
/// returns less is at the end of the file, so an entry takes one read call
/// (the host signals the end only with an empty read, and allocates what is
/// asked for).
fn read_capped(file: &Descriptor, name: &str, size: u64) -> Result<Option<Vec<u8>>, Error> {
    let mut bytes = Vec::new();
    let mut want = size.min(MAX_ENTRY_FILE_BYTES) + 1;
    loop {
        let (chunk, end) = file
            .read(want, bytes.len() as u64)
            .map_err(|code| io("read", name, code))?;
        let short = (chunk.len() as u64) < want;
        bytes.extend_from_slice(&chunk);
        if bytes.len() as u64 > MAX_ENTRY_FILE_BYTES {
            return Ok(None);
        }
        if end || short {
            return Ok(Some(bytes));
        }
        // It grew since the stat: keep reading, up to the cap.
        want = MAX_ENTRY_FILE_BYTES + 1 - bytes.len() as u64;
    }
}

/// How often an operation judges a name again when the file it read was
/// replaced after it was opened (by a writer that takes no claim: an
/// in-process instance of the original module).
pub(super) const ATTEMPTS: usize = 8;

/// Inspects `name` until what was read is the file at the name.
pub(super) fn judge(dir: &Descriptor, name: &str) -> Result<Slot, Error> {
    for _ in 0..ATTEMPTS {
        match inspect(dir, name)? {
            Slot::File { current: false, .. } => continue,
            slot => return Ok(slot),
        }
    }
    Err(Error::Io(format!(
        "{name:?} kept being replaced while it was read; try again"
    )))
}
