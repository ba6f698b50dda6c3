//! Cross-instance agent registry for agentmux-srv, run as a sandboxed WASI
//! component.
//!
//! Several agentmux-srv processes on one machine share a data dir; each keeps
//! one JSON file per agent it hosts in `{data_dir}/agents/`. All registry logic
//! runs inside a WebAssembly component (embedded in this crate) whose only
//! capability is a preopen of that agents directory: no other file, no
//! environment, no network. This crate is the host: it creates and checks the
//! directory, runs the component with wasmtime, and exposes it as [`Registry`].
//!
//! [`Registry`] is async and safe to use from any tokio runtime (multi-thread
//! or current-thread) or from none; [`blocking::Registry`] is the same for
//! synchronous code, and [`compat`] keeps the function-style API of the
//! original in-process registry module.
//!
//! ```
//! # fn main() -> Result<(), agentmux_registry::Error> {
//! # let tmp = tempfile::tempdir().unwrap();
//! # let data_dir = tmp.path();
//! let registry = agentmux_registry::blocking::Registry::open(data_dir)?;
//! registry.write("agent-1", "http://127.0.0.1:8123", "block-7", std::process::id(), "key")?;
//! let entry = registry.lookup("agent-1")?.expect("just written");
//! assert_eq!(entry.local_url, "http://127.0.0.1:8123");
//! assert!(registry.remove("agent-1")?);
//! # Ok(())
//! # }
//! ```
#![deny(missing_docs)]

mod agents_dir;
pub mod blocking;
pub mod compat;
mod component_cache;
pub mod liveness;
mod registration;
mod registry;
mod runtime;

mod bindings {
    wasmtime::component::bindgen!({
        path: "../wit",
        world: "agent-registry",
        exports: { default: async },
    });
}

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

pub use registration::Registration;
pub use registry::{Options, Registry};

/// One registered agent, as stored in its entry file.
///
/// Serialises to the on-disk format: the keys `agent_id`, `local_url`,
/// `block_id`, `pid`, `updated_at` and `auth_key`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentEntry {
    /// The agent's id, exactly as registered (case-sensitive).
    pub agent_id: String,
    /// Local HTTP URL of the owning instance (e.g. `http://127.0.0.1:PORT`).
    pub local_url: String,
    /// The block the agent runs in.
    pub block_id: String,
    /// OS process id of the owning agentmux-srv process.
    pub pid: u32,
    /// Unix milliseconds of the last write.
    pub updated_at: u64,
    /// Per-launch auth key of the owning instance; empty in entries written
    /// before keys existed.
    #[serde(default)]
    pub auth_key: String,
    /// When the owning process started (see [`liveness`]); `None` in entries
    /// written without it. Stored as the optional key `pid_started`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid_started: Option<u64>,
}

/// Why a registry call failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The agent id cannot name an entry (empty, or too long for a file name).
    #[error("invalid agent id: {0}")]
    InvalidAgentId(String),
    /// A field is unacceptable, e.g. over its length limit.
    #[error("invalid field: {0}")]
    InvalidField(String),
    /// The id's entry file holds another agent's entry; nothing was changed.
    #[error("conflict: {0}")]
    Conflict(String),
    /// The component's file-system work failed.
    #[error("registry I/O failed: {0}")]
    Io(String),
    /// The host could not create, open or adjust the agents directory.
    #[error("agents directory {}: {source}", path.display())]
    Directory {
        /// The path concerned.
        path: PathBuf,
        /// What the OS said.
        #[source]
        source: std::io::Error,
    },
    /// The agents directory is not safe to use: a symlink, not a directory,
    /// owned by another user, or writable by other users.
    #[error("refusing agents directory {}: {reason}", path.display())]
    InsecureDirectory {
        /// The agents directory.
        path: PathBuf,
        /// Why it was refused, and what to do.
        reason: String,
    },
    /// A call ran longer than [`Options::call_timeout`] and was stopped.
    #[error("registry call exceeded its time limit of {0:?}")]
    Timeout(Duration),
    /// A call tried to use more memory than [`Options::memory_limit`].
    #[error("registry call exceeded its memory limit of {0} bytes")]
    MemoryLimit(usize),
    /// The component could not be compiled, instantiated or run.
    #[error("{0}")]
    Component(String),
}

impl From<bindings::exports::agentmux::registry::registry::RegistryError> for Error {
    fn from(e: bindings::exports::agentmux::registry::registry::RegistryError) -> Self {
        use bindings::exports::agentmux::registry::registry::RegistryError as E;
        match e {
            E::InvalidAgentId(m) => Error::InvalidAgentId(m),
            E::InvalidField(m) => Error::InvalidField(m),
            E::Conflict(m) => Error::Conflict(m),
            E::Io(m) => Error::Io(m),
        }
    }
}

impl From<bindings::exports::agentmux::registry::registry::AgentEntry> for AgentEntry {
    fn from(e: bindings::exports::agentmux::registry::registry::AgentEntry) -> Self {
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

/// agentmux-srv's data dir: `$AGENTMUX_DATA_HOME` when set and non-empty,
/// else `~/.agentmux`. `None` when neither is known.
pub fn default_data_dir() -> Option<PathBuf> {
    match std::env::var_os("AGENTMUX_DATA_HOME") {
        Some(dir) if !dir.is_empty() => Some(PathBuf::from(dir)),
        _ => std::env::var_os("HOME")
            .filter(|home| !home.is_empty())
            .map(|home| PathBuf::from(home).join(".agentmux")),
    }
}

/// The registry component this crate runs, as a WebAssembly component binary.
/// It exports `agentmux:registry/registry@0.1.0` (and `wasi:cli/run` for
/// command runners) and imports only WASI.
pub fn component_bytes() -> &'static [u8] {
    runtime::COMPONENT
}

/// The WIT contract, `wit/registry.wit` (package `agentmux:registry@0.1.0`).
pub const WIT: &str = include_str!("../../wit/registry.wit");

/// `wit/deps/cli/run.wit`: the one `wasi:cli` interface the WIT package uses.
pub const WIT_CLI_RUN: &str = include_str!("../../wit/deps/cli/run.wit");

/// A path that opens exactly the file or directory `descriptor` has open,
/// whatever has been renamed or replaced since: its `/proc/self/fd` link.
/// `None` where there is no such link (not Linux, or no `/proc`).
#[cfg(unix)]
fn descriptor_path(descriptor: &impl std::os::fd::AsRawFd) -> Option<PathBuf> {
    if !cfg!(target_os = "linux") {
        return None;
    }
    let link = PathBuf::from(format!("/proc/self/fd/{}", descriptor.as_raw_fd()));
    link.exists().then_some(link)
}

#[cfg(not(unix))]
fn descriptor_path<T>(_descriptor: &T) -> Option<PathBuf> {
    None
}
