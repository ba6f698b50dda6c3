//! Discovery from the registry's change feed: what every instance has
//! registered, kept current by watching both registries (no polling), and
//! served as a snapshot (`GET /agentmux/registry/discovery`) and as
//! server-sent events (`GET /agentmux/registry/events`).
//!
//! Auth keys are never served: a UI has no use for another instance's
//! credential.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use agentmux_registry::watch::{Change, Start};
use agentmux_registry::{AgentEntry, Registry};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Value};
use tokio::sync::broadcast;

/// Events a slow subscriber may fall behind by before it is told to resync.
const EVENTS_BUFFERED: usize = 1024;

/// Wait before following a registry again after its watch failed.
const REWATCH_AFTER: Duration = Duration::from_secs(1);

/// Which registry an entry is in, and its id and channel keys.
type Key = (&'static str, String, String);

pub struct Discovery {
    /// Every entry of both registries, as the watches delivered them.
    entries: Mutex<BTreeMap<Key, AgentEntry>>,
    /// Each change, as the JSON of an event.
    events: broadcast::Sender<Value>,
}

/// An entry as served: every stored key but the auth key, with its health.
fn served(registry: &'static str, entry: &AgentEntry) -> Value {
    let health = agentmux_registry::liveness::health(entry);
    let mut stored = serde_json::to_value(entry).unwrap_or(Value::Null);
    if let Some(object) = stored.as_object_mut() {
        object.remove("auth_key");
    }
    json!({ "registry": registry, "health": health.as_str(), "entry": stored })
}

fn key(registry: &'static str, agent_id: &str, channel: &str) -> Key {
    (registry, agent_id.to_lowercase(), channel.to_lowercase())
}

impl Discovery {
    /// Starts following `per_channel` and `shared`; their current entries
    /// are known before this returns.
    pub async fn start(per_channel: Registry, shared: Registry) -> Result<Arc<Discovery>, String> {
        let (events, _) = broadcast::channel(EVENTS_BUFFERED);
        let discovery = Arc::new(Discovery {
            entries: Mutex::new(BTreeMap::new()),
            events,
        });
        for (name, registry) in [("per-channel", per_channel), ("shared", shared)] {
            let stream = discovery
                .watch(name, &registry)
                .await
                .map_err(|e| format!("cannot watch the {name} registry: {}", e.with_causes()))?;
            let discovery = discovery.clone();
            tokio::spawn(async move { discovery.follow(name, registry, stream).await });
        }
        Ok(discovery)
    }

    fn entries(&self) -> std::sync::MutexGuard<'_, BTreeMap<Key, AgentEntry>> {
        self.entries.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Starts watching `registry`, then takes its full set as a resync:
    /// what changes after the watch started comes as changes, so nothing
    /// falls in between.
    async fn watch(
        &self,
        name: &'static str,
        registry: &Registry,
    ) -> Result<agentmux_registry::watch::WatchStream, agentmux_registry::Error> {
        let stream = registry.watch(Start::Now).await?;
        let all = registry.list().await?;
        self.apply(name, Change::Resync(all));
        Ok(stream)
    }

    /// Applies `registry`'s changes for as long as the server runs; a watch
    /// that fails is started again, with the full set as a resync.
    async fn follow(
        self: Arc<Self>,
        name: &'static str,
        registry: Registry,
        mut stream: agentmux_registry::watch::WatchStream,
    ) {
        loop {
            while let Some(change) = stream.next().await {
                match change {
                    Ok(change) => self.apply(name, change),
                    Err(e) => eprintln!(
                        "agentmux-mini: watching the {name} registry: {}",
                        e.with_causes()
                    ),
                }
            }
            tokio::time::sleep(REWATCH_AFTER).await;
            match self.watch(name, &registry).await {
                Ok(again) => stream = again,
                Err(e) => eprintln!(
                    "agentmux-mini: watching the {name} registry: {}",
                    e.with_causes()
                ),
            }
        }
    }

    /// Applies one change and tells the subscribers, under the entries'
    /// lock: a subscriber's snapshot and its events never overlap or miss.
    fn apply(&self, name: &'static str, change: Change) {
        let mut entries = self.entries();
        let event = match change {
            Change::Put(entry) => {
                let event = json!({ "event": "put", "change": served(name, &entry) });
                entries.insert(key(name, &entry.agent_id, &entry.channel), entry);
                event
            }
            Change::Removed { agent_id, channel } => {
                entries.remove(&key(name, &agent_id, &channel));
                json!({ "event": "removed", "registry": name, "agent_id": agent_id, "channel": channel })
            }
            Change::Resync(all) => {
                entries.retain(|(registry, _, _), _| *registry != name);
                for entry in all {
                    entries.insert(key(name, &entry.agent_id, &entry.channel), entry);
                }
                json!({ "event": "resync", "registry": name, "agents": snapshot(&entries, Some(name)) })
            }
        };
        // No subscriber is no error.
        let _ = self.events.send(event);
    }
}

/// Every entry (of `registry` only, when given), as served.
fn snapshot(entries: &BTreeMap<Key, AgentEntry>, registry: Option<&str>) -> Vec<Value> {
    entries
        .iter()
        .filter(|((r, _, _), _)| registry.is_none_or(|name| *r == name))
        .map(|((r, _, _), entry)| served(r, entry))
        .collect()
}

/// `GET /agentmux/registry/discovery`: every agent of both registries.
pub fn discovery(discovery: &Discovery) -> Response {
    Json(json!({ "agents": snapshot(&discovery.entries(), None) })).into_response()
}

/// `GET /agentmux/registry/events`: a `snapshot` event with every agent,
/// then one event per change (`put`, `removed`, `resync`). A subscriber that
/// falls too far behind gets a new `snapshot`.
pub fn events(discovery: Arc<Discovery>) -> Response {
    let (first, receiver) = {
        let entries = discovery.entries();
        let receiver = discovery.events.subscribe();
        (
            json!({ "event": "snapshot", "agents": snapshot(&entries, None) }),
            receiver,
        )
    };
    let state = (Some(first), receiver, discovery);
    let stream =
        futures_util::stream::unfold(state, |(first, mut receiver, discovery)| async move {
            if let Some(first) = first {
                return Some((sse(first), (None, receiver, discovery)));
            }
            let event = match receiver.recv().await {
                Ok(event) => event,
                Err(broadcast::error::RecvError::Lagged(_)) => {
                    let entries = discovery.entries();
                    receiver = receiver.resubscribe();
                    json!({ "event": "snapshot", "agents": snapshot(&entries, None) })
                }
                Err(broadcast::error::RecvError::Closed) => return None,
            };
            Some((sse(event), (None, receiver, discovery)))
        });
    Sse::new(stream)
        .keep_alive(KeepAlive::default())
        .into_response()
}

fn sse(event: Value) -> Result<Event, Infallible> {
    let name = event["event"].as_str().unwrap_or("change").to_owned();
    Ok(Event::default().event(name).data(event.to_string()))
}
