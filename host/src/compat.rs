//! The function-style API of agentmux-srv's in-process registry module as
//! its 0.55 line has it (the per-channel registry with registration nonces,
//! the host-wide shared registry, the forward-failure eviction rule), so its
//! call sites compile unchanged against this crate: replace the module's body
//! with `pub use agentmux_registry::compat::*;`. Every public function,
//! constant and [`AgentEntry`] field of that module is here, with its
//! signature and meaning.
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

/// After a failed forward, an entry younger than this is kept unless its
/// owner is provably dead (see [`should_evict_on_forward_failure`]):
/// agentmux-srv's grace, three of its 20 s heartbeats.
pub const FORWARD_FAILURE_GRACE_MS: u64 = 60_000;

/// One entry, with exactly the public fields of agentmux-srv's module.
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
    /// The channel that wrote the entry: empty in the per-channel registry.
    #[serde(default)]
    pub channel: String,
    /// The registration that wrote the entry; 0 when not recorded.
    #[serde(default)]
    pub registration_nonce: u64,
}

// The module's record, kept exactly (public fields, no other keys) so that
// code constructing or matching it compiles unchanged.
impl From<crate::AgentEntry> for AgentEntry {
    fn from(e: crate::AgentEntry) -> Self {
        AgentEntry {
            agent_id: e.agent_id,
            local_url: e.local_url,
            block_id: e.block_id,
            pid: e.pid,
            updated_at: e.updated_at,
            auth_key: e.auth_key,
            channel: e.channel,
            registration_nonce: e.registration_nonce,
        }
    }
}

impl From<&AgentEntry> for crate::AgentEntry {
    fn from(e: &AgentEntry) -> Self {
        crate::AgentEntry {
            agent_id: e.agent_id.clone(),
            local_url: e.local_url.clone(),
            block_id: e.block_id.clone(),
            pid: e.pid,
            updated_at: e.updated_at,
            auth_key: e.auth_key.clone(),
            channel: e.channel.clone(),
            registration_nonce: e.registration_nonce,
            ..crate::AgentEntry::default()
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
    opened(data_dir, false)
}

/// The shared registry rooted at `shared_dir`, opened once per process.
fn shared_registry(shared_dir: &Path) -> Option<Registry> {
    opened(shared_dir, true)
}

fn opened(dir: &Path, shared: bool) -> Option<Registry> {
    static OPEN: OnceLock<Mutex<HashMap<(PathBuf, bool), Registry>>> = OnceLock::new();
    let mut open = OPEN
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    let key = (dir.to_path_buf(), shared);
    if let Some(registry) = open.get(&key) {
        return Some(registry.clone());
    }
    let result = if shared {
        Registry::open_shared(dir)
    } else {
        Registry::open(dir)
    };
    match result {
        Ok(registry) => {
            open.insert(key, registry.clone());
            Some(registry)
        }
        Err(e) => {
            tracing::error!(dir = %dir.display(), "agent registry unavailable: {}", e.with_causes());
            None
        }
    }
}

fn log_error<T>(op: &str, agent_id: &str, result: Result<T, crate::Error>) -> Option<T> {
    result
        .map_err(|e| tracing::error!(agent_id, "agent registry {op} failed: {}", e.with_causes()))
        .ok()
}

/// The fields of an entry this process owns (its pid and the key given to
/// [`init_local_auth_key`]).
fn owned(
    agent_id: &str,
    local_url: &str,
    block_id: &str,
    channel: &str,
    nonce: u64,
) -> crate::EntryFields {
    crate::EntryFields {
        agent_id: agent_id.into(),
        local_url: local_url.into(),
        block_id: block_id.into(),
        pid: std::process::id(),
        auth_key: local_auth_key().into(),
        channel: channel.into(),
        registration_nonce: nonce,
        ..crate::EntryFields::default()
    }
}

/// Creates or replaces the entry of `agent_id`, owned by this process (its pid
/// and the key given to [`init_local_auth_key`]), with no nonce.
pub fn write(data_dir: &Path, agent_id: &str, local_url: &str, block_id: &str) {
    write_with_nonce(data_dir, agent_id, local_url, block_id, 0);
}

/// [`write()`], recording the registration `nonce` (0 for none).
pub fn write_with_nonce(
    data_dir: &Path,
    agent_id: &str,
    local_url: &str,
    block_id: &str,
    nonce: u64,
) {
    if let Some(registry) = registry(data_dir) {
        let result = registry.write(owned(agent_id, local_url, block_id, "", nonce));
        log_error("write", agent_id, result);
    }
}

/// Removes the entry of `agent_id`, if any.
pub fn remove(data_dir: &Path, agent_id: &str) {
    if let Some(registry) = registry(data_dir) {
        log_error("remove", agent_id, registry.remove(agent_id));
    }
}

/// Removes the entry of `agent_id` only while its `registration_nonce` is
/// `nonce`; a `nonce` of 0 never removes anything (a stale entry is left to
/// the sweep rather than risk removing a live registration). The check and
/// the removal are one step under the entry's claim, so a registration
/// written meanwhile, by any process, stays.
pub fn remove_if_nonce(data_dir: &Path, agent_id: &str, nonce: u64) {
    if nonce == 0 {
        return;
    }
    if let Some(registry) = registry(data_dir) {
        remove_matching(&registry, agent_id, nonce, None);
    }
}

/// Removes `agent_id`'s entries whose nonce is `nonce` (not 0), in `channel`
/// when one is given, each by its owner (pid, key and nonce) rather than as
/// the exact entry read: a heartbeat that rewrote an entry meanwhile (same
/// registration) does not keep it.
fn remove_matching(registry: &Registry, agent_id: &str, nonce: u64, channel: Option<&str>) {
    let Some(entries) = log_error("lookup", agent_id, registry.lookup_all(agent_id)) else {
        return;
    };
    let chosen = |e: &&crate::AgentEntry| {
        e.registration_nonce == nonce
            && channel.is_none_or(|c| agentmux_registry_core::name::same_id(&e.channel, c))
    };
    for entry in entries.iter().filter(chosen) {
        let owner = crate::Owner::of(entry);
        log_error("remove", agent_id, registry.remove_owned(agent_id, &owner));
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

/// The channel this process runs as: `$AGENTMUX_CHANNEL` when set and not
/// empty, else `stable`.
pub fn channel_from_env() -> String {
    std::env::var("AGENTMUX_CHANNEL")
        .ok()
        .filter(|c| !c.is_empty())
        .unwrap_or_else(|| "stable".into())
}

/// The shared root the `*_from_env` functions use: agentmux-srv's
/// `~/.agentmux/shared/agents/reactive` (see [`crate::shared_root`]).
fn shared_dir_from_env() -> Option<PathBuf> {
    let dir = crate::shared_root();
    if dir.is_none() {
        tracing::error!("agent registry unavailable: no home directory for the shared registry");
    }
    dir
}

/// Creates or replaces `agent_id`'s entry in `channel` of the shared
/// registry rooted at `shared_dir`, owned by this process, with no nonce.
pub fn write_shared(
    shared_dir: &Path,
    agent_id: &str,
    local_url: &str,
    block_id: &str,
    channel: &str,
) {
    write_shared_with_nonce(shared_dir, agent_id, local_url, block_id, channel, 0);
}

/// [`write_shared`], recording the registration `nonce` (0 for none).
pub fn write_shared_with_nonce(
    shared_dir: &Path,
    agent_id: &str,
    local_url: &str,
    block_id: &str,
    channel: &str,
    nonce: u64,
) {
    if let Some(registry) = shared_registry(shared_dir) {
        let result = registry.write(owned(agent_id, local_url, block_id, channel, nonce));
        log_error("write", agent_id, result);
    }
}

/// Removes `agent_id`'s entry in `channel` of the shared registry (its
/// directory too once empty).
pub fn remove_shared(shared_dir: &Path, agent_id: &str, channel: &str) {
    if let Some(registry) = shared_registry(shared_dir) {
        log_error(
            "remove",
            agent_id,
            registry.remove_channel(agent_id, channel),
        );
    }
}

/// Removes `agent_id`'s entry in `channel` of the shared registry only while
/// its nonce is `nonce`; 0 never removes anything (see [`remove_if_nonce`]).
pub fn remove_shared_if_nonce(shared_dir: &Path, agent_id: &str, channel: &str, nonce: u64) {
    if nonce == 0 {
        return;
    }
    if let Some(registry) = shared_registry(shared_dir) {
        remove_matching(&registry, agent_id, nonce, Some(channel));
    }
}

/// [`write_shared`] in the shared root, in this process's channel
/// ([`channel_from_env`]).
pub fn write_shared_from_env(agent_id: &str, local_url: &str, block_id: &str) {
    write_shared_with_nonce_from_env(agent_id, local_url, block_id, 0);
}

/// [`write_shared_with_nonce`] in the shared root, in this process's channel.
pub fn write_shared_with_nonce_from_env(
    agent_id: &str,
    local_url: &str,
    block_id: &str,
    nonce: u64,
) {
    if let Some(dir) = shared_dir_from_env() {
        write_shared_with_nonce(
            &dir,
            agent_id,
            local_url,
            block_id,
            &channel_from_env(),
            nonce,
        );
    }
}

/// [`remove_shared`] in the shared root, in this process's channel.
pub fn remove_shared_from_env(agent_id: &str) {
    if let Some(dir) = shared_dir_from_env() {
        remove_shared(&dir, agent_id, &channel_from_env());
    }
}

/// [`remove_shared_if_nonce`] in the shared root, in this process's channel.
pub fn remove_shared_if_nonce_from_env(agent_id: &str, nonce: u64) {
    if let Some(dir) = shared_dir_from_env() {
        remove_shared_if_nonce(&dir, agent_id, &channel_from_env(), nonce);
    }
}

/// Every channel's entry of `agent_id` in the shared registry, freshest
/// first, whatever their owners' liveness; empty on error.
pub fn lookup_all_shared(shared_dir: &Path, agent_id: &str) -> Vec<AgentEntry> {
    shared_registry(shared_dir)
        .and_then(|registry| log_error("lookup", agent_id, registry.lookup_all(agent_id)))
        .unwrap_or_default()
        .into_iter()
        .map(AgentEntry::from)
        .collect()
}

/// Every entry of every agent in the shared registry; empty on error.
pub fn list_all_shared(shared_dir: &Path) -> Vec<AgentEntry> {
    shared_registry(shared_dir)
        .and_then(|registry| log_error("list", "*", registry.list()))
        .unwrap_or_default()
        .into_iter()
        .map(AgentEntry::from)
        .collect()
}

/// Removes shared entries older than `max_age_ms` or whose owner is provably
/// dead (see [`crate::liveness`]), malformed ones, and agent directories
/// left empty.
pub fn cleanup_stale_shared(shared_dir: &Path, max_age_ms: u64) {
    if let Some(registry) = shared_registry(shared_dir) {
        log_error("cleanup", "*", registry.sweep_dead_owners());
        let result = registry.cleanup_stale(Duration::from_millis(max_age_ms));
        log_error("cleanup", "*", result);
    }
}

/// Whether to remove `entry` after a forward to it failed: its owner is
/// provably dead, or it is older than [`FORWARD_FAILURE_GRACE_MS`] (see
/// [`crate::liveness::should_evict_after_failed_forward`]).
pub fn should_evict_on_forward_failure(entry: &AgentEntry) -> bool {
    crate::liveness::should_evict_after_failed_forward(
        &crate::AgentEntry::from(entry),
        Duration::from_millis(FORWARD_FAILURE_GRACE_MS),
    )
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

/// Every function, constant and field of agentmux-srv's module, with its
/// signature: this fails to compile when one is missing or differs.
#[cfg(test)]
mod signatures {
    use std::path::Path;

    use super::*;

    #[test]
    fn every_call_site_of_todays_module_compiles() {
        init_local_auth_key(String::from("key"));
        init_local_auth_key("key");
        let _: fn(&Path, &str, &str, &str) = write;
        let _: fn(&Path, &str, &str, &str, u64) = write_with_nonce;
        let _: fn(&Path, &str) = remove;
        let _: fn(&Path, &str, u64) = remove_if_nonce;
        let _: fn(&Path, &str) -> Option<AgentEntry> = lookup;
        let _: fn(&Path, u64) = cleanup_stale;
        let _: fn(&Path, &str, &str, &str, &str) = write_shared;
        let _: fn(&Path, &str, &str, &str, &str, u64) = write_shared_with_nonce;
        let _: fn(&Path, &str, &str) = remove_shared;
        let _: fn(&Path, &str, &str, u64) = remove_shared_if_nonce;
        let _: fn(&str, &str, &str) = write_shared_from_env;
        let _: fn(&str, &str, &str, u64) = write_shared_with_nonce_from_env;
        let _: fn(&str) = remove_shared_from_env;
        let _: fn(&str, u64) = remove_shared_if_nonce_from_env;
        let _: fn(&Path, &str) -> Vec<AgentEntry> = lookup_all_shared;
        let _: fn(&Path) -> Vec<AgentEntry> = list_all_shared;
        let _: fn(&Path, u64) = cleanup_stale_shared;
        let _: fn(&AgentEntry) -> bool = should_evict_on_forward_failure;
        const _: u64 = FORWARD_FAILURE_GRACE_MS;
        let AgentEntry {
            agent_id: _,
            local_url: _,
            block_id: _,
            pid: _,
            updated_at: _,
            auth_key: _,
            channel: _,
            registration_nonce: _,
        } = AgentEntry {
            agent_id: String::new(),
            local_url: String::new(),
            block_id: String::new(),
            pid: 0u32,
            updated_at: 0u64,
            auth_key: String::new(),
            channel: String::new(),
            registration_nonce: 0u64,
        };
        assert_eq!(FORWARD_FAILURE_GRACE_MS, 60_000);
    }
}
