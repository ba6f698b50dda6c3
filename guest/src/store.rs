//! Registry operations on the agents directory, through `wasi:filesystem`.
//!
//! Rules every operation follows:
//! - Nothing is ever followed: every `*_at` call passes no `symlink-follow`.
//! - A name is an entry only if it is a regular file with exactly one link, of
//!   at most [`MAX_ENTRY_FILE_BYTES`]; it is `stat`ed before it is opened (so
//!   a FIFO is never opened) and `stat`ed again through the opened descriptor
//!   (so what is read is what was checked; a link count of zero there means
//!   the file was replaced after it was opened, and what was read is the
//!   complete previous version).
//! - Entries are never written in place: a write goes to a fresh temporary
//!   file that is renamed over the entry, so readers see the old entry or the
//!   new one, never a partial one, and a hard link planted at an entry's name
//!   is replaced rather than written through.
//! - A removal that depends on what an entry holds (sweeping, compare-and-
//!   remove) first renames the entry to a private name, then checks that it
//!   grabbed the very file it judged; if a writer replaced it in between, the
//!   newer entry is put back, never deleted.
//! - A replacement that depends on what an entry holds (renewing) takes the
//!   judged file aside the same way, then links the new entry into place,
//!   which fails if anyone created the name meanwhile: a successor's entry is
//!   never overwritten.
//! - The directory is read as a stream, one name at a time, so no operation's
//!   memory grows with the number of entries.

use std::cell::OnceCell;
use std::collections::BinaryHeap;

use agentmux_registry_core::entry::{file_name_of, MAX_ENTRY_FILE_BYTES};
use agentmux_registry_core::name::ENTRY_SUFFIX;
use agentmux_registry_core::{Entry, EntryFields, Error, Owner};
use wasi::filesystem::types::{
    Descriptor, DescriptorFlags, DescriptorType, DirectoryEntryStream, ErrorCode,
    MetadataHashValue, OpenFlags, PathFlags,
};

/// Prefix of a new entry being written. Entry names never start with `.`.
const TEMP_PREFIX: &str = ".tmp-";
/// Prefix of an entry taken aside by a removal that checks what it removes.
const GRAB_PREFIX: &str = ".grab-";
/// Age after which either is debris of an interrupted call.
const DEBRIS_MAX_AGE_MS: u64 = 60_000;
/// How far in the future an entry's `updated_at` may be (clock differences)
/// before a sweep treats it as malformed: no writer can have stamped it, and
/// it would otherwise never age.
const FUTURE_TOLERANCE_MS: u64 = 3_600_000;

thread_local! {
    static AGENTS_DIR: OnceCell<Descriptor> = const { OnceCell::new() };
}

/// Runs `f` with the agents directory: the first (and only) preopen, whatever
/// its guest name.
fn with_dir<T>(f: impl FnOnce(&Descriptor) -> Result<T, Error>) -> Result<T, Error> {
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

fn io(op: &str, name: &str, code: ErrorCode) -> Error {
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
    /// A regular file with more than one link: planted, or a restore in
    /// progress (see [`restore`]). Never read, never swept.
    Linked,
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
    // Look before opening: opening a FIFO would block.
    // Both may meet a file that another process removed while it was still
    // open: Windows keeps such a name, refusing access, until its last
    // handle closes.
    let stat = match patiently(|| dir.stat_at(PathFlags::empty(), name)) {
        Ok(stat) => stat,
        Err(ErrorCode::NoEntry) => return Ok(Slot::Missing),
        Err(code) => return Err(io("stat", name, code)),
    };
    if stat.type_ != DescriptorType::RegularFile {
        return Ok(Slot::Special(stat.type_));
    }
    if stat.link_count > 1 {
        return Ok(Slot::Linked);
    }
    let file = match patiently(|| {
        dir.open_at(
            PathFlags::empty(),
            name,
            OpenFlags::empty(),
            DescriptorFlags::READ,
        )
    }) {
        Ok(file) => file,
        Err(ErrorCode::NoEntry) => return Ok(Slot::Missing),
        // Replaced by a symlink since the stat.
        Err(ErrorCode::Loop) => return Ok(Slot::Special(DescriptorType::SymbolicLink)),
        Err(code) => return Err(io("open", name, code)),
    };
    // Check what was actually opened: the name may have changed hands.
    let stat = file.stat().map_err(|code| io("stat", name, code))?;
    if stat.type_ != DescriptorType::RegularFile {
        return Ok(Slot::Special(stat.type_));
    }
    if stat.link_count > 1 {
        return Ok(Slot::Linked);
    }
    let current = stat.link_count == 1;
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

fn unique_name(prefix: &str) -> String {
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

/// How often [`patiently`] tries a call refused with `access` again, a
/// millisecond apart.
const ACCESS_RETRIES: u32 = 50;

/// Runs a call on an entry's name (stat, open, rename or link onto it),
/// trying again for a while when it is refused with `access`. Windows
/// refuses to replace a file another process has open (a reader, for
/// microseconds) and keeps a removed file's name, refusing access, until its
/// last handle closes; elsewhere `access` is a real permission problem and
/// costs this wait once before it is reported.
fn patiently<T>(mut op: impl FnMut() -> Result<T, ErrorCode>) -> Result<T, ErrorCode> {
    for _ in 0..ACCESS_RETRIES {
        match op() {
            Err(ErrorCode::Access) => pause_a_millisecond(),
            done => return done,
        }
    }
    op()
}

/// Waits a millisecond without a pollable: hosts that run calls outside an
/// async runtime (this crate's blocking API) have no timer to wake one.
fn pause_a_millisecond() {
    use wasi::clocks::monotonic_clock::now;
    let until = now().saturating_add(1_000_000);
    while now() < until {}
}

/// Puts a grabbed file back at `name` unless something newer is there now.
fn restore(dir: &Descriptor, grabbed: &str, name: &str) {
    match patiently(|| dir.link_at(PathFlags::empty(), grabbed, dir, name)) {
        Ok(()) | Err(ErrorCode::Exist) => {
            let _ = dir.unlink_file_at(grabbed);
        }
        // A file system without hard links: rename back, which may replace a
        // newer entry written in the last microseconds.
        Err(_) => {
            let _ = patiently(|| dir.rename_at(grabbed, dir, name));
        }
    }
}

/// Closes a judged file and returns its identity. Nothing is renamed while
/// its descriptor is still open: Windows refuses to rename an open file.
fn identity_of(file: Descriptor, name: &str) -> Result<MetadataHashValue, Error> {
    file.metadata_hash()
        .map_err(|code| io("identify", name, code))
}

/// Whether the file now at `path` is the one identified by `judged`.
fn is_same(dir: &Descriptor, path: &str, judged: MetadataHashValue) -> bool {
    matches!(
        dir.metadata_hash_at(PathFlags::empty(), path),
        Ok(hash) if (hash.lower, hash.upper) == (judged.lower, judged.upper)
    )
}

/// Removes `name` only if it is still the file `judged` (by identity); true
/// when removed.
fn remove_if_same(dir: &Descriptor, name: &str, judged: Descriptor) -> Result<bool, Error> {
    let judged = identity_of(judged, name)?;
    let grabbed = unique_name(GRAB_PREFIX);
    match dir.rename_at(name, dir, &grabbed) {
        Ok(()) => {}
        Err(ErrorCode::NoEntry) => return Ok(false),
        Err(code) => return Err(io("rename", name, code)),
    }
    if is_same(dir, &grabbed, judged) {
        dir.unlink_file_at(&grabbed)
            .map_err(|code| io("unlink", &grabbed, code))?;
        Ok(true)
    } else {
        restore(dir, &grabbed, name);
        Ok(false)
    }
}

/// What happened to a name that was to be replaced or created.
enum Placement {
    /// The new entry is in place.
    Placed,
    /// The name changed since it was judged: judge it again.
    Changed,
    /// Someone else created the name meanwhile; nothing was written.
    Taken,
}

/// Links the new file `temp` into place at `name` only if the name is free,
/// and removes `temp`.
fn link_into_place(dir: &Descriptor, temp: &str, name: &str) -> Result<Placement, Error> {
    let placed = match patiently(|| dir.link_at(PathFlags::empty(), temp, dir, name)) {
        Ok(()) => Placement::Placed,
        Err(ErrorCode::Exist) => Placement::Taken,
        // A file system without hard links: rename, which may replace an entry
        // created in the last microseconds.
        Err(_) => {
            return match patiently(|| dir.rename_at(temp, dir, name)) {
                Ok(()) => Ok(Placement::Placed),
                Err(code) => {
                    let _ = dir.unlink_file_at(temp);
                    Err(io("rename into", name, code))
                }
            }
        }
    };
    let _ = dir.unlink_file_at(temp);
    Ok(placed)
}

/// Creates `name` holding `bytes` if nothing is there.
fn create_new(dir: &Descriptor, name: &str, bytes: &[u8]) -> Result<Placement, Error> {
    let temp = write_temp(dir, bytes)?;
    link_into_place(dir, &temp, name)
}

/// Replaces `name` with `bytes` only if it is still the file `judged`, and
/// only if nobody creates the name between taking `judged` aside and linking
/// the new file in (the name is then briefly absent).
fn replace_judged(
    dir: &Descriptor,
    name: &str,
    judged: Descriptor,
    bytes: &[u8],
) -> Result<Placement, Error> {
    let judged = identity_of(judged, name)?;
    let temp = write_temp(dir, bytes)?;
    let grabbed = unique_name(GRAB_PREFIX);
    match dir.rename_at(name, dir, &grabbed) {
        Ok(()) => {}
        Err(code) => {
            let _ = dir.unlink_file_at(&temp);
            return match code {
                ErrorCode::NoEntry => Ok(Placement::Changed),
                code => Err(io("rename", name, code)),
            };
        }
    }
    if !is_same(dir, &grabbed, judged) {
        restore(dir, &grabbed, name);
        let _ = dir.unlink_file_at(&temp);
        return Ok(Placement::Changed);
    }
    let placed = link_into_place(dir, &temp, name);
    let _ = dir.unlink_file_at(&grabbed);
    placed
}

pub fn write(fields: EntryFields) -> Result<Entry, Error> {
    fields.check()?;
    let name = file_name_of(&fields.agent_id)?;
    with_dir(|dir| {
        match inspect(dir, &name)? {
            Slot::File {
                entry: Some(entry), ..
            } if entry.agent_id != fields.agent_id => {
                return Err(other_agent(&name, &entry, &fields.agent_id));
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
        let entry = fields.into_entry(now_ms());
        let temp = write_temp(dir, &entry.to_json())?;
        if let Err(code) = patiently(|| dir.rename_at(&temp, dir, &name)) {
            let _ = dir.unlink_file_at(&temp);
            return Err(io("rename into", &name, code));
        }
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

/// How often a renewal or conditional removal judges a name again when it
/// changed under it (each retry means another writer or sweeper moved).
const ATTEMPTS: usize = 8;

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
        for _ in 0..ATTEMPTS {
            let bytes = || fields.clone().into_entry(now_ms()).to_json();
            let (outcome, done) = match inspect(dir, &name)? {
                Slot::Missing => (create_new(dir, &name, &bytes())?, Renewal::Restored),
                Slot::File {
                    entry: Some(entry), ..
                } if entry.agent_id != agent_id => {
                    return Err(other_agent(&name, &entry, &agent_id))
                }
                Slot::File {
                    entry: Some(entry),
                    file,
                    current,
                } if entry.is_registration(&agent_id, &token) => {
                    if !current {
                        continue;
                    }
                    (
                        replace_judged(dir, &name, file, &bytes())?,
                        Renewal::Refreshed,
                    )
                }
                Slot::File { entry: Some(_), .. } => return Ok(Renewal::Superseded),
                Slot::File {
                    entry: None,
                    file,
                    current,
                } => {
                    if !current {
                        continue;
                    }
                    (
                        replace_judged(dir, &name, file, &bytes())?,
                        Renewal::Restored,
                    )
                }
                // A restore in progress elsewhere: look again.
                Slot::Linked => continue,
                Slot::Special(kind) => {
                    return Err(Error::Conflict(format!(
                        "entry name {name:?} is a {kind:?}, not a regular file"
                    )))
                }
            };
            match outcome {
                Placement::Placed => return Ok(done),
                Placement::Taken => return Ok(Renewal::Superseded),
                Placement::Changed => continue,
            }
        }
        Err(Error::Io(format!(
            "renew {name:?}: the entry kept changing; try again"
        )))
    })
}

pub fn remove(agent_id: &str) -> Result<bool, Error> {
    let name = file_name_of(agent_id)?;
    with_dir(|dir| {
        match inspect(dir, &name)? {
            Slot::Missing | Slot::Special(DescriptorType::Directory) => return Ok(false),
            Slot::File {
                entry: Some(entry), ..
            } if entry.agent_id != agent_id => return Ok(false),
            _ => {}
        }
        match dir.unlink_file_at(&name) {
            Ok(()) => Ok(true),
            Err(ErrorCode::NoEntry) => Ok(false),
            Err(code) => Err(io("unlink", &name, code)),
        }
    })
}

pub fn remove_owned(agent_id: &str, owner: &Owner) -> Result<bool, Error> {
    let name = file_name_of(agent_id)?;
    with_dir(|dir| {
        // The file read may be replaced under us, by a rewrite of the same
        // registration or by a successor's.
        for _ in 0..ATTEMPTS {
            match inspect(dir, &name)? {
                Slot::File {
                    file,
                    entry: Some(entry),
                    current,
                } if entry.is_owned_by(agent_id, owner) => {
                    if current && remove_if_same(dir, &name, file)? {
                        return Ok(true);
                    }
                }
                Slot::Linked => {}
                _ => return Ok(false),
            }
        }
        Ok(false)
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
    _listing: Descriptor,
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
        let stream = listing
            .read_directory()
            .map_err(|code| io("read directory", ".", code))?;
        Ok(Names {
            stream,
            _listing: listing,
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

/// A pass over every valid entry, in directory order, a batch at a time.
pub struct Listing {
    names: Option<Names>,
    done: bool,
}

impl Listing {
    pub fn new() -> Listing {
        Listing {
            names: None,
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
            let names = match &mut self.names {
                Some(names) => names,
                None => self.names.insert(Names::open(dir)?),
            };
            let mut batch = Vec::new();
            for _ in 0..max_names {
                let Some(name) = names.next()? else {
                    self.done = true;
                    self.names = None;
                    return Ok(if batch.is_empty() { None } else { Some(batch) });
                };
                batch.extend(listed_entry(dir, &name));
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
        let mut names = Names::open(dir)?;
        // A max-heap by id holding the smallest ids seen so far.
        let mut kept: BinaryHeap<ById> = BinaryHeap::new();
        while let Some(name) = names.next()? {
            if let Some(entry) = listed_entry(dir, &name) {
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
    match inspect(dir, name)? {
        // Directories are not ours to delete; a second link may be a restore
        // in progress, and a superseded file is no longer at this name.
        Slot::Missing | Slot::Special(DescriptorType::Directory) | Slot::Linked => Ok(false),
        Slot::File { current: false, .. } => Ok(false),
        // The registry never creates these. Unlinking removes the name only;
        // it never opens or follows what the name points at.
        Slot::Special(_) => unlink(dir, name),
        Slot::File {
            entry: None, file, ..
        } => remove_if_same(dir, name, file),
        Slot::File {
            entry: Some(entry),
            file,
            ..
        } if entry.updated_at < cutoff || entry.updated_at > latest => {
            remove_if_same(dir, name, file)
        }
        Slot::File { .. } => Ok(false),
    }
}
