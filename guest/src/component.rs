//! The component's exports: the WIT `registry` interface, bound to [`crate::store`].

use crate::cli::{self, Command};
use crate::entry::{file_name_of, Entry, Error};
use crate::store;

wit_bindgen::generate!({
    path: "../wit",
    world: "agent-registry-command",
});

use exports::agentmux::registry::registry::{AgentEntry, Guest, RegistryError};

struct Registry;

impl From<Entry> for AgentEntry {
    fn from(e: Entry) -> Self {
        AgentEntry {
            agent_id: e.agent_id,
            local_url: e.local_url,
            block_id: e.block_id,
            pid: e.pid,
            updated_at: e.updated_at,
            auth_key: e.auth_key,
            pid_started: e.pid_started,
        }
    }
}

impl From<Error> for RegistryError {
    fn from(e: Error) -> Self {
        match e {
            Error::InvalidAgentId(m) => RegistryError::InvalidAgentId(m),
            Error::InvalidField(m) => RegistryError::InvalidField(m),
            Error::Conflict(m) => RegistryError::Conflict(m),
            Error::Io(m) => RegistryError::Io(m),
        }
    }
}

impl Guest for Registry {
    fn write(
        agent_id: String,
        local_url: String,
        block_id: String,
        pid: u32,
        auth_key: String,
        pid_started: Option<u64>,
    ) -> Result<AgentEntry, RegistryError> {
        Ok(store::write(
            &agent_id,
            &local_url,
            &block_id,
            pid,
            &auth_key,
            pid_started,
        )?
        .into())
    }

    fn remove(agent_id: String) -> Result<bool, RegistryError> {
        Ok(store::remove(&agent_id)?)
    }

    fn remove_owned(agent_id: String, pid: u32, auth_key: String) -> Result<bool, RegistryError> {
        Ok(store::remove_owned(&agent_id, pid, &auth_key)?)
    }

    fn list() -> Result<Vec<AgentEntry>, RegistryError> {
        Ok(store::list()?.into_iter().map(AgentEntry::from).collect())
    }

    fn cleanup_stale(max_age_ms: u64) -> Result<u32, RegistryError> {
        Ok(store::cleanup_stale(max_age_ms)?)
    }

    fn entry_file_name(agent_id: String) -> Result<String, RegistryError> {
        Ok(file_name_of(&agent_id)?)
    }

    fn lookup(agent_id: String) -> Result<Option<AgentEntry>, RegistryError> {
        Ok(store::lookup(&agent_id)?.map(AgentEntry::from))
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

/// Runs one command; `Ok(false)` when it found nothing to show (lookup).
fn run_command(command: Command, json: bool) -> Result<bool, Error> {
    match command {
        Command::Write {
            agent_id,
            url,
            block,
            pid,
            auth_key,
        } => {
            // WASI has no process ids: without --pid the owner is unknown (0).
            let entry = store::write(&agent_id, &url, &block, pid.unwrap_or(0), &auth_key, None)?;
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
        Command::List => println!("{}", cli::listed(&store::list()?, json, store::now_ms())),
        Command::Cleanup { max_age_ms } => {
            println!("{}", cli::cleaned(store::cleanup_stale(max_age_ms)?, json));
        }
    }
    Ok(true)
}

export!(Registry);
