//! [`Registration`]: an agent's entry for as long as the guard lives.

use std::sync::mpsc::{self, RecvTimeoutError};
use std::thread::JoinHandle;
use std::time::Duration;

use crate::blocking::block_on;
use crate::{AgentEntry, Error, Registry};

/// Keeps one agent registered: writes its entry, rewrites it every heartbeat
/// interval so its `updated_at` stays fresh (which makes a short sweep age
/// safe), and when dropped or [unregistered](Registration::unregister) removes
/// the entry only if it is still this registration's (compare-and-remove by
/// pid and auth key), never a successor's under the same id.
///
/// The heartbeat runs on a thread of its own, so the guard works inside any
/// tokio runtime or none. A heartbeat that finds the entry gone or owned by
/// someone else stops instead of taking it back. Sweep with a maximum age of
/// at least three heartbeat intervals.
pub struct Registration {
    registry: Registry,
    entry: AgentEntry,
    /// False once [`Registration::unregister`] has removed the entry.
    registered: bool,
    stop: Option<mpsc::Sender<()>>,
    heartbeat: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for Registration {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registration")
            .field("agent_id", &self.entry.agent_id)
            .finish_non_exhaustive()
    }
}

impl Registration {
    /// Registers `agent_id` as owned by this process (its pid and
    /// `auth_key`), refreshing the entry every `heartbeat`.
    pub async fn register(
        registry: &Registry,
        agent_id: &str,
        local_url: &str,
        block_id: &str,
        auth_key: &str,
        heartbeat: Duration,
    ) -> Result<Registration, Error> {
        let pid = std::process::id();
        let entry = registry
            .write(agent_id, local_url, block_id, pid, auth_key)
            .await?;
        let (stop, stopped) = mpsc::channel::<()>();
        let beat_registry = registry.clone();
        let beat_entry = entry.clone();
        let heartbeat = std::thread::Builder::new()
            .name(format!("agentmux-registry-heartbeat-{agent_id}"))
            .spawn(move || loop {
                match stopped.recv_timeout(heartbeat) {
                    Err(RecvTimeoutError::Timeout) => {
                        if !block_on(refresh(&beat_registry, &beat_entry)) {
                            return;
                        }
                    }
                    // Stopped, or the guard is gone.
                    _ => return,
                }
            })
            .map_err(|e| Error::Component(format!("starting the heartbeat thread: {e}")))?;
        Ok(Registration {
            registry: registry.clone(),
            entry,
            registered: true,
            stop: Some(stop),
            heartbeat: Some(heartbeat),
        })
    }

    /// The entry as first written.
    pub fn entry(&self) -> &AgentEntry {
        &self.entry
    }

    /// Stops the heartbeat and removes the entry if it is still this
    /// registration's; true when it was removed.
    pub async fn unregister(mut self) -> Result<bool, Error> {
        self.stop_heartbeat();
        let removed = self
            .registry
            .remove_owned(&self.entry.agent_id, self.entry.pid, &self.entry.auth_key)
            .await;
        // Done: Drop must not remove again.
        self.registered = false;
        removed
    }

    fn stop_heartbeat(&mut self) {
        drop(self.stop.take());
        if let Some(thread) = self.heartbeat.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.stop_heartbeat();
        if self.registered {
            let result = block_on(self.registry.remove_owned(
                &self.entry.agent_id,
                self.entry.pid,
                &self.entry.auth_key,
            ));
            if let Err(e) = result {
                tracing::warn!(agent_id = %self.entry.agent_id, "removing the registration failed: {e}");
            }
        }
    }
}

/// Rewrites `mine` if the entry is still mine; false when it no longer is
/// (removed, or re-registered by someone else), which ends the heartbeat.
async fn refresh(registry: &Registry, mine: &AgentEntry) -> bool {
    match registry.lookup(&mine.agent_id).await {
        Ok(Some(current)) if current.pid == mine.pid && current.auth_key == mine.auth_key => {
            let written = registry
                .write(
                    &mine.agent_id,
                    &current.local_url,
                    &current.block_id,
                    mine.pid,
                    &mine.auth_key,
                )
                .await;
            if let Err(e) = &written {
                tracing::warn!(agent_id = %mine.agent_id, "heartbeat failed: {e}");
            }
            true
        }
        Ok(_) => false,
        // A passing failure: try again next beat.
        Err(e) => {
            tracing::warn!(agent_id = %mine.agent_id, "heartbeat lookup failed: {e}");
            true
        }
    }
}
