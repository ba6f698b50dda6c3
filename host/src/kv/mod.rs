//! The registry on etcd (feature `etcd`): [`Etcd`] says where and how to
//! reach the cluster, [`Registry::open_etcd`](crate::Registry::open_etcd)
//! opens it.
//!
//! Every registry rule runs in its own component (`component/registry-kv.wasm`,
//! from `guest-kv/`), which imports a small `store` interface instead of a
//! file system: get, put, put and delete if a key's revision is unchanged,
//! range over a prefix. This module implements that interface on etcd,
//! below one key prefix that the component never sees and cannot leave (it
//! has no open-ended range and no from-key request). What outlives a call
//! lives here: leases, their keep-alives, and watches.
//!
//! Leases: an entry written with a registration nonce and a beat interval
//! (every [`Registration`](crate::Registration)'s) lives on a lease of three
//! beats (at least five seconds), one per registration, kept alive by each of
//! its renewals. When its owner dies, etcd deletes the entry once the lease
//! lapses; a lease that lapsed while the cluster was out of reach is granted
//! anew by the next renewal, which writes the entry back only while no other
//! registration took the id.

mod component;
mod store;
mod watch;

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use agentmux_registry_core::kv::Layout;
use agentmux_registry_core::ops::{LIST_BATCH, SWEEP_BATCH};
use tokio::time::Instant;
use wasmtime::Store;

use component::{AgentRegistryKv, KvState, WitError};
use store::EtcdStore;

use crate::{AgentEntry, EntryFields, Error, Owner, Renewal};

/// Where and how to reach an etcd cluster, and the key prefix the registry
/// lives under. Needs the `etcd` feature.
///
/// Entries hold auth keys: on any network but loopback, use TLS
/// ([`Etcd::ca_certificate`], with [`Etcd::client_identity`] where the
/// cluster checks client certificates) and give every host that shares the
/// registry its own etcd user ([`Etcd::user`]). etcd stores values as
/// they are: protect its data directory as the entries' home.
#[derive(Clone)]
pub struct Etcd {
    endpoints: Vec<String>,
    prefix: Option<String>,
    ca: Option<Vec<u8>>,
    identity: Option<(Vec<u8>, Vec<u8>)>,
    user: Option<(String, String)>,
}

impl std::fmt::Debug for Etcd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // No secrets: the key and password are left out.
        f.debug_struct("Etcd")
            .field("endpoints", &self.endpoints)
            .field("prefix", &self.key_prefix())
            .field("tls", &self.ca.is_some())
            .field("client_identity", &self.identity.is_some())
            .field("user", &self.user.as_ref().map(|(name, _)| name))
            .finish()
    }
}

impl Etcd {
    /// The cluster at `endpoints` (URLs such as `http://127.0.0.1:2379`, or
    /// `https://...` with TLS), under the default prefix.
    pub fn new<S: Into<String>>(endpoints: impl IntoIterator<Item = S>) -> Etcd {
        Etcd {
            endpoints: endpoints.into_iter().map(Into::into).collect(),
            prefix: None,
            ca: None,
            identity: None,
            user: None,
        }
    }

    /// The endpoints of a comma-separated list, as the CLI's `--etcd` takes
    /// them.
    pub fn from_list(endpoints: &str) -> Etcd {
        Etcd::new(
            endpoints
                .split(',')
                .map(str::trim)
                .filter(|e| !e.is_empty()),
        )
    }

    /// Keeps the registry under `prefix` instead of the default,
    /// `/agentmux/<user>/` (the user from `USER`, or `USERNAME` on
    /// Windows; without either, `uid-<uid>` on Unix). Every instance that
    /// shares a registry uses the same prefix. It must end with `/` and
    /// have no segment `agents` or `shared` (see [`Etcd::check`]), so
    /// that no registry's keys are another prefix's.
    pub fn prefix(mut self, prefix: impl Into<String>) -> Etcd {
        self.prefix = Some(prefix.into());
        self
    }

    /// Trusts the cluster's certificates issued by this CA (PEM), and
    /// speaks TLS.
    pub fn ca_certificate(mut self, pem: impl Into<Vec<u8>>) -> Etcd {
        self.ca = Some(pem.into());
        self
    }

    /// Presents this client certificate and key (PEM), for clusters that
    /// check them (`--client-cert-auth`).
    pub fn client_identity(
        mut self,
        cert_pem: impl Into<Vec<u8>>,
        key_pem: impl Into<Vec<u8>>,
    ) -> Etcd {
        self.identity = Some((cert_pem.into(), key_pem.into()));
        self
    }

    /// Authenticates as etcd user `name`.
    pub fn user(mut self, name: impl Into<String>, password: impl Into<String>) -> Etcd {
        self.user = Some((name.into(), password.into()));
        self
    }

    /// Checks what opening checks, without opening: the endpoints
    /// (`http://` or `https://`, a host, no path), the prefix (ends with
    /// `/`, no segment `agents` or `shared`), and that certificates and keys
    /// are PEM. [`Error::InvalidField`] says what is wrong.
    pub fn check(&self) -> Result<(), Error> {
        self.checked_prefix()?;
        self.checked_endpoints()?;
        self.check_pem()
    }

    /// The key prefix the registry lives under.
    pub fn key_prefix(&self) -> String {
        self.prefix.clone().unwrap_or_else(default_prefix)
    }

    /// The prefix, refused when it could share keys with another
    /// registry's: it must end with `/`, and no segment of it may be
    /// `agents` or `shared` (the registry's own), so that no registry's
    /// keys are another prefix's.
    fn checked_prefix(&self) -> Result<String, Error> {
        let prefix = self.key_prefix();
        if prefix.is_empty() || !prefix.ends_with('/') {
            return Err(Error::InvalidField(format!(
                "etcd prefix {prefix:?}: must end with '/' (e.g. /agentmux/me/)"
            )));
        }
        if let Some(own) = prefix.split('/').find(|s| *s == "agents" || *s == "shared") {
            return Err(Error::InvalidField(format!(
                "etcd prefix {prefix:?}: the segment {own:?} is the registry's own \
                 (keys below the prefix start with agents/ or shared/)"
            )));
        }
        Ok(prefix)
    }

    /// The endpoints, each `http://` or `https://` with a host and no path.
    fn checked_endpoints(&self) -> Result<Vec<String>, Error> {
        if self.endpoints.is_empty() {
            return Err(Error::InvalidField("etcd: no endpoints given".into()));
        }
        for endpoint in &self.endpoints {
            let rest = endpoint
                .strip_prefix("http://")
                .or_else(|| endpoint.strip_prefix("https://"));
            let ok = rest.is_some_and(|rest| {
                let authority = rest.strip_suffix('/').unwrap_or(rest);
                !authority.is_empty() && !authority.contains(['/', '?', '#', ' '])
            });
            if !ok {
                return Err(Error::InvalidField(format!(
                    "etcd endpoint {endpoint:?}: expected http://HOST:PORT or https://HOST:PORT"
                )));
            }
        }
        Ok(self.endpoints.clone())
    }

    /// Certificates and keys must at least be PEM.
    fn check_pem(&self) -> Result<(), Error> {
        let pem = |what: &str, bytes: &[u8]| {
            if bytes.windows(11).any(|w| w == b"-----BEGIN ") {
                Ok(())
            } else {
                Err(Error::InvalidField(format!("etcd {what}: not PEM")))
            }
        };
        if let Some(ca) = &self.ca {
            pem("CA certificate", ca)?;
        }
        if let Some((cert, key)) = &self.identity {
            pem("client certificate", cert)?;
            pem("client key", key)?;
        }
        Ok(())
    }

    fn connect_options(&self, timeout: Duration) -> etcd_client::ConnectOptions {
        let mut options = etcd_client::ConnectOptions::new()
            .with_connect_timeout(timeout.min(Duration::from_secs(5)))
            // A member that stops answering (stopped, partitioned) is left
            // within seconds, not at the OS's TCP timeout.
            .with_keep_alive(Duration::from_secs(1), Duration::from_secs(1))
            .with_keep_alive_while_idle(true)
            // A member cut off from the others says so at once, and requests
            // move on to another.
            .with_require_leader(true)
            // A user's token lapses (a restart of the cluster, or idleness):
            // it is renewed, not left to fail every later call.
            .with_auto_token_refresh(true);
        if self.ca.is_some() || self.identity.is_some() {
            let mut tls = etcd_client::TlsOptions::new();
            if let Some(ca) = &self.ca {
                tls = tls.ca_certificate(etcd_client::Certificate::from_pem(ca));
            }
            if let Some((cert, key)) = &self.identity {
                tls = tls.identity(etcd_client::Identity::from_pem(cert, key));
            }
            options = options.with_tls(tls);
        }
        if let Some((name, password)) = &self.user {
            options = options.with_user(name, password);
        }
        options
    }
}

/// `/agentmux/<user>/`: the user from `USER` (`USERNAME` on Windows), or
/// where neither is set, `uid-<uid>` on Unix and `default` elsewhere.
fn default_prefix() -> String {
    let user = std::env::var("USER")
        .or_else(|_| std::env::var("USERNAME"))
        .ok()
        .filter(|u| !u.is_empty() && !u.contains('/'))
        .unwrap_or_else(|| {
            #[cfg(unix)]
            return format!("uid-{}", rustix::process::getuid().as_raw());
            #[cfg(not(unix))]
            "default".into()
        });
    format!("/agentmux/{user}/")
}

/// A tokio runtime of the backend's own (the etcd client needs one),
/// shut down without waiting when the last registry handle goes.
struct Background(Option<tokio::runtime::Runtime>);

impl Drop for Background {
    fn drop(&mut self) {
        if let Some(runtime) = self.0.take() {
            runtime.shutdown_background();
        }
    }
}

impl Background {
    fn handle(&self) -> &tokio::runtime::Handle {
        self.0.as_ref().expect("present until drop").handle()
    }
}

/// A guest call: gets the bindings and the store, returns the call's result.
type Call<T> = Box<
    dyn for<'a> FnOnce(
            &'a AgentRegistryKv,
            &'a mut Store<KvState>,
        ) -> Pin<
            Box<dyn Future<Output = wasmtime::Result<Result<T, WitError>>> + Send + 'a>,
        > + Send,
>;

/// Calls the component's `kv-registry` function `$method` with the store and
/// `$arg`s, through [`Backend::call`]. The arguments are moved into the call.
/// `infallible` marks a function that returns no `result`.
macro_rules! guest_call {
    ($backend:expr, $at_revision:expr, $method:ident ( $($arg:expr),* )) => {
        $backend.call(
            $at_revision,
            Box::new(move |api, s| {
                Box::pin(async move { api.agentmux_registry_kv_registry().$method(s, $($arg),*).await })
            }),
        )
    };
    ($backend:expr, $at_revision:expr, infallible $method:ident ( $($arg:expr),* )) => {
        $backend.call(
            $at_revision,
            Box::new(move |api, s| {
                Box::pin(async move {
                    Ok(Ok(api.agentmux_registry_kv_registry().$method(s, $($arg),*).await?))
                })
            }),
        )
    };
}

/// An open etcd registry: what every clone of its [`crate::Registry`] shares.
pub(crate) struct Backend {
    runtime: Background,
    store: Arc<EtcdStore>,
    layout: Layout,
    call_timeout: Duration,
    memory_limit: usize,
    /// The lease of each registration (by nonce) this process wrote.
    leases: Mutex<HashMap<u64, i64>>,
    /// Instances whose every call completed, for reuse (the component keeps
    /// no state between calls: each call's rules read the store afresh).
    idle: Arc<Mutex<Vec<Instance>>>,
}

/// A component instance with its store.
type Instance = (Store<KvState>, AgentRegistryKv);

/// Instances kept for reuse.
const MAX_IDLE_INSTANCES: usize = 16;

/// The longest deadline counted: longer ones mean "no practical limit".
const MAX_DEADLINE: Duration = Duration::from_secs(365 * 24 * 3600);

impl Backend {
    /// The member requests go to now: its index among the endpoints.
    pub(crate) fn member_in_use(&self) -> usize {
        self.store.current()
    }

    pub(crate) fn open(
        etcd: &Etcd,
        shared: bool,
        call_timeout: Duration,
        memory_limit: usize,
    ) -> Result<Backend, Error> {
        let prefix = etcd.checked_prefix()?;
        let endpoints = etcd.checked_endpoints()?;
        etcd.check_pem()?;
        component::pre()?;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("agentmux-registry etcd")
            .enable_all()
            .build()
            .map_err(|e| Error::Thread {
                thread: "etcd client",
                source: Arc::new(e),
            })?;
        let runtime = Background(Some(runtime));
        // Each endpoint is connected (and a user authenticated) when its
        // first request is made: opening asks nothing of the cluster.
        let store = EtcdStore::new(&endpoints, prefix, etcd.connect_options(call_timeout));
        Ok(Backend {
            runtime,
            store: Arc::new(store),
            layout: if shared {
                Layout::Shared
            } else {
                Layout::PerChannel
            },
            call_timeout,
            memory_limit,
            leases: Mutex::default(),
            idle: Arc::default(),
        })
    }

    pub(crate) fn is_shared(&self) -> bool {
        self.layout == Layout::Shared
    }

    /// Where the registry is, for messages: endpoints and prefix.
    pub(crate) fn describe(&self) -> String {
        format!(
            "etcd {} under {}",
            self.store.endpoints(),
            self.store.prefix()
        )
    }

    fn deadline(&self) -> Instant {
        Instant::now() + self.call_timeout.min(MAX_DEADLINE)
    }

    /// Runs `work` on the backend's runtime and waits for it from any
    /// executor (or none).
    async fn spawn<T: Send + 'static>(
        &self,
        work: impl Future<Output = Result<T, Error>> + Send + 'static,
    ) -> Result<T, Error> {
        self.runtime
            .handle()
            .spawn(work)
            .await
            .map_err(|e| Error::Io(format!("etcd call ended abnormally: {e}")))?
    }

    /// One guest call on a fresh instance, with the call's deadline on the
    /// guest (epochs) and on every store request it makes.
    async fn call<T: Send + 'static>(
        &self,
        at_revision: Option<i64>,
        call: Call<T>,
    ) -> Result<T, Error> {
        let store = self.store.clone();
        let (timeout, memory_limit) = (self.call_timeout, self.memory_limit);
        let deadline = self.deadline();
        let idle = self.idle.clone();
        self.spawn(async move {
            let pooled = idle.lock().unwrap_or_else(|e| e.into_inner()).pop();
            let (mut s, api) = match pooled {
                Some(mut instance) => {
                    instance.0.data_mut().next_call(deadline, at_revision);
                    instance
                }
                None => {
                    let mut s = component::new_store(store, deadline, at_revision, memory_limit)?;
                    // Instantiation runs no guest code that could loop; bound it too.
                    s.set_epoch_deadline(crate::runtime::ticks(timeout));
                    let api = component::pre()?
                        .instantiate_async(&mut s)
                        .await
                        .map_err(|e| Error::Setup {
                            step: "instantiating the registry-kv component",
                            source: e.into(),
                        })?;
                    (s, api)
                }
            };
            s.set_epoch_deadline(crate::runtime::ticks(timeout));
            // Every store request ends by the deadline; this bounds the rest.
            // An instance whose call did not complete (a trap, the deadline)
            // may be in any state: it is dropped, never pooled.
            let out = tokio::time::timeout_at(deadline, call(&api, &mut s)).await;
            let out = match out {
                Err(_) => return Err(Error::Timeout(timeout)),
                Ok(Err(trap)) => return Err(s.data().memory.call_error(trap, timeout)),
                Ok(Ok(out)) => out,
            };
            let failure = s.data_mut().failure.take();
            let mut idle = idle.lock().unwrap_or_else(|e| e.into_inner());
            if idle.len() < MAX_IDLE_INSTANCES {
                idle.push((s, api));
            }
            drop(idle);
            match out {
                Ok(value) => Ok(value),
                Err(e) => Err(match (e, failure) {
                    (WitError::Io(_), Some(failure)) => Error::Unavailable(failure),
                    (e, _) => e.into(),
                }),
            }
        })
        .await
    }

    /// The lease a registration's entry lives on: its own, kept alive, or a
    /// new one when it has none or its lease lapsed. `None` for entries of
    /// no registration or no beat interval: they stay until removed. True
    /// when the lease was granted by this call.
    async fn lease_for(&self, fields: &EntryFields) -> Result<(Option<u64>, bool), Error> {
        let (nonce, Some(beat_ms)) = (fields.registration_nonce, fields.beat_interval_ms) else {
            return Ok((None, false));
        };
        if nonce == 0 {
            return Ok((None, false));
        }
        let known = self.lock_leases().get(&nonce).copied();
        let ttl = lease_ttl(beat_ms);
        let store = self.store.clone();
        let deadline = self.deadline();
        let (id, granted) = self
            .spawn(async move {
                if let Some(id) = known {
                    if store
                        .keep_alive(id, deadline)
                        .await
                        .map_err(Error::Unavailable)?
                    {
                        return Ok((id, false));
                    }
                }
                let id = store
                    .grant(ttl, deadline)
                    .await
                    .map_err(Error::Unavailable)?;
                Ok((id, true))
            })
            .await?;
        self.lock_leases().insert(nonce, id);
        Ok((Some(id as u64), granted))
    }

    fn lock_leases(&self) -> std::sync::MutexGuard<'_, HashMap<u64, i64>> {
        self.leases.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Revokes the lease of registration `nonce`, if this process holds
    /// one: it has no entry left to keep (removed, or superseded).
    async fn release(&self, nonce: u64) {
        let Some(id) = self.lock_leases().remove(&nonce) else {
            return;
        };
        let store = self.store.clone();
        let deadline = self.deadline();
        // A lease not revoked lapses by itself within its TTL.
        let _ = self
            .spawn(async move { store.revoke(id, deadline).await.map_err(Error::Unavailable) })
            .await;
    }

    pub(crate) async fn write(&self, fields: EntryFields) -> Result<AgentEntry, Error> {
        let nonce = fields.registration_nonce;
        let (lease, granted) = self.lease_for(&fields).await?;
        let layout = self.layout.into();
        let fields = component::WitFields::from(fields);
        let written = guest_call!(self, None, call_kv_write(layout, &fields, lease)).await;
        if written.is_err() && granted {
            // Refused (invalid fields, say): no entry lives on it.
            self.release(nonce).await;
        }
        Ok(written?.into())
    }

    pub(crate) async fn renew(&self, fields: EntryFields) -> Result<Renewal, Error> {
        let nonce = fields.registration_nonce;
        let lease = if nonce == 0 {
            None
        } else {
            self.lease_for(&fields).await?.0
        };
        let layout = self.layout.into();
        let fields = component::WitFields::from(fields);
        let renewal: Renewal = guest_call!(self, None, call_kv_renew(layout, &fields, lease))
            .await?
            .into();
        if renewal == Renewal::Superseded {
            self.release(nonce).await;
        }
        Ok(renewal)
    }

    pub(crate) async fn remove(
        &self,
        agent_id: &str,
        channel: Option<&str>,
    ) -> Result<bool, Error> {
        let layout = self.layout.into();
        let (agent_id, channel) = (agent_id.to_owned(), channel.map(str::to_owned));
        guest_call!(
            self,
            None,
            call_kv_remove(layout, &agent_id, channel.as_deref())
        )
        .await
    }

    pub(crate) async fn remove_owned(&self, agent_id: &str, owner: &Owner) -> Result<bool, Error> {
        let layout = self.layout.into();
        let nonce = owner.registration_nonce;
        let (agent_id, owner) = (
            agent_id.to_owned(),
            component::WitOwner::from(owner.clone()),
        );
        let removed =
            guest_call!(self, None, call_kv_remove_owned(layout, &agent_id, &owner)).await?;
        // Removed, or not the owner's entry (gone, or a successor's): none
        // of the owner's lives on its lease any more.
        self.release(nonce).await;
        Ok(removed)
    }

    pub(crate) async fn evict(&self, judged: &AgentEntry) -> Result<bool, Error> {
        let layout = self.layout.into();
        let judged = component::WitEntry::from(judged.clone());
        guest_call!(self, None, call_kv_evict(layout, &judged)).await
    }

    pub(crate) async fn lookup(&self, agent_id: &str) -> Result<Option<AgentEntry>, Error> {
        let layout = self.layout.into();
        let agent_id = agent_id.to_owned();
        let found = guest_call!(self, None, call_kv_lookup(layout, &agent_id)).await?;
        Ok(found.map(Into::into))
    }

    pub(crate) async fn lookup_all(&self, agent_id: &str) -> Result<Vec<AgentEntry>, Error> {
        let layout = self.layout.into();
        let agent_id = agent_id.to_owned();
        let found = guest_call!(self, None, call_kv_lookup_all(layout, &agent_id)).await?;
        Ok(found.into_iter().map(Into::into).collect())
    }

    /// One page of the listing after key `after`, read at `at_revision`
    /// when given.
    pub(crate) async fn list_page(
        &self,
        after: Option<String>,
        at_revision: Option<i64>,
    ) -> Result<(Vec<AgentEntry>, Option<String>), Error> {
        let layout = self.layout.into();
        let page = guest_call!(
            self,
            at_revision,
            call_kv_list_page(layout, after.as_deref(), LIST_BATCH)
        )
        .await?;
        Ok((
            page.entries.into_iter().map(Into::into).collect(),
            page.next,
        ))
    }

    /// Every valid entry, read at `at_revision` when given, in listing order.
    pub(crate) async fn list_at(&self, at_revision: Option<i64>) -> Result<Vec<AgentEntry>, Error> {
        let mut entries = Vec::new();
        let mut after = None;
        loop {
            let (page, next) = self.list_page(after, at_revision).await?;
            entries.extend(page);
            match next {
                Some(next) => after = Some(next),
                None => break,
            }
        }
        agentmux_registry_core::ops::sort_listing(&mut entries, self.is_shared());
        Ok(entries)
    }

    /// One step of a sweep (see the contract's `kv-sweep-page`).
    pub(crate) async fn sweep_page(
        &self,
        after: Option<String>,
        max_age_ms: u64,
    ) -> Result<(u64, u64, Option<String>), Error> {
        let layout = self.layout.into();
        let page = guest_call!(
            self,
            None,
            call_kv_sweep_page(layout, after.as_deref(), SWEEP_BATCH, max_age_ms)
        )
        .await?;
        Ok((page.examined, page.removed, page.next))
    }

    /// The valid entry `value` holds at `key`, by the component's rules.
    async fn entry_at(&self, key: String, value: Vec<u8>) -> Result<Option<AgentEntry>, Error> {
        let layout = self.layout.into();
        guest_call!(self, None, infallible call_kv_entry_at(layout, &key, &value))
            .await
            .map(|found| found.map(Into::into))
    }

    /// The full key of `agent_id`'s entry (a shared registry's: the prefix
    /// of its channels' keys).
    pub(crate) async fn entry_key(&self, agent_id: &str) -> Result<String, Error> {
        let layout = self.layout;
        let channel = if layout == Layout::Shared { "-" } else { "" };
        let key = agentmux_registry_core::kv::entry_key(layout, agent_id, channel)?;
        let key = match layout {
            Layout::Shared => key
                .rsplit_once('/')
                .map_or(key.clone(), |(dir, _)| format!("{dir}/")),
            Layout::PerChannel => key,
        };
        Ok(format!("{}{key}", self.store.prefix()))
    }
}

/// The shortest lease: long enough for a renewal to outlast a member's
/// failure (an election, and a request made again to another member).
const MIN_LEASE_TTL_S: u64 = 5;

/// A registration's lease: three beats, at least [`MIN_LEASE_TTL_S`] (etcd
/// counts whole seconds).
fn lease_ttl(beat_ms: u64) -> Duration {
    Duration::from_secs(
        beat_ms
            .saturating_mul(3)
            .div_ceil(1000)
            .max(MIN_LEASE_TTL_S),
    )
}

impl From<agentmux_registry_core::Error> for Error {
    fn from(e: agentmux_registry_core::Error) -> Self {
        use agentmux_registry_core::Error as E;
        match e {
            E::InvalidAgentId(m) => Error::InvalidAgentId(m),
            E::InvalidField(m) => Error::InvalidField(m),
            E::Conflict(m) => Error::Conflict(m),
            E::Io(m) => Error::Io(m),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lease_lasts_three_beats_and_at_least_five_seconds() {
        assert_eq!(lease_ttl(1), Duration::from_secs(5));
        assert_eq!(lease_ttl(2000), Duration::from_secs(6));
        assert_eq!(lease_ttl(2001), Duration::from_secs(7));
        assert_eq!(
            lease_ttl(u64::MAX),
            Duration::from_secs(u64::MAX / 1000 + 1)
        );
    }

    #[test]
    fn endpoint_lists_split_on_commas() {
        let etcd = Etcd::from_list(" http://a:1, http://b:2,,");
        assert_eq!(etcd.endpoints, ["http://a:1", "http://b:2"]);
        assert!(etcd.clone().prefix("/x").checked_prefix().is_err());
        assert_eq!(etcd.prefix("/x/").checked_prefix().unwrap(), "/x/");
    }
}
