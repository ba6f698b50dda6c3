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
    /// One client per endpoint: requests go to the current one, and move
    /// to the next when a member cannot serve them.
    clients: Vec<Client>,
    current: std::sync::atomic::AtomicUsize,
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

/// The longest one attempt of a request may take: a member that stopped
/// answering (stopped, partitioned) costs at most this before the request
/// is made again, to another member.
const ATTEMPT_TIMEOUT: Duration = Duration::from_millis(500);

/// Whether `e` says a member could not serve the request now (out of
/// reach, between leaders, too busy), so another attempt may succeed.
fn retriable(e: &etcd_client::Error) -> bool {
    match e {
        etcd_client::Error::GRpcStatus(status) => {
            let code = format!("{:?}", status.code());
            matches!(
                code.as_str(),
                "Unavailable" | "DeadlineExceeded" | "Aborted" | "ResourceExhausted"
            ) || [
                "leader changed",
                "no leader",
                "timed out",
                "transport error",
            ]
            .iter()
            .any(|m| status.message().contains(m))
        }
        etcd_client::Error::TransportError(_) | etcd_client::Error::IoError(_) => true,
        _ => false,
    }
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
        let mut clients = Vec::new();
        for endpoint in endpoints {
            let client = Client::connect([endpoint], Some(options.clone()))
                .await
                .map_err(|e| format!("connecting to etcd at {endpoint}: {}", describe(&e)))?;
            clients.push(client);
        }
        Ok(EtcdStore {
            clients,
            current: Default::default(),
            prefix,
            endpoints: endpoints.join(","),
            granted: Mutex::default(),
        })
    }

    /// The client requests go to now, and its index.
    fn client(&self) -> (usize, &Client) {
        let i = self.current.load(std::sync::atomic::Ordering::Relaxed) % self.clients.len();
        (i, &self.clients[i])
    }

    /// Moves requests on from client `failed` to the next member's.
    fn fail_over(&self, failed: usize) {
        let next = (failed + 1) % self.clients.len();
        let _ = self.current.compare_exchange(
            failed,
            next,
            std::sync::atomic::Ordering::Relaxed,
            std::sync::atomic::Ordering::Relaxed,
        );
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

    /// Runs `request` until it succeeds, fails for good, or `deadline`
    /// passes. Each attempt has at most [`ATTEMPT_TIMEOUT`]; an attempt that
    /// found its member out of reach (refused, stopped, between leaders) is
    /// made again on the next member, where requests stay from then on.
    /// Every request here may be made twice: a put is the same put, and a
    /// conditional change whose first attempt landed finds its revision
    /// changed, which the component judges anew.
    async fn within<T, F>(
        &self,
        deadline: Instant,
        op: &str,
        key: &str,
        mut request: impl FnMut(&Client) -> F,
    ) -> Result<T, String>
    where
        F: std::future::Future<Output = Result<T, etcd_client::Error>>,
    {
        let mut pause = Duration::from_millis(10);
        let mut last: Option<String> = None;
        loop {
            let now = Instant::now();
            if now >= deadline {
                let why = last.map_or(String::new(), |e| format!(" (last: {e})"));
                return Err(format!(
                    "etcd at {} {op} {key:?}: no answer within the call's deadline{why}",
                    self.endpoints
                ));
            }
            let attempt_ends = deadline.min(now + ATTEMPT_TIMEOUT);
            let (member, client) = self.client();
            match tokio::time::timeout_at(attempt_ends, request(client)).await {
                Ok(Ok(out)) => return Ok(out),
                Ok(Err(e)) if !retriable(&e) => return Err(self.error(op, key, &e)),
                Ok(Err(e)) => last = Some(describe(&e)),
                Err(_) => last = Some("an attempt had no answer".into()),
            }
            self.fail_over(member);
            if Instant::now() + pause >= deadline {
                let why = last.unwrap_or_default();
                return Err(format!("etcd at {} {op} {key:?}: {why}", self.endpoints));
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_millis(200));
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
        let response = self
            .within(deadline, "get", key, |client| {
                let mut kv = client.kv_client();
                let full = self.full(key);
                async move { kv.get(full, None).await }
            })
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
        self.within(deadline, "put", key, |client| {
            let mut kv = client.kv_client();
            let (full, value, options) = (self.full(key), value.clone(), options.clone());
            async move { kv.put(full, value, options).await }
        })
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
        let response = self
            .within(deadline, "put (if unchanged)", key, |client| {
                let (mut kv, txn) = (client.kv_client(), txn.clone());
                async move { kv.txn(txn).await }
            })
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
        let response = self
            .within(deadline, "delete (if unchanged)", key, |client| {
                let (mut kv, txn) = (client.kv_client(), txn.clone());
                async move { kv.txn(txn).await }
            })
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
        let mut response = self
            .within(deadline, "range", prefix, |client| {
                let mut kv = client.kv_client();
                let (start, options) = (start.clone(), options.clone());
                async move { kv.get(start, Some(options)).await }
            })
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
        let granted = self
            .within(deadline, "lease grant", "", |client| {
                let mut lease = client.lease_client();
                async move { lease.grant(seconds, None).await }
            })
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
        // Opening the stream sends one keep-alive and reads its answer: a
        // TTL of 0 comes back as this error.
        let alive = self
            .within(deadline, "lease keep-alive", "", |client| {
                let mut lease = client.lease_client();
                async move {
                    match lease.keep_alive(id).await {
                        Ok(_) => Ok(true),
                        Err(etcd_client::Error::LeaseKeepAliveError(_)) => Ok(false),
                        Err(e) => Err(e),
                    }
                }
            })
            .await?;
        if !alive {
            self.forget(id);
        }
        Ok(alive)
    }

    /// Revokes lease `id` (its keys go with it).
    pub(crate) async fn revoke(&self, id: i64, deadline: Instant) -> Result<(), String> {
        self.forget(id);
        let revoked = self
            .within(deadline, "lease revoke", "", |client| {
                let mut lease = client.lease_client();
                async move { lease.revoke(id).await.map(|_| ()) }
            })
            .await;
        match revoked {
            // Revoked by an attempt whose answer was lost, or lapsed.
            Err(e) if e.contains("lease not found") => Ok(()),
            other => other,
        }
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
        let (member, client) = self.client();
        let mut client = client.watch_client();
        let opened = tokio::time::timeout(ATTEMPT_TIMEOUT, client.watch(from, Some(options))).await;
        let stream = match opened {
            Ok(Ok(stream)) => stream,
            Ok(Err(e)) => {
                self.fail_over(member);
                return Err(self.error("watch", prefix, &e));
            }
            Err(_) => {
                self.fail_over(member);
                return Err(format!(
                    "etcd at {} watch {prefix:?}: no answer",
                    self.endpoints
                ));
            }
        };
        Ok(EtcdWatch {
            store: self,
            member,
            stream,
            prefix: prefix.to_owned(),
        })
    }
}

/// A watch of one prefix; see [`EtcdStore::watch`].
pub(crate) struct EtcdWatch<'a> {
    store: &'a EtcdStore,
    /// The member it watches on.
    member: usize,
    stream: etcd_client::WatchStream,
    prefix: String,
}

impl EtcdWatch<'_> {
    /// What the next response says; an error when the watch failed.
    pub(crate) async fn next(&mut self) -> Result<Watched, String> {
        let store = self.store;
        let message = self.stream.message().await;
        if !matches!(message, Ok(Some(_))) {
            // Resumed on the next member.
            store.fail_over(self.member);
        }
        let Some(response) = message.map_err(|e| store.error("watch", &self.prefix, &e))? else {
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
