//! Registry operations on the agents directory, through `wasi:filesystem`.
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

use std::cell::OnceCell;
use std::collections::{BinaryHeap, HashSet};
use std::hash::{BuildHasher, RandomState};

use agentmux_registry_core::entry::{file_name_of, MAX_ENTRY_FILE_BYTES};
use agentmux_registry_core::name::{CLAIM_PREFIX, ENTRY_SUFFIX};
use agentmux_registry_core::{Entry, EntryFields, Error, Owner};
use wasi::filesystem::types::{
    Descriptor, DescriptorFlags, DescriptorType, DirectoryEntryStream, ErrorCode, OpenFlags,
    PathFlags,
};

use crate::claim::{
    break_if_stale, busy, is_identity, patiently, reset_retry_budget, Claim, Stale, Taken,
};

/// Prefix of a new entry being written. Entry names never start with `.`.
const TEMP_PREFIX: &str = ".tmp-";
/// Prefix of a file taken aside to be removed only if it is the one judged
/// (stale claims; earlier versions took entries aside this way too).
pub const GRAB_PREFIX: &str = ".grab-";
/// Age after which a temporary or grabbed file is debris of an interrupted
/// call.
const DEBRIS_MAX_AGE_MS: u64 = 60_000;
/// How far in the future an entry's `updated_at` may be (clock differences)
/// before a sweep treats it as malformed: no writer can have stamped it, and
/// it would otherwise never age.
const FUTURE_TOLERANCE_MS: u64 = 3_600_000;

thread_local! {
    static AGENTS_DIR: OnceCell<Descriptor> = const { OnceCell::new() };
}

/// Runs one operation with the agents directory: the first (and only)
/// preopen, whatever its guest name. Each operation gets a fresh retry
/// budget.
fn with_dir<T>(f: impl FnOnce(&Descriptor) -> Result<T, Error>) -> Result<T, Error> {
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

/// What a name in the agents directory holds.
enum Slot {
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
    /// The entry read, if it is `agent_id`'s.
    fn entry_of(self, agent_id: &str) -> Option<Entry> {
        match self {
            Slot::File {
                entry: Some(entry), ..
            } if entry.agent_id == agent_id => Some(entry),
            _ => None,
        }
    }
}

fn inspect(dir: &Descriptor, name: &str) -> Result<Slot, Error> {
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

pub(crate) fn unique_name(prefix: &str) -> String {
    format!("{prefix}{:016x}", wasi::random::random::get_random_u64())
}

/// Creates a new temporary file holding `bytes`; returns its name.
fn write_temp(dir: &Descriptor, bytes: &[u8]) -> Result<String, Error> {
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
fn replace_with(dir: &Descriptor, claim: &Claim, name: &str, entry: &Entry) -> Result<(), Error> {
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
fn claim<'d>(dir: &'d Descriptor, name: &str) -> Result<Claim<'d>, Error> {
    match Claim::take(dir, name, true)? {
        Taken::Held(claim) => Ok(claim),
        Taken::Busy => Err(busy(name)),
    }
}

/// How often an operation judges a name again when the file it read was
/// replaced after it was opened (by a writer that takes no claim: an
/// in-process instance of the original module).
const ATTEMPTS: usize = 8;

/// Inspects `name` until what was read is the file at the name.
fn judge(dir: &Descriptor, name: &str) -> Result<Slot, Error> {
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

/// Removes the judged file at `name`. Under the claim nothing else changes
/// the name; the identity check keeps writers that take no claim safe too.
fn remove_judged(
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
    if !is_identity(dir, name, identity) {
        return Ok(false);
    }
    unlink(dir, name)
}

pub fn write(fields: EntryFields) -> Result<Entry, Error> {
    fields.check()?;
    let name = file_name_of(&fields.agent_id)?;
    with_dir(|dir| {
        let claim = claim(dir, &name)?;
        match inspect(dir, &name)? {
            Slot::File {
                entry: Some(other), ..
            } if other.agent_id != fields.agent_id => {
                return Err(other_agent(&name, &other, &fields.agent_id));
            }
            // Nothing can be renamed over a directory. Anything else planted
            // at the name (a symlink, a FIFO) is replaced, never followed.
            Slot::Special(DescriptorType::Directory) => {
                return Err(Error::Conflict(format!(
                    "entry name {name:?} is a directory, not a regular file"
                )))
            }
            _ => {}
        }
        // Stamped once the claim is held, however long it took to get it.
        let entry = fields.into_entry(now_ms());
        replace_with(dir, &claim, &name, &entry)?;
        Ok(entry)
    })
}

fn other_agent(name: &str, entry: &Entry, agent_id: &str) -> Error {
    Error::Conflict(format!(
        "entry file {name:?} holds the entry of agent {:?}, not {agent_id:?}",
        entry.agent_id
    ))
}

/// What [`renew`] did; mirrors the WIT `renewal` enum.
pub enum Renewal {
    Refreshed,
    Restored,
    Superseded,
}

pub fn renew(fields: EntryFields) -> Result<Renewal, Error> {
    fields.check()?;
    let Some(token) = fields.registration.clone() else {
        return Err(Error::InvalidField(
            "registration is none: only a registration can be renewed".into(),
        ));
    };
    let agent_id = fields.agent_id.clone();
    let name = file_name_of(&agent_id)?;
    with_dir(|dir| {
        let claim = claim(dir, &name)?;
        let renewal = match judge(dir, &name)? {
            Slot::Missing => Renewal::Restored,
            Slot::File {
                entry: Some(entry), ..
            } if entry.agent_id != agent_id => return Err(other_agent(&name, &entry, &agent_id)),
            Slot::File {
                entry: Some(entry), ..
            } if entry.is_registration(&agent_id, &token) => Renewal::Refreshed,
            // Under the claim, another registration's entry here was written
            // after this registration's last renewal: it is newer.
            Slot::File { entry: Some(_), .. } => return Ok(Renewal::Superseded),
            Slot::File { entry: None, .. } => Renewal::Restored,
            Slot::Special(kind) => {
                return Err(Error::Conflict(format!(
                    "entry name {name:?} is a {kind:?}, not a regular file"
                )))
            }
        };
        replace_with(dir, &claim, &name, &fields.into_entry(now_ms()))?;
        Ok(renewal)
    })
}

pub fn remove(agent_id: &str) -> Result<bool, Error> {
    let name = file_name_of(agent_id)?;
    with_dir(|dir| {
        let claim = claim(dir, &name)?;
        match inspect(dir, &name)? {
            Slot::Missing | Slot::Special(DescriptorType::Directory) => return Ok(false),
            Slot::File {
                entry: Some(entry), ..
            } if entry.agent_id != agent_id => return Ok(false),
            _ => {}
        }
        claim.check(&name)?;
        unlink(dir, &name)
    })
}

pub fn remove_owned(agent_id: &str, owner: &Owner) -> Result<bool, Error> {
    let name = file_name_of(agent_id)?;
    with_dir(|dir| {
        let claim = claim(dir, &name)?;
        match judge(dir, &name)? {
            Slot::File {
                file,
                entry: Some(entry),
                ..
            } if entry.is_owned_by(agent_id, owner) => remove_judged(dir, &claim, &name, file),
            _ => Ok(false),
        }
    })
}

pub fn lookup(agent_id: &str) -> Result<Option<Entry>, Error> {
    let name = file_name_of(agent_id)?;
    with_dir(|dir| Ok(inspect(dir, &name)?.entry_of(agent_id)))
}

/// The names of the agents directory, read one at a time. A name the host
/// reports an error for is skipped: it vanished while the directory was read
/// (a rename by another instance), or it is not UTF-8 and so cannot be an
/// entry.
struct Names {
    // Declared before the descriptor it reads, so it is dropped first.
    stream: DirectoryEntryStream,
    listing: Descriptor,
    /// The directory's modification time before it was read.
    began: Option<(u64, u32)>,
}

impl Names {
    fn open(dir: &Descriptor) -> Result<Names, Error> {
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
    fn next(&mut self) -> Result<Option<String>, Error> {
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
struct Scan {
    names: Option<Names>,
    passes: u32,
}

impl Scan {
    fn new() -> Scan {
        Scan {
            names: None,
            passes: 0,
        }
    }

    /// The next name; `None` once a pass saw the directory unchanged, or
    /// after [`MAX_PASSES`].
    fn next(&mut self, dir: &Descriptor) -> Result<Option<String>, Error> {
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

fn is_entry_name(name: &str) -> bool {
    name.ends_with(ENTRY_SUFFIX) && !name.starts_with('.')
}

/// The valid entry at `name`, if it is at its own id's file name. One
/// unreadable file must not hide every other agent, so errors read as none.
fn listed_entry(dir: &Descriptor, name: &str) -> Option<Entry> {
    if !is_entry_name(name) {
        return None;
    }
    match inspect(dir, name) {
        Ok(Slot::File {
            entry: Some(entry), ..
        }) if file_name_of(&entry.agent_id).as_deref() == Ok(name) => Some(entry),
        _ => None,
    }
}

/// The names a listing returned, to return each once: some file systems
/// (tmpfs) list a name again when it is replaced during the listing. Kept as
/// 64-bit hashes (16 bytes or so per entry), keyed at random per listing so
/// that no one can choose ids whose hashes collide.
#[derive(Default)]
struct Returned {
    hashes: HashSet<u64>,
    key: RandomState,
}

impl Returned {
    /// The valid entry at `name` (see [`listed_entry`]), unless one was
    /// returned for that name already.
    fn first_entry(&mut self, dir: &Descriptor, name: &str) -> Option<Entry> {
        let hash = self.key.hash_one(name);
        if self.hashes.contains(&hash) {
            return None;
        }
        let entry = listed_entry(dir, name)?;
        self.hashes.insert(hash);
        Some(entry)
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

/// An entry ordered by its agent id (ids are unique within a directory).
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

/// Totals of a sweep so far; mirrors the WIT `sweep-progress` record.
#[derive(Clone, Default)]
pub struct Progress {
    pub examined: u64,
    pub removed: u64,
    pub failed: u64,
    pub first_failure: Option<String>,
    pub done: bool,
}

/// A sweep done in steps of a bounded number of names.
pub struct Sweep {
    now: u64,
    cutoff: u64,
    latest: u64,
    names: Option<Names>,
    progress: Progress,
}

impl Sweep {
    pub fn new(max_age_ms: u64) -> Sweep {
        let now = now_ms();
        Sweep {
            now,
            cutoff: now.saturating_sub(max_age_ms),
            latest: now.saturating_add(FUTURE_TOLERANCE_MS),
            names: None,
            progress: Progress::default(),
        }
    }

    pub fn next_batch(&mut self, max_names: u32) -> Result<Progress, Error> {
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
                // A name that fails is counted and left for the next sweep;
                // one bad name must not stop the rest. (Names another
                // instance removes or rewrites meanwhile are not failures.)
                let gone = if name.starts_with(TEMP_PREFIX) || name.starts_with(GRAB_PREFIX) {
                    sweep_debris(dir, &name, self.now)
                } else if name.starts_with(CLAIM_PREFIX) {
                    break_if_stale(dir, &name).map(|stale| stale == Stale::Broken)
                } else if is_entry_name(&name) {
                    sweep_entry(dir, &name, self.cutoff, self.latest)
                } else {
                    Ok(false)
                };
                match gone {
                    Ok(gone) => self.progress.removed += u64::from(gone),
                    Err(error) => {
                        self.progress.failed += 1;
                        self.progress
                            .first_failure
                            .get_or_insert_with(|| error.to_string());
                    }
                }
            }
            Ok(self.progress.clone())
        })
    }
}

/// A whole sweep in one call.
pub fn cleanup_stale(max_age_ms: u64) -> Result<Progress, Error> {
    let mut sweep = Sweep::new(max_age_ms);
    loop {
        let progress = sweep.next_batch(u32::MAX)?;
        if progress.done {
            return Ok(progress);
        }
    }
}

/// Unlinks `name`; false when it was already gone.
fn unlink(dir: &Descriptor, name: &str) -> Result<bool, Error> {
    match dir.unlink_file_at(name) {
        Ok(()) => Ok(true),
        Err(ErrorCode::NoEntry) => Ok(false),
        Err(code) => Err(io("unlink", name, code)),
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
