//! The mapping between the contract's generated types
//! (`agentmux:registry/registry@0.3.0`) and this crate's: every record's
//! fields listed once, checked by the compiler (see [`same_shape!`]).

use agentmux_registry_core::{same_shape, Entry, EntryFields, Owner, Renewal, SweepProgress};

use crate::bindings::exports::agentmux::registry::registry as wit;
use crate::Error;

same_shape!(EntryFields => wit::EntryFields {
    agent_id, local_url, block_id, pid, auth_key, channel, registration_nonce, pid_started,
    pid_namespace, beat_interval_ms, extra
});
same_shape!(wit::AgentEntry => Entry {
    agent_id, local_url, block_id, pid, updated_at, auth_key, channel, registration_nonce,
    pid_started, pid_namespace, beat_interval_ms, extra
});
same_shape!(Entry => wit::AgentEntry {
    agent_id, local_url, block_id, pid, updated_at, auth_key, channel, registration_nonce,
    pid_started, pid_namespace, beat_interval_ms, extra
});
same_shape!(Owner => wit::Owner { pid, auth_key, registration_nonce });
same_shape!(enum wit::Renewal => Renewal { Refreshed, Restored, Superseded });
same_shape!(wit::SweepProgress => SweepProgress {
    examined, removed, failed, first_failure, done
});

impl From<wit::RegistryError> for Error {
    fn from(e: wit::RegistryError) -> Self {
        match e {
            wit::RegistryError::InvalidAgentId(m) => Error::InvalidAgentId(m),
            wit::RegistryError::InvalidField(m) => Error::InvalidField(m),
            wit::RegistryError::Conflict(m) => Error::Conflict(m),
            wit::RegistryError::Io(m) => Error::Io(m),
        }
    }
}
