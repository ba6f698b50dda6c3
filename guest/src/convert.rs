//! The mapping between the contract's generated types
//! (`agentmux:registry/registry@0.3.0`) and core's: every record's fields
//! listed once, checked by the compiler (see `same_shape!`).

use agentmux_registry_core::{
    same_shape, Entry, EntryFields, Error, Owner, Renewal, SweepProgress,
};

use crate::component::wit;

same_shape!(wit::EntryFields => EntryFields {
    agent_id, local_url, block_id, pid, auth_key, channel, registration_nonce, pid_started,
    pid_namespace, beat_interval_ms, extra
});
same_shape!(Entry => wit::AgentEntry {
    agent_id, local_url, block_id, pid, updated_at, auth_key, channel, registration_nonce,
    pid_started, pid_namespace, beat_interval_ms, extra
});
same_shape!(wit::AgentEntry => Entry {
    agent_id, local_url, block_id, pid, updated_at, auth_key, channel, registration_nonce,
    pid_started, pid_namespace, beat_interval_ms, extra
});
same_shape!(wit::Owner => Owner { pid, auth_key, registration_nonce });
same_shape!(enum Renewal => wit::Renewal { Refreshed, Restored, Superseded });
same_shape!(SweepProgress => wit::SweepProgress {
    examined, removed, failed, first_failure, done
});

impl From<Error> for wit::RegistryError {
    fn from(e: Error) -> Self {
        match e {
            Error::InvalidAgentId(m) => wit::RegistryError::InvalidAgentId(m),
            Error::InvalidField(m) => wit::RegistryError::InvalidField(m),
            Error::Conflict(m) => wit::RegistryError::Conflict(m),
            Error::Io(m) => wit::RegistryError::Io(m),
        }
    }
}
