//! The mapping between the contract's generated types
//! (`agentmux:registry/registry@0.3.0`) and this crate's: every record's
//! fields listed once, checked by the compiler (see [`same_shape!`]); the
//! records every world shares are listed in core's [`shared_records!`].

use agentmux_registry_core::{same_shape, shared_records, SweepProgress};

use crate::bindings::exports::agentmux::registry::registry as wit;
use crate::Error;

shared_records!(host: wit);
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
