//! The component's exports: the WIT `registry` interface, bound to
//! [`crate::agents`], and the command entry point.

use std::cell::RefCell;

use agentmux_registry_core::cli::{self, Outcome};
use agentmux_registry_core::entry::file_name_of;
use agentmux_registry_core::ops::LIST_BATCH;
use agentmux_registry_core::{Entry, EntryFields, Error, SweepProgress};

use crate::{agents, shared};

wit_bindgen::generate!({
    path: "../wit/0.3.0",
    world: "agent-registry-command",
});

pub(crate) use exports::agentmux::registry::registry as wit;
use exports::agentmux::registry::shared_registry as shared_wit;

struct Registry;

/// The `entry-listing` resource.
struct EntryListing(RefCell<agents::Listing>);

impl wit::GuestEntryListing for EntryListing {
    fn new() -> Self {
        EntryListing(RefCell::new(agents::Listing::new()))
    }

    fn next_batch(
        &self,
        max_entries: u32,
    ) -> Result<Option<Vec<wit::AgentEntry>>, wit::RegistryError> {
        let batch = self.0.borrow_mut().next_batch(max_entries)?;
        Ok(batch.map(|entries| entries.into_iter().map(Into::into).collect()))
    }
}

/// The `sweep` resource.
struct Sweep(RefCell<agents::Sweep>);

impl wit::GuestSweep for Sweep {
    fn new(max_age_ms: u64) -> Self {
        Sweep(RefCell::new(agents::Sweep::new(max_age_ms)))
    }

    fn next_batch(&self, max_names: u32) -> Result<wit::SweepProgress, wit::RegistryError> {
        Ok(self.0.borrow_mut().next_batch(max_names)?.into())
    }
}

impl wit::Guest for Registry {
    type EntryListing = EntryListing;
    type Sweep = Sweep;

    fn write(fields: wit::EntryFields) -> Result<wit::AgentEntry, wit::RegistryError> {
        Ok(agents::write(fields.into())?.into())
    }

    fn renew(fields: wit::EntryFields) -> Result<wit::Renewal, wit::RegistryError> {
        Ok(agents::renew(fields.into())?.into())
    }

    fn remove(agent_id: String) -> Result<bool, wit::RegistryError> {
        Ok(agents::remove(&agent_id)?)
    }

    fn remove_owned(agent_id: String, owner: wit::Owner) -> Result<bool, wit::RegistryError> {
        Ok(agents::remove_owned(&agent_id, &owner.into())?)
    }

    fn evict(agent_id: String, judged: wit::AgentEntry) -> Result<bool, wit::RegistryError> {
        Ok(agents::evict(&agent_id, &judged.into())?)
    }

    fn list_entries(max_entries: u32) -> Result<Vec<wit::AgentEntry>, wit::RegistryError> {
        let entries = agents::list_entries(max_entries)?;
        Ok(entries.into_iter().map(Into::into).collect())
    }

    fn cleanup_stale(max_age_ms: u64) -> Result<u64, wit::RegistryError> {
        Ok(agents::cleanup_stale(max_age_ms)?.removed)
    }

    fn entry_file_name(agent_id: String) -> Result<String, wit::RegistryError> {
        Ok(file_name_of(&agent_id)?)
    }

    fn lookup_every(agent_id: String) -> Result<Vec<wit::AgentEntry>, wit::RegistryError> {
        let entries = agents::lookup_every(&agent_id)?;
        Ok(entries.into_iter().map(Into::into).collect())
    }

    fn entries_at(names: Vec<String>) -> Result<Vec<Option<wit::AgentEntry>>, wit::RegistryError> {
        let entries = agents::entries_at(&names)?;
        Ok(entries.into_iter().map(|e| e.map(Into::into)).collect())
    }

    fn lookup(agent_id: String) -> Result<Option<wit::AgentEntry>, wit::RegistryError> {
        Ok(agents::lookup(&agent_id)?.map(Into::into))
    }
}

/// The `shared-listing` resource.
struct SharedListing(RefCell<shared::Listing>);

impl shared_wit::GuestSharedListing for SharedListing {
    fn new() -> Self {
        SharedListing(RefCell::new(shared::Listing::new()))
    }

    fn next_batch(
        &self,
        max_entries: u32,
    ) -> Result<Option<Vec<wit::AgentEntry>>, wit::RegistryError> {
        let batch = self.0.borrow_mut().next_batch(max_entries)?;
        Ok(batch.map(|entries| entries.into_iter().map(Into::into).collect()))
    }
}

/// The `shared-sweep` resource.
struct SharedSweep(RefCell<shared::Sweep>);

impl shared_wit::GuestSharedSweep for SharedSweep {
    fn new(max_age_ms: u64) -> Self {
        SharedSweep(RefCell::new(shared::Sweep::new(max_age_ms)))
    }

    fn next_batch(&self, max_names: u32) -> Result<wit::SweepProgress, wit::RegistryError> {
        Ok(self.0.borrow_mut().next_batch(max_names)?.into())
    }
}

impl shared_wit::Guest for Registry {
    type SharedListing = SharedListing;
    type SharedSweep = SharedSweep;

    fn write_shared(fields: wit::EntryFields) -> Result<wit::AgentEntry, wit::RegistryError> {
        Ok(shared::write(fields.into())?.into())
    }

    fn renew_shared(fields: wit::EntryFields) -> Result<wit::Renewal, wit::RegistryError> {
        Ok(shared::renew(fields.into())?.into())
    }

    fn remove_shared(agent_id: String, channel: String) -> Result<bool, wit::RegistryError> {
        Ok(shared::remove(&agent_id, &channel)?)
    }

    fn remove_owned_shared(
        agent_id: String,
        owner: wit::Owner,
    ) -> Result<bool, wit::RegistryError> {
        Ok(shared::remove_owned(&agent_id, &owner.into())?)
    }

    fn evict_shared(judged: wit::AgentEntry) -> Result<bool, wit::RegistryError> {
        Ok(shared::evict(&judged.into())?)
    }

    fn agent_dir_name(agent_id: String) -> Result<String, wit::RegistryError> {
        Ok(agentmux_registry_core::name::agent_dir_name(&agent_id).map_err(Error::from)?)
    }

    fn lookup_all_shared(agent_id: String) -> Result<Vec<wit::AgentEntry>, wit::RegistryError> {
        let entries = shared::lookup_all(&agent_id)?;
        Ok(entries.into_iter().map(Into::into).collect())
    }

    fn entries_at_shared(
        names: Vec<String>,
    ) -> Result<Vec<Option<wit::AgentEntry>>, wit::RegistryError> {
        let entries = shared::entries_at(&names)?;
        Ok(entries.into_iter().map(|e| e.map(Into::into)).collect())
    }
}

/// Command mode: the same commands and output as the host's CLI (one
/// grammar and one dispatcher, in core), on the preopened agents directory.
impl exports::wasi::cli::run::Guest for Registry {
    fn run() -> Result<(), ()> {
        let args: Vec<String> = std::env::args().skip(1).collect();
        let invocation = match cli::parse(&args) {
            Ok(invocation) => invocation,
            Err(why) => {
                eprintln!("registry: {why}\n{}", cli::USAGE);
                return Err(());
            }
        };
        let format = invocation.format();
        let mut stdout = std::io::stdout().lock();
        let mut directory = Directory {
            channel: invocation.shared.then(|| {
                cli::channel_or_default(invocation.channel, std::env::var("AGENTMUX_CHANNEL").ok())
            }),
        };
        match cli::dispatch(invocation.command, format, &mut directory, &mut stdout) {
            Ok(Outcome::Done) => Ok(()),
            Ok(Outcome::NotFound(why) | Outcome::Incomplete(why)) => {
                eprintln!("registry: {why}");
                Err(())
            }
            Err(cli::Failure::Registry(e)) => {
                eprintln!("registry: {}", cli::terminal_safe(&e.to_string()));
                Err(())
            }
            // The reader went away (`... | head`): nothing more to say, as
            // the host CLI.
            Err(cli::Failure::Output(e)) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
            Err(cli::Failure::Output(e)) => {
                eprintln!("registry: writing the output: {e}");
                Err(())
            }
        }
    }
}

/// The preopened directory as the commands' backend: an agents directory,
/// or with a channel (`--shared`) a shared root.
struct Directory {
    channel: Option<String>,
}

impl cli::Backend for Directory {
    type Error = Error;

    fn write(&mut self, fields: EntryFields) -> Result<Entry, Error> {
        match self.channel {
            Some(_) => shared::write(fields),
            None => agents::write(fields),
        }
    }

    fn remove(&mut self, agent_id: &str) -> Result<bool, Error> {
        agents::remove(agent_id)
    }

    fn lookup(&mut self, agent_id: &str) -> Result<Option<Entry>, Error> {
        match self.channel {
            Some(_) => Ok(shared::lookup_all(agent_id)?.into_iter().next()),
            None => agents::lookup(agent_id),
        }
    }

    fn channel(&self) -> Option<&str> {
        self.channel.as_deref()
    }

    fn lookup_all(&mut self, agent_id: &str) -> Result<Vec<Entry>, Error> {
        shared::lookup_all(agent_id)
    }

    fn remove_channel(&mut self, agent_id: &str, channel: &str) -> Result<bool, Error> {
        shared::remove(agent_id, channel)
    }

    fn owners(&mut self, _agent_id: &str) -> Result<Vec<cli::Holding>, Error> {
        // The component sees one registry and no processes; its parser never
        // asks this.
        Err(Error::InvalidField(
            "owners needs the agentmux-registry CLI: it reads both registries and sees processes"
                .into(),
        ))
    }

    fn list(&mut self) -> Result<Vec<Entry>, Error> {
        let mut entries = Vec::new();
        if self.channel.is_some() {
            let mut listing = shared::Listing::new();
            while let Some(batch) = listing.next_batch(LIST_BATCH)? {
                entries.extend(batch);
            }
        } else {
            let mut listing = agents::Listing::new();
            while let Some(batch) = listing.next_batch(LIST_BATCH)? {
                entries.extend(batch);
            }
        }
        Ok(entries)
    }

    fn cleanup(&mut self, max_age_ms: u64, dead_owners: bool) -> Result<SweepProgress, Error> {
        if dead_owners {
            // The component sees no processes; its parser never asks this.
            return Err(Error::InvalidField(
                "--dead-owners needs the agentmux-registry CLI, which can see processes".into(),
            ));
        }
        if self.channel.is_some() {
            let mut sweep = shared::Sweep::new(max_age_ms);
            loop {
                let progress = sweep.next_batch(u32::MAX)?;
                if progress.done {
                    return Ok(progress);
                }
            }
        }
        agents::cleanup_stale(max_age_ms)
    }

    fn now_ms(&self) -> u64 {
        agents::now_ms()
    }
}

export!(Registry);
