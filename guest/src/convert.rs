//! The mapping between the contract's generated types
//! (`agentmux:registry/registry@0.3.0`) and core's: every record's fields
//! listed once, checked by the compiler (see `same_shape!`); the records
//! every world shares are listed in core's `shared_records!`.

use agentmux_registry_core::{same_shape, shared_records, Error, SweepProgress};

use crate::component::wit;

shared_records!(guest: wit);
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
