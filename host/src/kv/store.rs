//! The etcd client behind the `store` import: every request below the
//! registry's prefix, within a deadline, with its errors made readable.

use std::collections::HashSet;
use std::sync::Mutex;
use std::time::Duration;

use etcd_client::{
    Client, Compare, CompareOp, ConnectOptions, DeleteOptions, EventType, GetOptions, PutOptions,
    Txn, TxnOp, WatchOptions,
};
use tokio::time::Instant;

use agentmux_registry_core::kv::{Stored, MAX_RANGE};

/// A client of one etcd cluster, confined to one key prefix.
pub(crate) struct EtcdStore {
    client: Client,
    prefix: String,
    /// The endpoints, for messages.
    endpoints: String,
    /// Leases this host granted and has not revoked: the only ones a
    /// component may attach a key to.
    granted: Mutex<HashSet<i64>>,
}

/// One change a watch reported, below the prefix.
pub(crate) struct Event {
    pub(crate) key: String,
    /// The value written; `None` for a deletion.
    pub(crate) value: Option<Vec<u8>>,
    /// The value before (a deletion's, or the one a put replaced).
    pub(crate) previous: Option<Vec<u8>>,
}

/// What one watch response said.
pub(crate) enum Watched {
    /// Events, up to and including `revision`.
    Events(Vec<Event>, i64),
    /// The watch can not resume where it was: history was compacted.
    Compacted,
}

/// The first key after every key starting with `prefix` (etcd's range end
/// for a prefix).
fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    // A prefix of 0xff bytes only: no key can follow it. Never a registry
    // prefix (they are text).
    vec![0]
}

/// Text for an etcd error.
pub(crate) fn describe(e: &etcd_client::Error) -> String {
    match e {
        etcd_client::Error::GRpcStatus(status) => {
            // The gRPC code by name: the client does not re-export its type.
            let what = match format!("{:?}", status.code()).as_str() {
                "Unavailable" => "unavailable",
                "DeadlineExceeded" => "did not answer in time",
                "Unauthenticated" | "PermissionDenied" => "refused access",
                _ => "failed",
            };
            let mut text = format!("{what}: {}", status.message());
            // What lies beneath ("keep-alive timed out", "connection refused").
            let mut cause = std::error::Error::source(status);
            while let Some(c) = cause {
                let line = c.to_string();
                if !text.contains(&line) {
                    text.push_str(": ");
                    text.push_str(&line);
                }
                cause = c.source();
            }
            text
        }
        other => format!("failed: {other}"),
    }
}

impl EtcdStore {
    /// Connects (lazily: the first request reaches the cluster) to
    /// `endpoints`, confined to keys starting with `prefix`.
    pub(crate) async fn connect(
        endpoints: &[String],
        prefix: String,
        options: ConnectOptions,
    ) -> Result<EtcdStore, String> {
        let client = Client::connect(endpoints, Some(options))
            .await
            .map_err(|e| {
                format!(
                    "connecting to etcd at {}: {}",
                    endpoints.join(","),
                    describe(&e)
                )
            })?;
        Ok(EtcdStore {
            client,
            prefix,
            endpoints: endpoints.join(","),
            granted: Mutex::default(),
        })
    }

    pub(crate) fn prefix(&self) -> &str {
        &self.prefix
    }

    pub(crate) fn endpoints(&self) -> &str {
        &self.endpoints
    }

    fn full(&self, key: &str) -> Vec<u8> {
        format!("{}{key}", self.prefix).into_bytes()
    }

    /// `key` without the prefix; `None` for a key that is not text.
    fn strip(&self, key: &[u8]) -> Option<String> {
        let rest = key.strip_prefix(self.prefix.as_bytes())?;
        String::from_utf8(rest.to_vec()).ok()
    }

    fn error(&self, op: &str, key: &str, e: &etcd_client::Error) -> String {
        format!("etcd at {} {op} {key:?}: {}", self.endpoints, describe(e))
    }

    /// Runs `request` until `deadline`.
    async fn within<T>(
        &self,
        deadline: Instant,
        op: &str,
        key: &str,
        request: impl std::future::Future<Output = Result<T, etcd_client::Error>>,
    ) -> Result<T, String> {
        match tokio::time::timeout_at(deadline, request).await {
            Ok(Ok(out)) => Ok(out),
            Ok(Err(e)) => Err(self.error(op, key, &e)),
            Err(_) => Err(format!(
                "etcd at {} {op} {key:?}: no answer within the call's deadline",
                self.endpoints
            )),
        }
    }

    fn check_lease(&self, lease: Option<u64>) -> Result<Option<i64>, String> {
        let Some(lease) = lease else {
            return Ok(None);
        };
        let id = i64::try_from(lease).ok().filter(|id| {
            self.granted
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .contains(id)
        });
        id.map(Some)
            .ok_or_else(|| format!("lease {lease} was not granted by this host"))
    }

    pub(crate) async fn get(&self, key: &str, deadline: Instant) -> Result<Option<Stored>, String> {
        let mut kv = self.client.kv_client();
        let response = self
            .within(deadline, "get", key, kv.get(self.full(key), None))
            .await?;
        Ok(response.kvs().first().map(|found| Stored {
            key: key.to_owned(),
            value: found.value().to_vec(),
            revision: found.mod_revision() as u64,
        }))
    }

    pub(crate) async fn put(
        &self,
        key: &str,
        value: Vec<u8>,
        lease: Option<u64>,
        deadline: Instant,
    ) -> Result<(), String> {
        let options = self
            .check_lease(lease)?
            .map(|id| PutOptions::new().with_lease(id));
        let mut kv = self.client.kv_client();
        self.within(deadline, "put", key, kv.put(self.full(key), value, options))
            .await?;
        Ok(())
    }

    pub(crate) async fn put_if_revision(
        &self,
        key: &str,
        value: Vec<u8>,
        lease: Option<u64>,
        revision: u64,
        deadline: Instant,
    ) -> Result<bool, String> {
        let options = self
            .check_lease(lease)?
            .map(|id| PutOptions::new().with_lease(id));
        let full = self.full(key);
        let txn = Txn::new()
            .when([Compare::mod_revision(
                full.clone(),
                CompareOp::Equal,
                revision_arg(revision)?,
            )])
            .and_then([TxnOp::put(full, value, options)]);
        let mut kv = self.client.kv_client();
        let response = self
            .within(deadline, "put (if unchanged)", key, kv.txn(txn))
            .await?;
        Ok(response.succeeded())
    }

    pub(crate) async fn delete_if_revision(
        &self,
        key: &str,
        revision: u64,
        deadline: Instant,
    ) -> Result<bool, String> {
        if revision == 0 {
            return Ok(false);
        }
        let full = self.full(key);
        let txn = Txn::new()
            .when([Compare::mod_revision(
                full.clone(),
                CompareOp::Equal,
                revision_arg(revision)?,
            )])
            .and_then([TxnOp::delete(full, None::<DeleteOptions>)]);
        let mut kv = self.client.kv_client();
        let response = self
            .within(deadline, "delete (if unchanged)", key, kv.txn(txn))
            .await?;
        Ok(response.succeeded())
    }

    /// Keys starting with `prefix` after `after`, read at `at_revision`
    /// when given; and the revision they were read at.
    pub(crate) async fn range(
        &self,
        prefix: &str,
        after: Option<&str>,
        limit: u32,
        at_revision: Option<i64>,
        deadline: Instant,
    ) -> Result<(Vec<Stored>, i64), String> {
        let from = self.full(prefix);
        let end = prefix_end(&from);
        let start = match after {
            // The first key after `after`; never before the range's start.
            Some(after) => {
                let mut key = self.full(after);
                key.push(0);
                key.max(from)
            }
            None => from,
        };
        let mut options = GetOptions::new()
            .with_range(end)
            .with_limit(i64::from(limit.clamp(1, MAX_RANGE)));
        if let Some(revision) = at_revision {
            options = options.with_revision(revision);
        }
        let mut kv = self.client.kv_client();
        let mut response = self
            .within(deadline, "range", prefix, kv.get(start, Some(options)))
            .await?;
        let revision = response.take_header().map_or(0, |h| h.revision());
        let stored = response
            .kvs()
            .iter()
            .filter_map(|kv| {
                Some(Stored {
                    key: self.strip(kv.key())?,
                    value: kv.value().to_vec(),
                    revision: kv.mod_revision() as u64,
                })
            })
            .collect();
        Ok((stored, revision))
    }

    /// The cluster's current revision.
    pub(crate) async fn revision(&self, deadline: Instant) -> Result<i64, String> {
        let (_, revision) = self.range("agents/", None, 1, None, deadline).await?;
        Ok(revision)
    }

    /// A new lease of `ttl`.
    pub(crate) async fn grant(&self, ttl: Duration, deadline: Instant) -> Result<i64, String> {
        let seconds = i64::try_from(ttl.as_secs()).unwrap_or(i64::MAX);
        let mut lease = self.client.lease_client();
        let granted = self
            .within(deadline, "lease grant", "", lease.grant(seconds, None))
            .await?;
        self.granted
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(granted.id());
        Ok(granted.id())
    }

    /// Keeps lease `id` alive once; false when it has lapsed (or was
    /// revoked).
    pub(crate) async fn keep_alive(&self, id: i64, deadline: Instant) -> Result<bool, String> {
        let mut lease = self.client.lease_client();
        // Opening the stream sends one keep-alive and reads its answer: a
        // TTL of 0 comes back as this error.
        let alive = async {
            match lease.keep_alive(id).await {
                Ok(_) => Ok(true),
                Err(etcd_client::Error::LeaseKeepAliveError(_)) => Ok(false),
                Err(e) => Err(e),
            }
        };
        let alive = self.within(deadline, "lease keep-alive", "", alive).await?;
        if !alive {
            self.forget(id);
        }
        Ok(alive)
    }

    /// Revokes lease `id` (its keys go with it).
    pub(crate) async fn revoke(&self, id: i64, deadline: Instant) -> Result<(), String> {
        self.forget(id);
        let mut lease = self.client.lease_client();
        self.within(deadline, "lease revoke", "", lease.revoke(id))
            .await?;
        Ok(())
    }

    fn forget(&self, id: i64) {
        self.granted
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&id);
    }

    /// Watches every key starting with `prefix` from `revision` on.
    pub(crate) async fn watch(&self, prefix: &str, revision: i64) -> Result<EtcdWatch<'_>, String> {
        let from = self.full(prefix);
        let options = WatchOptions::new()
            .with_range(prefix_end(&from))
            .with_prev_key()
            .with_progress_notify()
            .with_start_revision(revision);
        let mut client = self.client.watch_client();
        let stream = client
            .watch(from, Some(options))
            .await
            .map_err(|e| self.error("watch", prefix, &e))?;
        Ok(EtcdWatch {
            store: self,
            stream,
            prefix: prefix.to_owned(),
        })
    }
}

/// A watch of one prefix; see [`EtcdStore::watch`].
pub(crate) struct EtcdWatch<'a> {
    store: &'a EtcdStore,
    stream: etcd_client::WatchStream,
    prefix: String,
}

impl EtcdWatch<'_> {
    /// What the next response says; an error when the watch failed.
    pub(crate) async fn next(&mut self) -> Result<Watched, String> {
        let store = self.store;
        let Some(response) = self
            .stream
            .message()
            .await
            .map_err(|e| store.error("watch", &self.prefix, &e))?
        else {
            return Err(format!("etcd at {}: the watch ended", store.endpoints));
        };
        if response.compact_revision() > 0 {
            return Ok(Watched::Compacted);
        }
        if response.canceled() {
            return Err(format!(
                "etcd at {}: the watch was cancelled: {}",
                store.endpoints,
                response.cancel_reason()
            ));
        }
        let revision = response.header().map_or(0, |h| h.revision());
        let events = response
            .events()
            .iter()
            .filter_map(|event| {
                let kv = event.kv()?;
                Some(Event {
                    key: store.strip(kv.key())?,
                    value: (event.event_type() == EventType::Put).then(|| kv.value().to_vec()),
                    previous: event.prev_kv().map(|p| p.value().to_vec()),
                })
            })
            .collect();
        Ok(Watched::Events(events, revision))
    }
}

fn revision_arg(revision: u64) -> Result<i64, String> {
    i64::try_from(revision).map_err(|_| format!("revision {revision} is out of range"))
}
