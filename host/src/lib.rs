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
//! use agentmux_registry::EntryFields;
//!
//! let registry = agentmux_registry::blocking::Registry::open(data_dir)?;
//! registry.write(EntryFields {
//!     agent_id: "agent-1".into(),
//!     local_url: "http://127.0.0.1:8123".into(),
//!     block_id: "block-7".into(),
//!     pid: std::process::id(),
//!     auth_key: "key".into(),
//!     ..EntryFields::default()
//! })?;
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
mod convert;
mod feed;
mod heartbeat;
#[cfg(feature = "etcd")]
mod kv;
pub mod liveness;
mod nudge;
mod pool;
mod registration;
mod registry;
mod runtime;
#[cfg(all(test, unix))]
mod test_log;
pub mod watch;

mod bindings {
    wasmtime::component::bindgen!({
        path: "wit",
        world: "agent-registry",
        exports: { default: async },
    });
}

use std::path::PathBuf;
use std::time::Duration;

use agentmux_registry_core::entry::ErrorKind;

pub use agentmux_registry_core::{EntryFields, Graded, Health, Owner};
pub use agentmux_registry_core::{Renewal, SweepProgress};
pub use agents_dir::data_dir_warning;
#[cfg(feature = "etcd")]
pub use kv::Etcd;
pub use registration::Registration;
pub use registry::{Listing, Options, Registry};

/// One registered agent, as stored in its entry file.
///
/// Serialises to the on-disk format: the keys `agent_id`, `local_url`,
/// `block_id`, `pid`, `updated_at`, `auth_key`, `channel` and
/// `registration_nonce`, then `pid_started`, `pid_ns` and `beat_interval_ms`
/// when set, then the `extra` keys in order.
pub type AgentEntry = agentmux_registry_core::Entry;

/// Why a registry call failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The agent id cannot name an entry (empty, or too long for a file name).
    #[error("{}", agentmux_registry_core::Error::describe(ErrorKind::InvalidAgentId, .0))]
    InvalidAgentId(String),
    /// A field is unacceptable, e.g. over its length limit.
    #[error("{}", agentmux_registry_core::Error::describe(ErrorKind::InvalidField, .0))]
    InvalidField(String),
    /// The id's entry file holds another agent's entry, or a name that is
    /// not a regular file; nothing was changed.
    #[error("{}", agentmux_registry_core::Error::describe(ErrorKind::Conflict, .0))]
    Conflict(String),
    /// The component's file-system work failed.
    #[error("{}", agentmux_registry_core::Error::describe(ErrorKind::Io, .0))]
    Io(String),
    /// The host could not create, open or adjust the data dir, its agents
    /// directory or an entry file's mode (`path` says which).
    #[error("cannot use {}", path.display())]
    Directory {
        /// The path concerned.
        path: PathBuf,
        /// What the OS said.
        #[source]
        source: std::io::Error,
    },
    /// The agents directory is not safe to use: a symlink, not a directory,
    /// owned by another user, holding names other users could have changed
    /// (each named in `reason`), or replaced while it was being adopted.
    #[error("refusing agents directory {}: {reason}", path.display())]
    InsecureDirectory {
        /// The agents directory.
        path: PathBuf,
        /// Why it was refused, and what to do.
        reason: String,
    },
    /// The registry's store (etcd) could not be reached within the call's
    /// deadline, or refused a request: the message names the endpoints, the
    /// request and why.
    #[error("{0}")]
    Unavailable(String),
    /// A call ran longer than [`Options::call_timeout`] and was stopped.
    #[error("registry call exceeded its time limit of {0:?}")]
    Timeout(Duration),
    /// A call tried to use more memory than [`Options::memory_limit`].
    #[error("registry call exceeded its memory limit of {0} bytes")]
    MemoryLimit(usize),
    /// The registry component could not be set up: the engine, loading or
    /// compiling the component, linking it, or starting an instance of it.
    /// Not the caller's fault: a build, configuration or resource problem.
    #[error("setting up the registry component: {step}")]
    Setup {
        /// What was being done.
        step: &'static str,
        /// What wasmtime said.
        #[source]
        source: WasmtimeError,
    },
    /// The registry component trapped (a bug in the component, or a custom
    /// component misbehaving). The instance was discarded; the registry
    /// stays usable.
    #[error("the registry component trapped")]
    Trap(#[source] WasmtimeError),
    /// The OS refused a thread the host needs (the deadline ticker or the
    /// heartbeat driver).
    #[error("starting the {thread} thread")]
    Thread {
        /// Which thread.
        thread: &'static str,
        /// What the OS said.
        #[source]
        source: std::sync::Arc<std::io::Error>,
    },
}

impl Error {
    /// `Error::Directory` for `path`.
    pub(crate) fn directory(path: &std::path::Path, source: std::io::Error) -> Error {
        Error::Directory {
            path: path.to_path_buf(),
            source,
        }
    }

    /// This error and each of its causes, joined by ": ", for a log line or
    /// a message to a person. (Its `Display` shows this error alone; its
    /// causes follow through [`std::error::Error::source`].)
    pub fn with_causes(&self) -> String {
        agentmux_registry_core::cli::with_causes(self)
    }
}

/// A failure reported by wasmtime, the cause of [`Error::Setup`] and
/// [`Error::Trap`]. Displays wasmtime's message; its own causes follow
/// through [`std::error::Error::source`]. Cheap to clone.
#[derive(Clone)]
pub struct WasmtimeError(std::sync::Arc<wasmtime::Error>);

impl From<wasmtime::Error> for WasmtimeError {
    fn from(e: wasmtime::Error) -> Self {
        WasmtimeError(std::sync::Arc::new(e))
    }
}

impl std::fmt::Display for WasmtimeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Display::fmt(&**self.0, f)
    }
}

impl std::fmt::Debug for WasmtimeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(&self.0, f)
    }
}

impl std::error::Error for WasmtimeError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        (**self.0).source()
    }
}

/// Hooks for tests that race the host's handling of the agents directory.
/// Not part of the API.
#[doc(hidden)]
pub mod test_hooks {
    pub use crate::agents_dir::{on_adoption_step, AdoptionHook, AdoptionStep};
}

/// agentmux-srv's data dir: `$AGENTMUX_DATA_HOME` when set and non-empty,
/// else `~/.agentmux`, where `~` is `$HOME` (on Windows, when `HOME` is not
/// set, `%USERPROFILE%`). `None` when neither is known.
pub fn default_data_dir() -> Option<PathBuf> {
    let non_empty = |name: &str| std::env::var_os(name).filter(|value| !value.is_empty());
    if let Some(dir) = non_empty("AGENTMUX_DATA_HOME") {
        return Some(PathBuf::from(dir));
    }
    Some(home_dir()?.join(".agentmux"))
}

/// `$HOME`, or on Windows without it `%USERPROFILE%`.
fn home_dir() -> Option<PathBuf> {
    let non_empty = |name: &str| std::env::var_os(name).filter(|value| !value.is_empty());
    let home = non_empty("HOME").or_else(|| {
        if cfg!(windows) {
            non_empty("USERPROFILE")
        } else {
            None
        }
    })?;
    Some(PathBuf::from(home))
}

/// agentmux-srv's host-wide shared registry root:
/// `~/.agentmux/shared/agents/reactive` (`~` as for [`default_data_dir`]:
/// `$HOME`, or on Windows without it `%USERPROFILE%`). The same for every
/// channel and data dir of the host's user, so `$AGENTMUX_DATA_HOME` does not
/// move it. `None` when no home is known.
pub fn shared_root() -> Option<PathBuf> {
    Some(
        home_dir()?
            .join(".agentmux")
            .join("shared")
            .join("agents")
            .join("reactive"),
    )
}

/// The registry component this crate runs, as a WebAssembly component binary.
/// It exports `agentmux:registry/registry@0.3.0` (and `wasi:cli/run` for
/// command runners) and imports only WASI.
pub fn component_bytes() -> &'static [u8] {
    runtime::COMPONENT
}

/// The WIT contract, `wit/registry.wit` (package `agentmux:registry@0.3.0`).
pub const WIT: &str = include_str!("../wit/registry.wit");

/// `wit/deps/cli/run.wit`: the one `wasi:cli` interface the WIT package uses.
pub const WIT_CLI_RUN: &str = include_str!("../wit/deps/cli/run.wit");

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
