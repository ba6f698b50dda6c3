//! The component's exports: the WIT `registry` interface, bound to [`crate::store`].

use crate::entry::{file_name_of, Entry, Error};
use crate::store;

wit_bindgen::generate!({
    path: "../wit",
    world: "agent-registry",
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

export!(Registry);
