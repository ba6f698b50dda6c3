//! The operations on one entry: write, renew, remove, remove-owned, lookup.

use agentmux_registry_core::entry::file_name_of;
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

/// One heartbeat step of registration `fields.registration`: rewrites the
/// entry if it is still this registration's, restores it if it is missing
/// or malformed, and leaves a successor's entry alone.
pub fn renew(fields: EntryFields) -> Result<Renewal, Error> {
    fields.check()?;
    let Some(token) = fields.registration.clone() else {
        return Err(Error::InvalidField(
            "registration is none: only a registration can be renewed".into(),
        ));
    };
    let name = file_name_of(&fields.agent_id)?;
    with_dir(|dir| {
        let claim = claim(dir, &name)?;
        let renewal = renewal_of(judge(dir, &name)?, &name, &fields.agent_id, &token)?;
        if renewal != Renewal::Superseded {
            replace_with(dir, &claim, &name, &fields.into_entry(now_ms()))?;
        }
        Ok(renewal)
    })
}

/// What renewing `agent_id`'s registration `token` does with `slot`, judged
/// under the name's claim.
fn renewal_of(slot: Slot, name: &str, agent_id: &str, token: &str) -> Result<Renewal, Error> {
    match slot {
        Slot::Missing | Slot::File { entry: None, .. } => Ok(Renewal::Restored),
        Slot::File {
            entry: Some(entry), ..
        } if entry.agent_id != agent_id => Err(other_agent(name, &entry, agent_id)),
        Slot::File {
            entry: Some(entry), ..
        } if entry.is_registration(agent_id, token) => Ok(Renewal::Refreshed),
        // Under the claim, another registration's entry here was written
        // after this registration's last renewal: it is newer.
        Slot::File { entry: Some(_), .. } => Ok(Renewal::Superseded),
        Slot::Special(kind) => Err(Error::Conflict(format!(
            "entry name {name:?} is a {kind:?}, not a regular file"
        ))),
    }
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
