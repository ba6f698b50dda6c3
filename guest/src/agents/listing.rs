//! Reading the whole directory: a stream of names, passes until one saw no
//! change, and listings of the valid entries.

use std::collections::{BinaryHeap, HashSet};
use std::hash::{BuildHasher, RandomState};

use agentmux_registry_core::entry::file_name_of;
use agentmux_registry_core::{Entry, Error};
use wasi::filesystem::types::{
    Descriptor, DescriptorFlags, DirectoryEntryStream, OpenFlags, PathFlags,
};

use super::entries::{entry_at, is_freshest_at};
use super::{io, with_dir};

/// The names of the agents directory, read one at a time. A name the host
/// reports an error for is skipped: it vanished while the directory was read
/// (a rename by another instance), or it is not UTF-8 and so cannot be an
/// entry.
pub(crate) struct Names {
    // Declared before the descriptor it reads, so it is dropped first.
    stream: DirectoryEntryStream,
    listing: Descriptor,
    /// The directory's modification time before it was read.
    began: Option<(u64, u32)>,
}

impl Names {
    pub(crate) fn open(dir: &Descriptor) -> Result<Names, Error> {
        // Read through a descriptor opened on ".", not the preopen itself:
        // some hosts (the Node.js shim) cannot list a preopen descriptor.
        let listing = dir
            .open_at(
                PathFlags::empty(),
                ".",
                OpenFlags::DIRECTORY,
                DescriptorFlags::READ,
            )
            .map_err(|code| io("open directory", ".", code))?;
        let began = modified(&listing);
        let stream = listing
            .read_directory()
            .map_err(|code| io("read directory", ".", code))?;
        Ok(Names {
            stream,
            listing,
            began,
        })
    }

    /// The next name; `None` at the end. Names the host cannot report (not
    /// UTF-8, or gone) are skipped however many there are: they cannot be
    /// entries, and each error moves the stream on. (A host whose stream
    /// failed forever would meet the call's deadline.)
    pub(crate) fn next(&mut self) -> Result<Option<String>, Error> {
        loop {
            if let Ok(entry) = self.stream.read_directory_entry() {
                return Ok(entry.map(|e| e.name));
            }
        }
    }
}

/// Most passes a listing makes over a directory that keeps changing.
const MAX_PASSES: u32 = 4;

/// The names of a listing: passes over the directory until one ran while
/// nothing in it changed. Some file systems (tmpfs, with reads that take
/// several system calls) skip or repeat a name that is replaced while the
/// directory is read; a name present throughout is reported by the first
/// pass during which it was not replaced. Repeats are the caller's to drop.
pub(crate) struct Scan {
    names: Option<Names>,
    passes: u32,
}

impl Scan {
    pub(crate) fn new() -> Scan {
        Scan {
            names: None,
            passes: 0,
        }
    }

    /// The next name; `None` once a pass saw the directory unchanged, or
    /// after [`MAX_PASSES`].
    pub(crate) fn next(&mut self, dir: &Descriptor) -> Result<Option<String>, Error> {
        loop {
            let names = match &mut self.names {
                Some(names) => names,
                None => {
                    let names = Names::open(dir)?;
                    self.passes += 1;
                    self.names.insert(names)
                }
            };
            if let Some(name) = names.next()? {
                return Ok(Some(name));
            }
            let unchanged = names.began.is_some() && modified(&names.listing) == names.began;
            self.names = None;
            if unchanged || self.passes >= MAX_PASSES {
                return Ok(None);
            }
        }
    }
}

/// A directory's modification time, if the host reports one.
fn modified(dir: &Descriptor) -> Option<(u64, u32)> {
    let t = dir.stat().ok()?.data_modification_timestamp?;
    Some((t.seconds, t.nanoseconds))
}

pub(crate) fn is_entry_name(name: &str) -> bool {
    agentmux_registry_core::name::may_name_an_entry(name)
}

/// The valid entry at `name` ([`entry_at`]: `name` is one of its id's names,
/// its own or one another writer used), with its id's own file name, if it
/// is the entry a lookup of the id returns (the freshest of its names). One unreadable file must not hide every
/// other agent, so errors read as none.
fn listed_entry(dir: &Descriptor, name: &str) -> Option<(Entry, String)> {
    let entry = entry_at(dir, name)?;
    let own = file_name_of(&entry.agent_id).ok()?;
    is_freshest_at(dir, name, &entry).then_some((entry, own))
}

/// The ids a listing returned, to return each once: some file systems
/// (tmpfs) list a name again when it is replaced during the listing, and an
/// id can have entries under more than one name. Kept as 64-bit hashes of
/// the ids' own file names (16 bytes or so per entry), keyed at random per
/// listing so that no one can choose ids whose hashes collide.
#[derive(Default)]
struct Returned {
    hashes: HashSet<u64>,
    key: RandomState,
}

impl Returned {
    /// The valid entry at `name` (see [`listed_entry`]), unless one was
    /// returned for its id already.
    fn first_entry(&mut self, dir: &Descriptor, name: &str) -> Option<Entry> {
        if self.hashes.contains(&self.key.hash_one(name)) {
            return None;
        }
        let (entry, own) = listed_entry(dir, name)?;
        self.hashes.insert(self.key.hash_one(own)).then_some(entry)
    }
}

/// A pass over every valid entry, in directory order, a batch at a time.
pub struct Listing {
    scan: Scan,
    returned: Returned,
    done: bool,
}

impl Listing {
    pub fn new() -> Listing {
        Listing {
            scan: Scan::new(),
            returned: Returned::default(),
            done: false,
        }
    }

    /// Up to `max_entries` more entries, looking at a bounded number of
    /// names; `None` once every name was looked at.
    pub fn next_batch(&mut self, max_entries: u32) -> Result<Option<Vec<Entry>>, Error> {
        if self.done {
            return Ok(None);
        }
        let max_entries = max_entries.max(1) as usize;
        let max_names = max_entries.saturating_mul(4).saturating_add(1024);
        with_dir(|dir| {
            let mut batch = Vec::new();
            for _ in 0..max_names {
                let Some(name) = self.scan.next(dir)? else {
                    self.done = true;
                    self.scan = Scan::new();
                    self.returned = Returned::default();
                    return Ok(if batch.is_empty() { None } else { Some(batch) });
                };
                batch.extend(self.returned.first_entry(dir, &name));
                if batch.len() == max_entries {
                    break;
                }
            }
            Ok(Some(batch))
        })
    }
}

/// The valid entries with the smallest ids, at most `max_entries`, sorted.
pub fn list_entries(max_entries: u32) -> Result<Vec<Entry>, Error> {
    let max_entries = max_entries as usize;
    if max_entries == 0 {
        return Ok(Vec::new());
    }
    with_dir(|dir| {
        let mut scan = Scan::new();
        let mut seen = Returned::default();
        // A max-heap by id holding the smallest ids seen so far.
        let mut kept: BinaryHeap<ById> = BinaryHeap::new();
        while let Some(name) = scan.next(dir)? {
            let Some(entry) = seen.first_entry(dir, &name) else {
                continue;
            };
            if kept.len() < max_entries {
                kept.push(ById(entry));
            } else if kept
                .peek()
                .is_some_and(|top| entry.agent_id < top.0.agent_id)
            {
                kept.pop();
                kept.push(ById(entry));
            }
        }
        Ok(kept.into_sorted_vec().into_iter().map(|e| e.0).collect())
    })
}

/// An entry ordered by its agent id (a listing returns an id once).
struct ById(Entry);

impl PartialEq for ById {
    fn eq(&self, other: &Self) -> bool {
        self.0.agent_id == other.0.agent_id
    }
}
impl Eq for ById {}
impl PartialOrd for ById {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for ById {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.0.agent_id.cmp(&other.0.agent_id)
    }
}
