//! The function-style API of agentmux-srv's original in-process registry
//! module, so its call sites compile unchanged against this crate:
//! replace `use crate::backend::reactive::registry` with
//! `use agentmux_registry::compat as registry`.
//!
//! Like the original, these functions return nothing on failure (a lookup
//! returns `None`); unlike it, every failure is reported through
//! `tracing::error!`, on every call, instead of vanishing (a registry that
//! cannot be opened, e.g. a refused agents directory, is retried and
//! reported again by each call). They block the calling thread for the
//! duration of their component calls (a sweep makes one per batch of names),
//! and may be called from async handlers.
//! Use [`crate::Registry`] for errors you can act on.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::blocking::Registry;

/// One entry, with exactly the public fields of the original module.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentEntry {
    /// The agent's id.
    pub agent_id: String,
    /// Local HTTP URL of the owning instance (e.g. `http://127.0.0.1:PORT`).
    pub local_url: String,
    /// The block the agent runs in.
    pub block_id: String,
    /// OS process id of the owning agentmux-srv process.
    pub pid: u32,
    /// Unix milliseconds of the last update.
    pub updated_at: u64,
    /// Per-launch auth key of the owning instance (empty if unknown).
    #[serde(default)]
    pub auth_key: String,
}

// The original module's record, kept exactly (public fields, no optional
// keys) so that code constructing or matching it compiles unchanged.
impl From<crate::AgentEntry> for AgentEntry {
    fn from(e: crate::AgentEntry) -> Self {
        AgentEntry {
            agent_id: e.agent_id,
            local_url: e.local_url,
            block_id: e.block_id,
            pid: e.pid,
            updated_at: e.updated_at,
            auth_key: e.auth_key,
        }
    }
}

static LOCAL_AUTH_KEY: OnceLock<String> = OnceLock::new();

/// Sets this process's auth key, stored in every entry [`write()`] makes.
/// The first call wins; later calls are ignored.
pub fn init_local_auth_key(key: impl Into<String>) {
    let _ = LOCAL_AUTH_KEY.set(key.into());
}

fn local_auth_key() -> &'static str {
    LOCAL_AUTH_KEY.get().map(String::as_str).unwrap_or("")
}

/// The registry of `data_dir`, opened once per process and data dir.
fn registry(data_dir: &Path) -> Option<Registry> {
    static OPEN: OnceLock<Mutex<HashMap<PathBuf, Registry>>> = OnceLock::new();
    let mut open = OPEN
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    if let Some(registry) = open.get(data_dir) {
        return Some(registry.clone());
    }
    match Registry::open(data_dir) {
        Ok(registry) => {
            open.insert(data_dir.to_path_buf(), registry.clone());
            Some(registry)
        }
        Err(e) => {
            tracing::error!(data_dir = %data_dir.display(), "agent registry unavailable: {}", e.with_causes());
            None
        }
    }
}

fn log_error<T>(op: &str, agent_id: &str, result: Result<T, crate::Error>) -> Option<T> {
    result
        .map_err(|e| tracing::error!(agent_id, "agent registry {op} failed: {}", e.with_causes()))
        .ok()
}

/// Creates or replaces the entry of `agent_id`, owned by this process (its pid
/// and the key given to [`init_local_auth_key`]).
pub fn write(data_dir: &Path, agent_id: &str, local_url: &str, block_id: &str) {
    if let Some(registry) = registry(data_dir) {
        let result = registry.write(crate::EntryFields {
            agent_id: agent_id.into(),
            local_url: local_url.into(),
            block_id: block_id.into(),
            pid: std::process::id(),
            auth_key: local_auth_key().into(),
            ..crate::EntryFields::default()
        });
        log_error("write", agent_id, result);
    }
}

/// Removes the entry of `agent_id`, if any.
pub fn remove(data_dir: &Path, agent_id: &str) {
    if let Some(registry) = registry(data_dir) {
        log_error("remove", agent_id, registry.remove(agent_id));
    }
}

/// The entry of `agent_id`; `None` when missing, malformed, or on error.
pub fn lookup(data_dir: &Path, agent_id: &str) -> Option<AgentEntry> {
    let registry = registry(data_dir)?;
    log_error("lookup", agent_id, registry.lookup(agent_id))
        .flatten()
        .map(AgentEntry::from)
}

/// Removes entries older than `max_age_ms`, and malformed ones.
pub fn cleanup_stale(data_dir: &Path, max_age_ms: u64) {
    if let Some(registry) = registry(data_dir) {
        let result = registry.cleanup_stale(Duration::from_millis(max_age_ms));
        log_error("cleanup", "*", result);
    }
}

#[cfg(all(test, unix))]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    /// Issue: a refused agents directory made every call do nothing, with a
    /// warning at most; each call now logs the reason at error level.
    #[test]
    fn every_call_on_a_refused_agents_dir_logs_why_at_error_level() {
        let tmp = tempfile::tempdir().unwrap();
        let agents = tmp.path().join("agents");
        std::fs::create_dir(&agents).unwrap();
        let open = agents.join("open.json");
        std::fs::write(&open, "{}").unwrap();
        std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o666)).unwrap();
        std::fs::set_permissions(&agents, std::fs::Permissions::from_mode(0o777)).unwrap();

        let ((), events) = crate::test_log::capture(|| {
            for _ in 0..2 {
                write(tmp.path(), "a1", "http://127.0.0.1:1", "b1");
                assert_eq!(lookup(tmp.path(), "a1"), None);
            }
        });
        let errors: Vec<&String> = events
            .iter()
            .filter(|(level, _)| *level == tracing::Level::ERROR)
            .map(|(_, text)| text)
            .collect();
        assert_eq!(errors.len(), 4, "one per call: {events:?}");
        for text in errors {
            assert!(
                text.contains("agent registry unavailable")
                    && text.contains("\"open.json\" (writable by others)"),
                "{text}"
            );
        }
    }
}
