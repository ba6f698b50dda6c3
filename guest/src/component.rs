//! The component's exports: the WIT `registry` interface, bound to
//! [`crate::store`], and the command entry point.

use std::cell::RefCell;

use agentmux_registry_core::cli::{self, Command};
use agentmux_registry_core::entry::file_name_of;
use agentmux_registry_core::{Entry, EntryFields, Error, Owner};

use crate::store;

wit_bindgen::generate!({
    path: "../wit",
    world: "agent-registry-command",
});

use exports::agentmux::registry::registry as wit;

struct Registry;

fn entry_out(e: Entry) -> wit::AgentEntry {
    wit::AgentEntry {
        agent_id: e.agent_id,
        local_url: e.local_url,
        block_id: e.block_id,
        pid: e.pid,
        updated_at: e.updated_at,
        auth_key: e.auth_key,
        pid_started: e.pid_started,
        pid_namespace: e.pid_namespace,
        registration: e.registration,
    }
}

fn fields_in(f: wit::EntryFields) -> EntryFields {
    EntryFields {
        agent_id: f.agent_id,
        local_url: f.local_url,
        block_id: f.block_id,
        pid: f.pid,
        auth_key: f.auth_key,
        pid_started: f.pid_started,
        pid_namespace: f.pid_namespace,
        registration: f.registration,
    }
}

fn error_out(e: Error) -> wit::RegistryError {
    match e {
        Error::InvalidAgentId(m) => wit::RegistryError::InvalidAgentId(m),
        Error::InvalidField(m) => wit::RegistryError::InvalidField(m),
        Error::Conflict(m) => wit::RegistryError::Conflict(m),
        Error::Io(m) => wit::RegistryError::Io(m),
    }
}

fn progress_out(p: store::Progress) -> wit::SweepProgress {
    wit::SweepProgress {
        examined: p.examined,
        removed: p.removed,
        failed: p.failed,
        first_failure: p.first_failure,
        done: p.done,
    }
}

/// The `entry-listing` resource.
struct EntryListing(RefCell<store::Listing>);

impl wit::GuestEntryListing for EntryListing {
    fn new() -> Self {
        EntryListing(RefCell::new(store::Listing::new()))
    }

    fn next_batch(
        &self,
        max_entries: u32,
    ) -> Result<Option<Vec<wit::AgentEntry>>, wit::RegistryError> {
        let batch = self
            .0
            .borrow_mut()
            .next_batch(max_entries)
            .map_err(error_out)?;
        Ok(batch.map(|entries| entries.into_iter().map(entry_out).collect()))
    }
}

/// The `sweep` resource.
struct Sweep(RefCell<store::Sweep>);

impl wit::GuestSweep for Sweep {
    fn new(max_age_ms: u64) -> Self {
        Sweep(RefCell::new(store::Sweep::new(max_age_ms)))
    }

    fn next_batch(&self, max_names: u32) -> Result<wit::SweepProgress, wit::RegistryError> {
        let progress = self.0.borrow_mut().next_batch(max_names);
        progress.map(progress_out).map_err(error_out)
    }
}

impl wit::Guest for Registry {
    type EntryListing = EntryListing;
    type Sweep = Sweep;

    fn write(fields: wit::EntryFields) -> Result<wit::AgentEntry, wit::RegistryError> {
        store::write(fields_in(fields))
            .map(entry_out)
            .map_err(error_out)
    }

    fn renew(fields: wit::EntryFields) -> Result<wit::Renewal, wit::RegistryError> {
        let renewal = store::renew(fields_in(fields)).map_err(error_out)?;
        Ok(match renewal {
            store::Renewal::Refreshed => wit::Renewal::Refreshed,
            store::Renewal::Restored => wit::Renewal::Restored,
            store::Renewal::Superseded => wit::Renewal::Superseded,
        })
    }

    fn remove(agent_id: String) -> Result<bool, wit::RegistryError> {
        store::remove(&agent_id).map_err(error_out)
    }

    fn remove_owned(agent_id: String, owner: wit::Owner) -> Result<bool, wit::RegistryError> {
        let owner = Owner {
            pid: owner.pid,
            auth_key: owner.auth_key,
            registration: owner.registration,
        };
        store::remove_owned(&agent_id, &owner).map_err(error_out)
    }

    fn list_entries(max_entries: u32) -> Result<Vec<wit::AgentEntry>, wit::RegistryError> {
        let entries = store::list_entries(max_entries).map_err(error_out)?;
        Ok(entries.into_iter().map(entry_out).collect())
    }

    fn cleanup_stale(max_age_ms: u64) -> Result<u64, wit::RegistryError> {
        store::cleanup_stale(max_age_ms)
            .map(|progress| progress.removed)
            .map_err(error_out)
    }

    fn entry_file_name(agent_id: String) -> Result<String, wit::RegistryError> {
        file_name_of(&agent_id).map_err(error_out)
    }

    fn lookup(agent_id: String) -> Result<Option<wit::AgentEntry>, wit::RegistryError> {
        store::lookup(&agent_id)
            .map(|e| e.map(entry_out))
            .map_err(error_out)
    }
}

/// Command mode: the same commands and output as the host's CLI, on the
/// preopened agents directory.
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
        match run_command(invocation.command, invocation.json) {
            Ok(success) => success.then_some(()).ok_or(()),
            Err(e) => {
                eprintln!("registry: {e}");
                Err(())
            }
        }
    }
}

/// Runs one command; `Ok(false)` when it found nothing to show (lookup) or
/// could not do all of it (names a sweep could not remove).
fn run_command(command: Command, json: bool) -> Result<bool, Error> {
    match command {
        Command::Write {
            agent_id,
            url,
            block,
            pid,
            auth_key,
        } => {
            let entry = store::write(EntryFields {
                agent_id,
                local_url: url,
                block_id: block,
                pid,
                auth_key,
                ..EntryFields::default()
            })?;
            println!("{}", cli::written(&entry, json));
        }
        Command::Remove { agent_id } => {
            let removed = store::remove(&agent_id)?;
            println!("{}", cli::removed(&agent_id, removed, json));
        }
        Command::Lookup { agent_id } => match store::lookup(&agent_id)? {
            Some(entry) => println!("{}", cli::found(&entry, json, store::now_ms())),
            None => {
                let (out, err) = cli::not_found(&agent_id, json);
                if let Some(out) = out {
                    println!("{out}");
                }
                eprintln!("registry: {err}");
                return Ok(false);
            }
        },
        Command::List => {
            let mut entries = Vec::new();
            let mut listing = store::Listing::new();
            while let Some(batch) = listing.next_batch(cli::LIST_BATCH)? {
                entries.extend(batch);
            }
            entries.sort_by(|a, b| a.agent_id.cmp(&b.agent_id));
            println!("{}", cli::listed(&entries, json, store::now_ms()));
        }
        Command::Cleanup { max_age_ms } => {
            let progress = store::cleanup_stale(max_age_ms)?;
            println!("{}", cli::cleaned(progress.removed, json));
            if progress.failed > 0 {
                eprintln!(
                    "registry: {}",
                    cli::sweep_failures(progress.failed, progress.first_failure.as_deref())
                );
                return Ok(false);
            }
        }
    }
    Ok(true)
}

export!(Registry);
