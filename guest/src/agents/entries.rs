//! The operations on one entry: write, renew, remove, remove-owned, evict,
//! lookup.
//!
//! An id's entry is written at its own name ([`file_name_of`]); lookups and
//! removals also look at the names other writers used for it
//! ([`other_writers_names`]), where a file counts only while the id it
//! stores is the one asked for. Each operation is written once over a
//! directory and the names it may use, so the shared registry runs the same
//! code in an agent's directory, over its channels' names.

use agentmux_registry_core::entry::file_name_of;
use agentmux_registry_core::name::other_writers_names;
use agentmux_registry_core::{Entry, EntryFields, Error, Owner, Renewal};
use wasi::filesystem::types::{Descriptor, DescriptorType};

use super::files::{claim, remove_judged, replace_with, unlink};
use super::slot::{inspect, judge, Slot};
use super::{now_ms, with_dir};

/// Which entries a name may hold: the entries of one agent (any spelling of
/// its id), and in the shared registry of one channel too, in the agent
/// directory named `agent_dir`.
#[derive(Clone, Copy)]
pub(crate) struct Holder<'a> {
    pub agent_id: &'a str,
    pub channel: Option<&'a str>,
    pub agent_dir: Option<&'a str>,
}

impl Holder<'_> {
    /// Whether another's `entry`, found at `name`, is at its own place: then
    /// the name is its, and is not taken over. An entry at a name that is not
    /// its own (agentmux-srv's `_`-sanitised names are shared by several ids)
    /// gives way, as agentmux-srv itself would overwrite it.
    fn is_own_place_of(&self, name: &str, entry: &Entry) -> bool {
        let own_file = match self.channel {
            Some(_) => file_name_of(&entry.channel),
            None => file_name_of(&entry.agent_id),
        };
        let own_dir = match self.agent_dir {
            Some(dir) => agentmux_registry_core::name::agent_dir_name(&entry.agent_id)
                .is_ok_and(|own| own == dir),
            None => true,
        };
        own_dir && own_file.is_ok_and(|own| own == name)
    }

    pub(crate) fn holds(&self, entry: &Entry) -> bool {
        entry.is_of(self.agent_id)
            && self
                .channel
                .is_none_or(|c| agentmux_registry_core::name::same_id(&entry.channel, c))
    }

    fn conflict(&self, name: &str, entry: &Entry) -> Error {
        match self.channel {
            Some(channel) if entry.is_of(self.agent_id) => Error::Conflict(format!(
                "entry file {name:?} holds the entry of channel {:?}, not {channel:?}",
                entry.channel
            )),
            _ => Error::Conflict(format!(
                "entry file {name:?} holds the entry of agent {:?}, not {:?}",
                entry.agent_id, self.agent_id
            )),
        }
    }
}

pub fn write(fields: EntryFields) -> Result<Entry, Error> {
    fields.check()?;
    let name = file_name_of(&fields.agent_id)?;
    let holder = Holder {
        agent_id: &fields.agent_id,
        channel: None,
        agent_dir: None,
    };
    with_dir(|dir| write_in(dir, &name, holder, fields.clone()))
}

/// Writes `fields` at `name` in `dir` (checked by the caller).
pub(crate) fn write_in(
    dir: &Descriptor,
    name: &str,
    holder: Holder,
    fields: EntryFields,
) -> Result<Entry, Error> {
    let claim = claim(dir, name)?;
    match inspect(dir, name)? {
        Slot::File {
            entry: Some(other), ..
        } if !holder.holds(&other) && holder.is_own_place_of(name, &other) => {
            return Err(holder.conflict(name, &other))
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
    replace_with(dir, &claim, name, &entry)?;
    Ok(entry)
}

/// One heartbeat step of the registration `fields.registration_nonce`:
/// rewrites the entry if it is still this registration's, restores it if it
/// is missing or malformed, and leaves a successor's entry alone.
pub fn renew(fields: EntryFields) -> Result<Renewal, Error> {
    check_renewal(&fields)?;
    let name = file_name_of(&fields.agent_id)?;
    let holder = Holder {
        agent_id: &fields.agent_id,
        channel: None,
        agent_dir: None,
    };
    with_dir(|dir| renew_in(dir, &name, holder, fields.clone()))
}

/// The checks of a renewal's fields.
pub(crate) fn check_renewal(fields: &EntryFields) -> Result<(), Error> {
    fields.check()?;
    if fields.registration_nonce == 0 {
        return Err(Error::InvalidField(
            "registration-nonce is 0: only a registration can be renewed".into(),
        ));
    }
    Ok(())
}

/// Renews at `name` in `dir` (fields checked by the caller).
pub(crate) fn renew_in(
    dir: &Descriptor,
    name: &str,
    holder: Holder,
    fields: EntryFields,
) -> Result<Renewal, Error> {
    let claim = claim(dir, name)?;
    let renewal = renewal_of(judge(dir, name)?, name, holder, fields.registration_nonce)?;
    if renewal != Renewal::Superseded {
        replace_with(dir, &claim, name, &fields.into_entry(now_ms()))?;
    }
    Ok(renewal)
}

/// What renewing the registration `nonce` does with `slot`, judged under the
/// name's claim.
fn renewal_of(slot: Slot, name: &str, holder: Holder, nonce: u64) -> Result<Renewal, Error> {
    match slot {
        Slot::Missing | Slot::File { entry: None, .. } => Ok(Renewal::Restored),
        Slot::File {
            entry: Some(entry), ..
        } if !holder.holds(&entry) && holder.is_own_place_of(name, &entry) => {
            Err(holder.conflict(name, &entry))
        }
        // Another id's entry away from its own name: the name is this id's.
        Slot::File {
            entry: Some(entry), ..
        } if !holder.holds(&entry) => Ok(Renewal::Restored),
        Slot::File {
            entry: Some(entry), ..
        } if entry.is_registration(holder.agent_id, nonce) => Ok(Renewal::Refreshed),
        // Under the claim, another registration's entry here was written
        // after this registration's last renewal: it is newer.
        Slot::File { entry: Some(_), .. } => Ok(Renewal::Superseded),
        Slot::Special(kind) => Err(Error::Conflict(format!(
            "entry name {name:?} is a {kind:?}, not a regular file"
        ))),
    }
}

/// Removes the id's entry at its own name (and whatever else is planted
/// there, except another id's entry or a directory), and its entries at the
/// names other writers used.
pub fn remove(agent_id: &str) -> Result<bool, Error> {
    let name = file_name_of(agent_id)?;
    let holder = Holder {
        agent_id,
        channel: None,
        agent_dir: None,
    };
    with_dir(|dir| {
        let mut removed = remove_own_in(dir, &name, holder)?;
        for other in other_writers_names(agent_id) {
            removed |= remove_where_in(dir, &other, |entry| holder.holds(entry))?;
        }
        Ok(removed)
    })
}

/// Removes what `name` in `dir` holds, unless it is another's entry or a
/// directory.
pub(crate) fn remove_own_in(dir: &Descriptor, name: &str, holder: Holder) -> Result<bool, Error> {
    let claim = claim(dir, name)?;
    // Judged, then the file read is closed before the unlink: Windows
    // refuses to remove an open file.
    let removable = match inspect(dir, name)? {
        Slot::Missing | Slot::Special(DescriptorType::Directory) => false,
        Slot::File {
            entry: Some(entry), ..
        } => holder.holds(&entry),
        _ => true,
    };
    if !removable {
        return Ok(false);
    }
    claim.check(name)?;
    unlink(dir, name)
}

/// Removes the id's entries written by the registration `owner`, at its own
/// name or the names other writers used.
pub fn remove_owned(agent_id: &str, owner: &Owner) -> Result<bool, Error> {
    let names = names_of(agent_id)?;
    if owner.registration_nonce == 0 {
        return Ok(false);
    }
    with_dir(|dir| {
        let mut removed = false;
        for name in &names {
            removed |= remove_where_in(dir, name, |entry| entry.is_owned_by(agent_id, owner))?;
        }
        Ok(removed)
    })
}

/// Removes the id's entry while it is exactly `judged`, at its own name or
/// the names other writers used.
pub fn evict(agent_id: &str, judged: &Entry) -> Result<bool, Error> {
    let names = names_of(agent_id)?;
    with_dir(|dir| {
        let mut removed = false;
        for name in &names {
            removed |=
                remove_where_in(dir, name, |entry| entry.is_of(agent_id) && entry == judged)?;
        }
        Ok(removed)
    })
}

/// The id's own name, then the names other writers used.
pub(crate) fn names_of(agent_id: &str) -> Result<Vec<String>, Error> {
    let mut names = vec![file_name_of(agent_id)?];
    names.extend(other_writers_names(agent_id));
    Ok(names)
}

/// Removes the entry at `name` in `dir` if, judged under the name's claim,
/// it satisfies `chosen`.
pub(crate) fn remove_where_in(
    dir: &Descriptor,
    name: &str,
    chosen: impl Fn(&Entry) -> bool,
) -> Result<bool, Error> {
    let held = claim(dir, name)?;
    match judge(dir, name)? {
        Slot::File {
            file,
            entry: Some(entry),
            ..
        } if chosen(&entry) => remove_judged(dir, &held, name, file),
        _ => Ok(false),
    }
}

/// The freshest of the id's entries at its own name and the names other
/// writers used (its own name's on a tie).
pub fn lookup(agent_id: &str) -> Result<Option<Entry>, Error> {
    Ok(lookup_every(agent_id)?.into_iter().next())
}

/// Every entry of the id, at its own name and the names other writers used,
/// freshest first (its own name's first on a tie).
pub fn lookup_every(agent_id: &str) -> Result<Vec<Entry>, Error> {
    let names = names_of(agent_id)?;
    with_dir(|dir| {
        let mut found: Vec<Entry> = Vec::new();
        for name in &names {
            // Where the file system folds case, two names can be one file.
            if let Some(entry) = inspect(dir, name)?.entry_of(agent_id) {
                if !found.contains(&entry) {
                    found.push(entry);
                }
            }
        }
        // Stable: on a tie, the order of `names` (own name first) stays.
        found.sort_by_key(|e| std::cmp::Reverse(e.updated_at));
        Ok(found)
    })
}

/// The valid entry at `name`, if `name` is one of its id's names: what a
/// change to `name` concerns. Errors read as none.
pub(crate) fn entry_at(dir: &Descriptor, name: &str) -> Option<Entry> {
    if !super::listing::is_entry_name(name) {
        return None;
    }
    let Ok(Slot::File {
        entry: Some(entry), ..
    }) = inspect(dir, name)
    else {
        return None;
    };
    names_of(&entry.agent_id)
        .is_ok_and(|names| names.iter().any(|n| n == name))
        .then_some(entry)
}

/// For each of `names`, [`entry_at`]; at most [`MAX_NAMES_AT`] names.
pub fn entries_at(names: &[String]) -> Result<Vec<Option<Entry>>, Error> {
    check_names_at(names)?;
    with_dir(|dir| Ok(names.iter().map(|name| entry_at(dir, name)).collect()))
}

/// The most names one `entries-at` call reads.
pub const MAX_NAMES_AT: usize = 1024;

/// Refuses more names than [`MAX_NAMES_AT`].
pub(crate) fn check_names_at(names: &[String]) -> Result<(), Error> {
    if names.len() > MAX_NAMES_AT {
        return Err(Error::InvalidField(format!(
            "names: {} given, at most {MAX_NAMES_AT} per call",
            names.len()
        )));
    }
    Ok(())
}

/// Whether `entry`, read at `name`, is the one a lookup of its id returns:
/// the freshest of the id's names (the earlier name on a tie). Names that
/// cannot be read count as holding nothing.
pub(crate) fn is_freshest_at(dir: &Descriptor, name: &str, entry: &Entry) -> bool {
    let Ok(names) = names_of(&entry.agent_id) else {
        return false;
    };
    if names.len() == 1 {
        return names[0] == name;
    }
    let mut best: Option<(&str, u64)> = None;
    for other in &names {
        let updated_at = if other == name {
            Some(entry.updated_at)
        } else {
            match inspect(dir, other) {
                Ok(slot) => slot.entry_of(&entry.agent_id).map(|e| e.updated_at),
                Err(_) => None,
            }
        };
        if let Some(t) = updated_at {
            if best.is_none_or(|(_, b)| t > b) {
                best = Some((other, t));
            }
        }
    }
    best.is_some_and(|(n, _)| n == name)
}
