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

use agentmux_registry_core::kv::{Stored, MAX_RANGE, MAX_VALUE_JUDGED};

/// A client of one etcd cluster, confined to one key prefix.
pub(crate) struct EtcdStore {
    /// One client per endpoint, connected when first used: requests go to
    /// the current one, and move to the next when a member cannot serve
    /// them (so one endpoint out of reach never stops the others).
    clients: Vec<Slot>,
    current: std::sync::atomic::AtomicUsize,
    options: ConnectOptions,
    prefix: String,
    /// The endpoints, for messages.
    endpoints: String,
    /// Leases this host granted and has not revoked: the only ones a
    /// component may attach a key to.
    granted: Mutex<HashSet<i64>>,
}

/// One endpoint's client, once connected.
struct Slot {
    endpoint: String,
    client: tokio::sync::Mutex<Option<Client>>,
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
    /// Events, and the revision every event up to which has now been seen
    /// (`None`: no more than before).
    Events(Vec<Event>, Option<i64>),
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

/// How long the first attempt of a request may take: a member that stopped
/// answering (stopped, partitioned) costs this before the request is made
/// again, to another member. Each later attempt may take twice as long as
/// the one before, so a cluster that is merely slow is still served.
const ATTEMPT_TIMEOUT: Duration = Duration::from_millis(500);

/// The largest response the client decodes: a page of values cut to
/// [`MAX_VALUE_JUDGED`] fits many times over. A range whose response is
/// larger (values that are no entries) is asked again for fewer keys.
const MAX_RESPONSE_BYTES: usize = 64 << 20;

/// The most bytes of values one page of a range hands the component.
const MAX_PAGE_BYTES: usize = 4 << 20;

/// Whether `e` says a member could not serve the request now (out of
/// reach, between leaders, too busy), so another attempt may succeed.
fn retriable(e: &etcd_client::Error) -> bool {
    // What no other attempt changes: a certificate, a name, an argument.
    let text = e.to_string().to_lowercase();
    if [
        "certificate",
        "tls",
        "dns error",
        "invalid uri",
        "unknownissuer",
    ]
    .iter()
    .any(|m| text.contains(m))
    {
        return false;
    }
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
    /// A store of the cluster at `endpoints`, confined to keys starting
    /// with `prefix`. Nothing is asked of the cluster until the first
    /// request.
    pub(crate) fn new(endpoints: &[String], prefix: String, options: ConnectOptions) -> EtcdStore {
        EtcdStore {
            clients: endpoints
                .iter()
                .map(|endpoint| Slot {
                    endpoint: endpoint.clone(),
                    client: tokio::sync::Mutex::new(None),
                })
                .collect(),
            current: Default::default(),
            options,
            prefix,
            endpoints: endpoints.join(","),
            granted: Mutex::default(),
        }
    }

    /// The member requests go to now.
    pub(crate) fn current(&self) -> usize {
        self.current.load(std::sync::atomic::Ordering::Relaxed) % self.clients.len()
    }

    /// Member `i`'s client, connected (and with a user authenticated) now
    /// if it was not yet.
    async fn client(&self, i: usize) -> Result<Client, etcd_client::Error> {
        let slot = &self.clients[i];
        let mut client = slot.client.lock().await;
        if let Some(client) = &*client {
            return Ok(client.clone());
        }
        let connected = Client::connect([&slot.endpoint], Some(self.options.clone())).await?;
        *client = Some(connected.clone());
        Ok(connected)
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
    /// passes. The first attempt has [`ATTEMPT_TIMEOUT`], each later one
    /// twice as long as the one before; an attempt that found its member
    /// out of reach (refused, stopped, between leaders) is made again on
    /// the next member, where requests stay from then on.
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
        let mut attempt = ATTEMPT_TIMEOUT;
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
            let attempt_ends = deadline.min(now + attempt);
            // The member this attempt goes to is the one it fails over
            // from: others may have moved requests on meanwhile.
            let member = self.current();
            let tried = tokio::time::timeout_at(attempt_ends, async {
                request(&self.client(member).await?).await
            })
            .await;
            match tried {
                Ok(Ok(out)) => return Ok(out),
                Ok(Err(e)) if !retriable(&e) => return Err(self.error(op, key, &e)),
                Ok(Err(e)) => last = Some(describe(&e)),
                Err(_) => {
                    last = Some(format!("an attempt had no answer within {attempt:?}"));
                    attempt *= 2;
                }
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

    /// A page of the keys starting with `prefix` after `after`, read at
    /// `at_revision` when given (else at the revision of the first request):
    /// up to `limit` keys that are text, with values cut to
    /// [`MAX_VALUE_JUDGED`], at most [`MAX_PAGE_BYTES`] of them but never
    /// none while keys follow; whether keys follow; and the revision read.
    pub(crate) async fn range(
        &self,
        prefix: &str,
        after: Option<&str>,
        limit: u32,
        at_revision: Option<i64>,
        deadline: Instant,
    ) -> Result<(Vec<Stored>, bool, i64), String> {
        let limit = limit.clamp(1, MAX_RANGE) as usize;
        let from = self.full(prefix);
        let end = prefix_end(&from);
        let mut start = match after {
            // The first key after `after`; never before the range's start.
            Some(after) => {
                let mut key = self.full(after);
                key.push(0);
                key.max(from)
            }
            None => from,
        };
        let mut revision = at_revision;
        let mut page: Vec<Stored> = Vec::new();
        let mut bytes = 0;
        // Keys asked for per request: fewer after a response too large.
        let mut batch = limit;
        loop {
            let options = GetOptions::new()
                .with_range(end.clone())
                .with_limit(batch as i64)
                .with_revision(revision.unwrap_or(0));
            let response = self
                .within(deadline, "range", prefix, |client| {
                    let mut kv = client
                        .kv_client()
                        .max_decoding_message_size(MAX_RESPONSE_BYTES);
                    let (start, options) = (start.clone(), options.clone());
                    async move { kv.get(start, Some(options)).await }
                })
                .await;
            let mut response = match response {
                Err(e) if e.contains("message length too large") && batch > 1 => {
                    batch = (batch / 4).max(1);
                    continue;
                }
                other => other?,
            };
            let read_at = response.take_header().map_or(0, |h| h.revision());
            // Every request of the page reads one revision.
            let revision = *revision.get_or_insert(read_at);
            let more = response.more();
            let mut kvs = response.take_kvs().into_iter().peekable();
            while let Some(kv) = kvs.next() {
                let cut = kv.value().len().min(MAX_VALUE_JUDGED);
                let full_page =
                    page.len() == limit || (!page.is_empty() && bytes + cut > MAX_PAGE_BYTES);
                if full_page {
                    return Ok((page, true, revision));
                }
                start = kv.key().to_vec();
                start.push(0);
                // Keys that are not text cannot be named by the component:
                // no entry is at one.
                if let Some(key) = self.strip(kv.key()) {
                    bytes += cut;
                    page.push(Stored {
                        key,
                        value: kv.value()[..cut].to_vec(),
                        revision: kv.mod_revision() as u64,
                    });
                }
                if kvs.peek().is_none() && !more {
                    return Ok((page, false, revision));
                }
            }
            if !more {
                return Ok((page, false, revision));
            }
        }
    }

    /// The cluster's current revision.
    pub(crate) async fn revision(&self, deadline: Instant) -> Result<i64, String> {
        let (_, _, revision) = self.range("agents/", None, 1, None, deadline).await?;
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
        let member = self.current();
        let mut client = match self.client(member).await {
            Ok(client) => client
                .watch_client()
                .max_decoding_message_size(MAX_RESPONSE_BYTES),
            Err(e) => {
                self.fail_over(member);
                return Err(self.error("watch", prefix, &e));
            }
        };
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
        let header = response.header().map_or(0, |h| h.revision());
        let seen = seen_through(
            response
                .events()
                .last()
                .and_then(|e| e.kv())
                .map(|kv| kv.mod_revision()),
            response.created(),
            header,
        );
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
        Ok(Watched::Events(events, seen))
    }
}

/// The revision through which a watch response shows every change: its
/// last event's (a response catching up may end far below the header's
/// revision, with more responses to come); for a progress notice (no
/// events), the header's; nothing new for the notice that the watch was
/// created.
fn seen_through(last_event: Option<i64>, created: bool, header: i64) -> Option<i64> {
    match (last_event, created) {
        (Some(revision), _) => Some(revision),
        (None, true) => None,
        (None, false) => Some(header),
    }
}

fn revision_arg(revision: u64) -> Result<i64, String> {
    i64::try_from(revision).map_err(|_| format!("revision {revision} is out of range"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_prefix_ends_before_every_key_beyond_it() {
        assert_eq!(prefix_end(b"/a/"), b"/a0");
        assert_eq!(prefix_end(b"/a\xff"), b"/b");
        assert_eq!(prefix_end(b"\xff\xff"), vec![0]);
    }

    #[test]
    fn a_watch_resumes_after_its_last_event_not_the_clusters_revision() {
        // Catching up: the header says 9000, the events seen end at 1500.
        assert_eq!(seen_through(Some(1500), false, 9000), Some(1500));
        assert_eq!(seen_through(Some(1500), true, 9000), Some(1500));
        // A progress notice: everything up to the header was sent.
        assert_eq!(seen_through(None, false, 9000), Some(9000));
        // Created: nothing was sent yet.
        assert_eq!(seen_through(None, true, 9000), None);
    }
}
