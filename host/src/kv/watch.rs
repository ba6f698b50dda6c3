//! A watch of an etcd registry: etcd's own watch of the prefix, from a
//! revision, each event judged by the component (is it an entry at its own
//! key?) and handed over as a [`Change`]. A watch that fails (the cluster
//! out of reach) resumes from the last revision seen, so nothing is lost;
//! when etcd no longer keeps that history (compacted), or an event could
//! not be judged (the component's call failed), the full current set
//! follows as a [`Change::Resync`].

use std::sync::Arc;
use std::time::Duration;

use agentmux_registry_core::kv::{layout_prefix, Layout};
use tokio::sync::mpsc::Sender;

use super::store::Watched;
use super::Backend;
use crate::watch::{Change, Notifications, Start, WatchStream};
use crate::Error;

/// Changes handed over before the watch waits for its consumer.
const BUFFER: usize = 1024;

/// The longest pause between attempts to resume a failed watch.
const MAX_PAUSE: Duration = Duration::from_secs(2);

impl Backend {
    /// The registry's changes (see [`crate::watch`]).
    pub(crate) async fn watch(self: &Arc<Self>, start: Start) -> Result<WatchStream, Error> {
        let (tx, rx) = tokio::sync::mpsc::channel(BUFFER);
        let backend = self.clone();
        // The revision the changes start after, and the entries before them.
        let opened = self
            .spawn(async move {
                let deadline = backend.deadline();
                let revision = backend
                    .store
                    .revision(deadline)
                    .await
                    .map_err(Error::Unavailable)?;
                let current = match start {
                    Start::Current => backend.list_at(Some(revision)).await?,
                    Start::Now => Vec::new(),
                };
                Ok((revision, current))
            })
            .await?;
        let backend = self.clone();
        self.runtime.handle().spawn(async move {
            let (revision, current) = opened;
            for entry in current {
                if tx.send(Ok(Change::Put(entry))).await.is_err() {
                    return;
                }
            }
            tokio::select! {
                () = follow(&backend, revision, &tx) => {}
                () = tx.closed() => {}
            }
        });
        Ok(WatchStream::from_changes(rx, Notifications::Exact))
    }
}

/// Follows the changes after `revision` until the consumer goes.
async fn follow(backend: &Backend, mut revision: i64, tx: &Sender<Result<Change, Error>>) {
    let layout = backend.layout;
    let mut pause = Duration::from_millis(50);
    // The changes since `revision` are not all known: the next step is the
    // whole current set.
    let mut resync_due = false;
    loop {
        let failure = if resync_due {
            match resync(backend).await {
                Ok((now, entries)) => {
                    revision = now;
                    resync_due = false;
                    if tx.send(Ok(Change::Resync(entries))).await.is_err() {
                        return;
                    }
                    continue;
                }
                Err(e) => e.to_string(),
            }
        } else {
            match backend
                .store
                .watch(layout_prefix(layout), revision + 1)
                .await
            {
                Err(e) => e,
                Ok(mut watch) => loop {
                    match watch.next().await {
                        Err(e) => break e,
                        // History from `revision` is gone.
                        Ok(Watched::Compacted) => {
                            resync_due = true;
                            break String::new();
                        }
                        Ok(Watched::Events(events, seen)) => {
                            pause = Duration::from_millis(50);
                            for event in events {
                                match change_of(backend, layout, event).await {
                                    Ok(Some(change)) => {
                                        if tx.send(Ok(change)).await.is_err() {
                                            return;
                                        }
                                    }
                                    Ok(None) => {}
                                    // A change that cannot be read is never
                                    // skipped: the whole set follows.
                                    Err(e) => {
                                        tracing::warn!("registry watch: reading a change: {e}");
                                        resync_due = true;
                                    }
                                }
                            }
                            if let Some(seen) = seen {
                                revision = revision.max(seen);
                            }
                            if resync_due {
                                break String::new();
                            }
                        }
                    }
                },
            }
        };
        if !failure.is_empty() {
            tracing::debug!("registry watch: {failure}; resuming from revision {revision}");
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(MAX_PAUSE);
        }
    }
}

/// The current revision and every entry at it.
async fn resync(backend: &Backend) -> Result<(i64, Vec<crate::AgentEntry>), Error> {
    let revision = backend
        .store
        .revision(backend.deadline())
        .await
        .map_err(Error::Unavailable)?;
    Ok((revision, backend.list_at(Some(revision)).await?))
}

/// The change one event makes, if it concerns an entry.
async fn change_of(
    backend: &Backend,
    layout: Layout,
    event: super::store::Event,
) -> Result<Option<Change>, Error> {
    if let Some(value) = event.value {
        if let Some(entry) = backend.entry_at(event.key.clone(), value).await? {
            return Ok(Some(Change::Put(entry)));
        }
    }
    // A deletion, or a value that is no entry: the entry it replaced, if
    // any, is gone.
    let Some(previous) = event.previous else {
        return Ok(None);
    };
    Ok(backend
        .entry_at(event.key, previous)
        .await?
        .map(|gone| Change::Removed {
            agent_id: gone.agent_id,
            channel: match layout {
                Layout::Shared => gone.channel,
                Layout::PerChannel => String::new(),
            },
        }))
}
