//! The shared registry: in the shared root, a directory per agent holding a
//! file per channel (`<agent-dir>/<channel>.json`).
//!
//! Every operation on one entry is the per-channel registry's own (see
//! [`crate::agents::entries`]), run in the agent's directory over the
//! channel's names. What is added here is the directories: a writer creates
//! its agent's directory when it is missing, and again when a sweep removed
//! it between the open and the claim (the claim cannot be created in a
//! removed directory, and once held it keeps the directory from being
//! removed); a removal or sweep removes a directory only once it is empty.

use std::collections::{HashMap, HashSet};
use std::hash::{BuildHasher, RandomState};

use agentmux_registry_core::entry::file_name_of;
use agentmux_registry_core::name::{
    agent_dir_name, other_writers_dir_names, other_writers_names, same_id,
};
use agentmux_registry_core::{Entry, EntryFields, Error, Owner, Renewal, SweepProgress};
use wasi::filesystem::types::{Descriptor, DescriptorFlags, ErrorCode, OpenFlags, PathFlags};

use crate::agents::entries::{
    check_names_at, check_renewal, remove_own_in, remove_where_in, renew_in, write_in, Holder,
};
use crate::agents::listing::{is_entry_name, Names, Scan};
use crate::agents::slot::{inspect, Slot};
use crate::agents::sweep::{count, Ages};
use crate::agents::{io, with_dir};

/// The most entries `lookup_all` returns (the freshest).
pub const MAX_LOOKUP_ALL: usize = 256;

/// How often a writer creates its agent's directory again when a sweep
/// keeps removing it.
const ATTEMPTS: usize = 8;

fn channel_of(fields: &EntryFields) -> Result<&str, Error> {
    if fields.channel.is_empty() {
        return Err(Error::InvalidField(
            "channel is empty: the shared registry keeps one entry per agent and channel".into(),
        ));
    }
    Ok(&fields.channel)
}

/// Opens the agent directory `name` of `root`, never following a link;
/// `None` when there is none. Asked for `READ` only: hosts let a directory
/// opened from the preopen change what the preopen may (wasmtime), and some
/// refuse the `MUTATE_DIRECTORY` flag outright (the Node.js shim).
fn open_agent_dir(root: &Descriptor, name: &str) -> Result<Option<Descriptor>, Error> {
    match root.open_at(
        PathFlags::empty(),
        name,
        OpenFlags::DIRECTORY,
        DescriptorFlags::READ,
    ) {
        Ok(dir) => Ok(Some(dir)),
        Err(ErrorCode::NoEntry) => Ok(None),
        Err(ErrorCode::NotDirectory | ErrorCode::Loop) => Err(Error::Conflict(format!(
            "{name:?} in the shared root is not a directory"
        ))),
        Err(code) => Err(io("open directory", name, code)),
    }
}

/// Whether the open directory `dir` was removed.
fn is_removed(dir: &Descriptor) -> bool {
    dir.stat().is_ok_and(|stat| stat.link_count == 0)
}

/// Runs `f` in `agent_id`'s own directory, created when missing, and again
/// in a new one when the directory was removed while `f` ran.
fn in_own_dir<T>(
    root: &Descriptor,
    agent_id: &str,
    f: impl Fn(&Descriptor) -> Result<T, Error>,
) -> Result<T, Error> {
    let name = agent_dir_name(agent_id)?;
    for _ in 0..ATTEMPTS {
        let Some(dir) = open_agent_dir(root, &name)? else {
            match root.create_directory_at(&name) {
                Ok(()) | Err(ErrorCode::Exist) => continue,
                Err(code) => return Err(io("create directory", &name, code)),
            }
        };
        match f(&dir) {
            Err(_) if is_removed(&dir) => continue,
            result => return result,
        }
    }
    Err(Error::Io(format!(
        "the agent directory {name:?} kept being removed while it was written; try again"
    )))
}

/// `agent_id`'s directories that exist: its own, then agentmux-srv's.
fn agent_dirs(root: &Descriptor, agent_id: &str) -> Result<Vec<(String, Descriptor)>, Error> {
    let mut dirs = Vec::new();
    for name in std::iter::once(agent_dir_name(agent_id)?).chain(other_writers_dir_names(agent_id))
    {
        if let Some(dir) = open_agent_dir(root, &name)? {
            dirs.push((name, dir));
        }
    }
    Ok(dirs)
}

/// Removes the agent directory `name` if it is empty; anything else (not
/// empty, already gone) is left as it is.
fn remove_if_empty(root: &Descriptor, name: &str) -> bool {
    root.remove_directory_at(name).is_ok()
}

/// Whether `name` is a file name of `channel`: its own, or one another
/// writer used.
fn is_channel_file(name: &str, channel: &str) -> bool {
    file_name_of(channel).is_ok_and(|own| own == name)
        || other_writers_names(channel).iter().any(|n| n == name)
}

pub fn write(fields: EntryFields) -> Result<Entry, Error> {
    fields.check()?;
    in_channel_file(fields, write_in)
}

pub fn renew(fields: EntryFields) -> Result<Renewal, Error> {
    check_renewal(&fields)?;
    in_channel_file(fields, renew_in)
}

/// Runs a change of `fields`' entry (checked by the caller) on its channel's
/// file in its agent's directory, made when missing.
fn in_channel_file<T>(
    fields: EntryFields,
    change: impl Fn(&Descriptor, &str, Holder, EntryFields) -> Result<T, Error>,
) -> Result<T, Error> {
    let channel = channel_of(&fields)?;
    let file = file_name_of(channel)?;
    let agent_dir = agent_dir_name(&fields.agent_id)?;
    let holder = Holder {
        agent_id: &fields.agent_id,
        channel: Some(channel),
        agent_dir: Some(&agent_dir),
    };
    with_dir(|root| {
        in_own_dir(root, &fields.agent_id, |dir| {
            change(dir, &file, holder, fields.clone())
        })
    })
}

/// Removes `agent_id`'s entry in `channel`, under any of their names.
pub fn remove(agent_id: &str, channel: &str) -> Result<bool, Error> {
    if channel.is_empty() {
        return Err(Error::InvalidField("channel is empty".into()));
    }
    let file = file_name_of(channel)?;
    with_dir(|root| {
        let mut removed = false;
        for (name, dir) in agent_dirs(root, agent_id)? {
            let holder = Holder {
                agent_id,
                channel: Some(channel),
                agent_dir: Some(&name),
            };
            removed |= remove_own_in(&dir, &file, holder)?;
            for other in other_writers_names(channel) {
                removed |= remove_where_in(&dir, &other, |entry| holder.holds(entry))?;
            }
            drop(dir);
            remove_if_empty(root, &name);
        }
        Ok(removed)
    })
}

/// Removes `agent_id`'s entries, in every channel, that `chosen` picks.
fn remove_where(agent_id: &str, chosen: impl Fn(&Entry) -> bool) -> Result<bool, Error> {
    with_dir(|root| {
        let mut removed = false;
        for (name, dir) in agent_dirs(root, agent_id)? {
            let mut names = Names::open(&dir)?;
            while let Some(file) = names.next()? {
                if is_entry_name(&file) {
                    removed |= remove_where_in(&dir, &file, |entry| {
                        entry.is_of(agent_id)
                            && is_channel_file(&file, &entry.channel)
                            && chosen(entry)
                    })?;
                }
            }
            drop(names);
            drop(dir);
            remove_if_empty(root, &name);
        }
        Ok(removed)
    })
}

pub fn remove_owned(agent_id: &str, owner: &Owner) -> Result<bool, Error> {
    agent_dir_name(agent_id)?;
    if owner.registration_nonce == 0 {
        return Ok(false);
    }
    remove_where(agent_id, |entry| entry.is_owned_by(agent_id, owner))
}

pub fn evict(judged: &Entry) -> Result<bool, Error> {
    if judged.channel.is_empty() {
        return Err(Error::InvalidField(
            "channel is empty: an entry of the shared registry names its channel".into(),
        ));
    }
    agent_dir_name(&judged.agent_id)?;
    remove_where(&judged.agent_id, |entry| entry == judged)
}

/// Every channel's entry of `agent_id`, freshest first, at most
/// [`MAX_LOOKUP_ALL`]; one per channel (the freshest, if more than one name
/// holds a channel's entry).
pub fn lookup_all(agent_id: &str) -> Result<Vec<Entry>, Error> {
    with_dir(|root| {
        let mut by_channel: HashMap<String, Entry> = HashMap::new();
        for (_, dir) in agent_dirs(root, agent_id)? {
            let mut scan = Scan::new();
            while let Some(file) = scan.next(&dir)? {
                let Some(entry) = channel_entry(&dir, &file) else {
                    continue;
                };
                if !entry.is_of(agent_id) {
                    continue;
                }
                let key = entry.channel.to_lowercase();
                if by_channel
                    .get(&key)
                    .is_some_and(|e| e.updated_at >= entry.updated_at)
                {
                    continue;
                }
                by_channel.insert(key, entry);
                if by_channel.len() > MAX_LOOKUP_ALL {
                    drop_stalest(&mut by_channel);
                }
            }
        }
        let mut entries: Vec<Entry> = by_channel.into_values().collect();
        entries.sort_by_key(|e| std::cmp::Reverse(e.updated_at));
        Ok(entries)
    })
}

/// For each of `names` (`<agent-dir>/<file>`), the valid entry there if the
/// directory is one of its agent's and the file one of its channel's.
pub fn entries_at(names: &[String]) -> Result<Vec<Option<Entry>>, Error> {
    check_names_at(names)?;
    with_dir(|root| {
        Ok(names
            .iter()
            .map(|name| {
                let (dir_name, file) = name.split_once('/')?;
                let dir = open_agent_dir(root, dir_name).ok()??;
                channel_entry(&dir, file).filter(|e| is_agent_dir(dir_name, &e.agent_id))
            })
            .collect())
    })
}

fn drop_stalest(by_channel: &mut HashMap<String, Entry>) {
    if let Some(key) = by_channel
        .iter()
        .min_by_key(|(_, e)| e.updated_at)
        .map(|(k, _)| k.clone())
    {
        by_channel.remove(&key);
    }
}

/// The valid entry at `file` of an agent directory, if `file` is a name of
/// its channel. One unreadable file must not hide the others: errors read as
/// none.
fn channel_entry(dir: &Descriptor, file: &str) -> Option<Entry> {
    if !is_entry_name(file) {
        return None;
    }
    match inspect(dir, file) {
        Ok(Slot::File {
            entry: Some(entry), ..
        }) if !entry.channel.is_empty() && is_channel_file(file, &entry.channel) => Some(entry),
        _ => None,
    }
}

/// Whether `dir_name` is a directory name of `agent_id`.
fn is_agent_dir(dir_name: &str, agent_id: &str) -> bool {
    agent_dir_name(agent_id).is_ok_and(|own| own == dir_name)
        || other_writers_dir_names(agent_id)
            .iter()
            .any(|n| n == dir_name)
}

/// Whether `entry`, read at `file` of the agent directory `dir_name`, is the
/// entry `lookup_all` returns for its agent and channel: the freshest of
/// every directory name of the agent and file name of the channel (the
/// earlier, own names first, on a tie). Only ids or channels with characters
/// other than letters, digits, `-` and `_` have more than one such place.
fn is_freshest_at(root: &Descriptor, dir_name: &str, file: &str, entry: &Entry) -> bool {
    let (Ok(own_dir), Ok(own_file)) = (
        agent_dir_name(&entry.agent_id),
        file_name_of(&entry.channel),
    ) else {
        return false;
    };
    let dirs: Vec<String> = std::iter::once(own_dir)
        .chain(other_writers_dir_names(&entry.agent_id))
        .collect();
    let files: Vec<String> = std::iter::once(own_file)
        .chain(other_writers_names(&entry.channel))
        .collect();
    if dirs.len() == 1 && files.len() == 1 {
        return dirs[0] == dir_name && files[0] == file;
    }
    let mut best: Option<(&str, &str, u64)> = None;
    for d in &dirs {
        let dir = open_agent_dir(root, d).ok().flatten();
        for f in &files {
            let updated_at = if d == dir_name && f == file {
                Some(entry.updated_at)
            } else {
                dir.as_ref()
                    .and_then(|dir| channel_entry(dir, f))
                    .filter(|e| e.is_of(&entry.agent_id) && same_id(&e.channel, &entry.channel))
                    .map(|e| e.updated_at)
            };
            if let Some(t) = updated_at {
                if best.is_none_or(|(_, _, b)| t > b) {
                    best = Some((d, f, t));
                }
            }
        }
    }
    best.is_some_and(|(d, f, _)| d == dir_name && f == file)
}

/// The agent directory a pass is in.
struct InDir {
    name: String,
    dir: Descriptor,
    scan: Scan,
}

/// A pass over every entry of every agent directory.
pub struct Listing {
    root: Option<Names>,
    current: Option<InDir>,
    /// (agent, channel) pairs returned, as keyed 64-bit hashes.
    returned: HashSet<u64>,
    key: RandomState,
    done: bool,
}

impl Listing {
    pub fn new() -> Listing {
        Listing {
            root: None,
            current: None,
            returned: HashSet::new(),
            key: RandomState::new(),
            done: false,
        }
    }

    pub fn next_batch(&mut self, max_entries: u32) -> Result<Option<Vec<Entry>>, Error> {
        if self.done {
            return Ok(None);
        }
        let max_entries = max_entries.max(1) as usize;
        let max_names = max_entries.saturating_mul(4).saturating_add(1024);
        with_dir(|root| {
            let mut batch = Vec::new();
            for _ in 0..max_names {
                if let Some(current) = &mut self.current {
                    match current.scan.next(&current.dir)? {
                        Some(file) => {
                            if let Some(entry) = channel_entry(&current.dir, &file) {
                                let key =
                                    (entry.agent_id.to_lowercase(), entry.channel.to_lowercase());
                                if is_agent_dir(&current.name, &entry.agent_id)
                                    && is_freshest_at(root, &current.name, &file, &entry)
                                    && self.returned.insert(self.key.hash_one(key))
                                {
                                    batch.push(entry);
                                }
                            }
                        }
                        None => self.current = None,
                    }
                } else {
                    let names = match &mut self.root {
                        Some(names) => names,
                        None => self.root.insert(Names::open(root)?),
                    };
                    let Some(name) = names.next()? else {
                        self.done = true;
                        self.root = None;
                        self.returned = HashSet::new();
                        return Ok(if batch.is_empty() { None } else { Some(batch) });
                    };
                    if name.starts_with('.') {
                        continue;
                    }
                    // Not a directory (or gone): nothing of the registry's.
                    if let Ok(Some(dir)) = open_agent_dir(root, &name) {
                        self.current = Some(InDir {
                            name,
                            dir,
                            scan: Scan::new(),
                        });
                    }
                }
                if batch.len() == max_entries {
                    break;
                }
            }
            Ok(Some(batch))
        })
    }
}

/// A sweep of every agent directory, a bounded number of names per step.
pub struct Sweep {
    ages: Ages,
    root: Option<Names>,
    current: Option<(String, Descriptor, Names)>,
    progress: SweepProgress,
}

impl Sweep {
    pub fn new(max_age_ms: u64) -> Sweep {
        Sweep {
            ages: Ages::new(max_age_ms),
            root: None,
            current: None,
            progress: SweepProgress::default(),
        }
    }

    pub fn next_batch(&mut self, max_names: u32) -> Result<SweepProgress, Error> {
        if self.progress.done {
            return Ok(self.progress.clone());
        }
        with_dir(|root| {
            for _ in 0..max_names.max(1) {
                if let Some((name, dir, names)) = &mut self.current {
                    match names.next()? {
                        Some(file) => {
                            self.progress.examined += 1;
                            let gone = self.ages.sweep_name(dir, &file);
                            count(&mut self.progress, gone);
                        }
                        None => {
                            let name = std::mem::take(name);
                            self.current = None;
                            self.progress.removed += u64::from(remove_if_empty(root, &name));
                        }
                    }
                    continue;
                }
                let names = match &mut self.root {
                    Some(names) => names,
                    None => self.root.insert(Names::open(root)?),
                };
                let Some(name) = names.next()? else {
                    self.progress.done = true;
                    self.root = None;
                    break;
                };
                self.progress.examined += 1;
                if name.starts_with('.') {
                    continue;
                }
                match open_agent_dir(root, &name) {
                    Ok(Some(dir)) => match Names::open(&dir) {
                        Ok(names) => self.current = Some((name, dir, names)),
                        Err(error) => count(&mut self.progress, Err(error)),
                    },
                    // Gone meanwhile; a file of someone else's is left alone.
                    Ok(None) | Err(Error::Conflict(_)) => {}
                    Err(error) => count(&mut self.progress, Err(error)),
                }
            }
            Ok(self.progress.clone())
        })
    }
}
