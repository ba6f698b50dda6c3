//! The operations on one entry: write, renew, remove, remove-owned, lookup.
//!
//! An id's entry is written at its own name ([`file_name_of`]); lookups and
//! removals also look at the names other writers used for it
//! ([`other_writers_names`]), where a file counts only while the id it
//! stores is the one asked for.

use agentmux_registry_core::entry::file_name_of;
use agentmux_registry_core::name::other_writers_names;
use agentmux_registry_core::{Entry, EntryFields, Error, Owner, Renewal};
use wasi::filesystem::types::DescriptorType;

use super::files::{claim, remove_judged, replace_with, unlink};
use super::slot::{inspect, judge, Slot};
use super::{now_ms, with_dir};

pub fn write(fields: EntryFields) -> Result<Entry, Error> {
    fields.check()?;
    let name = file_name_of(&fields.agent_id)?;
    with_dir(|dir| {
        let claim = claim(dir, &name)?;
        match inspect(dir, &name)? {
            Slot::File {
                entry: Some(other), ..
            } if !other.is_of(&fields.agent_id) => {
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

/// One heartbeat step of the registration `fields.registration_nonce`:
/// rewrites the entry if it is still this registration's, restores it if it
/// is missing or malformed, and leaves a successor's entry alone.
pub fn renew(fields: EntryFields) -> Result<Renewal, Error> {
    fields.check()?;
    let nonce = fields.registration_nonce;
    if nonce == 0 {
        return Err(Error::InvalidField(
            "registration-nonce is 0: only a registration can be renewed".into(),
        ));
    }
    let name = file_name_of(&fields.agent_id)?;
    with_dir(|dir| {
        let claim = claim(dir, &name)?;
        let renewal = renewal_of(judge(dir, &name)?, &name, &fields.agent_id, nonce)?;
        if renewal != Renewal::Superseded {
            replace_with(dir, &claim, &name, &fields.into_entry(now_ms()))?;
        }
        Ok(renewal)
    })
}

/// What renewing `agent_id`'s registration `nonce` does with `slot`, judged
/// under the name's claim.
fn renewal_of(slot: Slot, name: &str, agent_id: &str, nonce: u64) -> Result<Renewal, Error> {
    match slot {
        Slot::Missing | Slot::File { entry: None, .. } => Ok(Renewal::Restored),
        Slot::File {
            entry: Some(entry), ..
        } if !entry.is_of(agent_id) => Err(other_agent(name, &entry, agent_id)),
        Slot::File {
            entry: Some(entry), ..
        } if entry.is_registration(agent_id, nonce) => Ok(Renewal::Refreshed),
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
    with_dir(|dir| {
        let mut removed = {
            let claim = claim(dir, &name)?;
            match inspect(dir, &name)? {
                Slot::Missing | Slot::Special(DescriptorType::Directory) => false,
                Slot::File {
                    entry: Some(entry), ..
                } if !entry.is_of(agent_id) => false,
                _ => {
                    claim.check(&name)?;
                    unlink(dir, &name)?
                }
            }
        };
        for other in other_writers_names(agent_id) {
            let held = claim(dir, &other)?;
            if let Slot::File {
                file,
                entry: Some(entry),
                ..
            } = judge(dir, &other)?
            {
                if entry.is_of(agent_id) {
                    removed |= remove_judged(dir, &held, &other, file)?;
                }
            }
        }
        Ok(removed)
    })
}

/// Removes the id's entries written by the registration `owner`, at its own
/// name or the names other writers used.
pub fn remove_owned(agent_id: &str, owner: &Owner) -> Result<bool, Error> {
    if owner.registration_nonce == 0 {
        file_name_of(agent_id)?;
        return Ok(false);
    }
    remove_where(agent_id, |entry| entry.is_owned_by(agent_id, owner))
}

/// Removes the id's entry while it is exactly `judged`, at its own name or
/// the names other writers used.
pub fn evict(agent_id: &str, judged: &Entry) -> Result<bool, Error> {
    remove_where(agent_id, |entry| entry.is_of(agent_id) && entry == judged)
}

/// Removes each of the id's names whose entry, judged under the name's
/// claim, satisfies `chosen`.
fn remove_where(agent_id: &str, chosen: impl Fn(&Entry) -> bool) -> Result<bool, Error> {
    let name = file_name_of(agent_id)?;
    with_dir(|dir| {
        let mut removed = false;
        for name in std::iter::once(name).chain(other_writers_names(agent_id)) {
            let held = claim(dir, &name)?;
            if let Slot::File {
                file,
                entry: Some(entry),
                ..
            } = judge(dir, &name)?
            {
                if chosen(&entry) {
                    removed |= remove_judged(dir, &held, &name, file)?;
                }
            }
        }
        Ok(removed)
    })
}

/// The id's entry at its own name; failing that, the freshest of its entries
/// at the names other writers used.
pub fn lookup(agent_id: &str) -> Result<Option<Entry>, Error> {
    let name = file_name_of(agent_id)?;
    with_dir(|dir| {
        if let Some(entry) = inspect(dir, &name)?.entry_of(agent_id) {
            return Ok(Some(entry));
        }
        let mut freshest: Option<Entry> = None;
        for other in other_writers_names(agent_id) {
            if let Some(entry) = inspect(dir, &other)?.entry_of(agent_id) {
                if freshest
                    .as_ref()
                    .is_none_or(|f| entry.updated_at > f.updated_at)
                {
                    freshest = Some(entry);
                }
            }
        }
        Ok(freshest)
    })
}
