//! [`Registry`]: the async handle on one data dir's agents directory. Each
//! operation runs on an instance leased from its pool ([`crate::pool`]).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use agentmux_registry_core::ops::{LIST_BATCH, SWEEP_BATCH};
use wasmtime::component::ResourceAny;

use crate::agents_dir::AgentsDir;
use crate::bindings::exports::agentmux::registry::registry as wit;
use crate::liveness::{owner_liveness, Liveness};
use crate::pool::{Access, Inner, Lease};
use crate::runtime::Runtime;
use crate::{AgentEntry, EntryFields, Error, Graded, Owner, Renewal, SweepProgress};

/// The most entries a shared registry's `lookup_all` returns (the
/// component's limit).
pub(crate) const MAX_LOOKUP_ALL: usize = 256;

/// Calls a function of the per-channel interface, or in a shared registry
/// its twin of the shared interface: `by_layout!(shared, api, f(args) |
/// f_shared(args))`, or for a resource's method `by_layout!(shared, api,
/// resource | shared_resource => method(args))`.
macro_rules! by_layout {
    ($shared:expr, $api:expr, $resource:ident | $shared_resource:ident => $method:ident ( $($arg:expr),* )) => {
        if $shared {
            $api.agentmux_registry_shared_registry().$shared_resource().$method($($arg),*).await
        } else {
            $api.agentmux_registry_registry().$resource().$method($($arg),*).await
        }
    };
    ($shared:expr, $api:expr, $per:ident ( $($pa:expr),* ) | $sh:ident ( $($sa:expr),* )) => {
        if $shared {
            $api.agentmux_registry_shared_registry().$sh($($sa),*).await
        } else {
            $api.agentmux_registry_registry().$per($($pa),*).await
        }
    };
}

/// On a registry opened on etcd, returns what `$body` (given the backend as
/// `$kv`) returns; elsewhere does nothing.
macro_rules! on_etcd {
    ($self:ident, $kv:ident => $body:expr) => {
        #[cfg(feature = "etcd")]
        if let Some($kv) = $self.inner.kv.as_ref() {
            return $body;
        }
    };
}

/// Settings for [`Registry::open_with`].
#[derive(Clone, Debug)]
pub struct Options {
    call_timeout: Duration,
    memory_limit: usize,
    lookups_from_notifications: bool,
    #[cfg(any(feature = "custom-components", feature = "precompiled-components"))]
    component: Option<OtherComponent>,
}

/// A component to run instead of the embedded one.
#[cfg(any(feature = "custom-components", feature = "precompiled-components"))]
#[derive(Clone)]
enum OtherComponent {
    /// A `.wasm` component, compiled when the registry opens.
    #[cfg(feature = "custom-components")]
    Wasm(Arc<[u8]>),
    /// Native code from wasmtime's `precompile_component`.
    #[cfg(feature = "precompiled-components")]
    Precompiled(Arc<[u8]>),
}

/// Its kind and size: `Options`' `Debug` shows no component's bytes.
#[cfg(any(feature = "custom-components", feature = "precompiled-components"))]
impl std::fmt::Debug for OtherComponent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (kind, bytes) = match self {
            #[cfg(feature = "custom-components")]
            OtherComponent::Wasm(bytes) => ("Wasm", bytes),
            #[cfg(feature = "precompiled-components")]
            OtherComponent::Precompiled(bytes) => ("Precompiled", bytes),
        };
        write!(f, "{kind}({} bytes)", bytes.len())
    }
}

impl Default for Options {
    fn default() -> Self {
        Options {
            call_timeout: Duration::from_secs(30),
            memory_limit: 256 << 20,
            lookups_from_notifications: true,
            #[cfg(any(feature = "custom-components", feature = "precompiled-components"))]
            component: None,
        }
    }
}

impl Options {
    /// Default options: 30 s per guest call, 256 MiB of guest memory, the
    /// embedded component.
    pub fn new() -> Self {
        Self::default()
    }

    /// How long one guest call may run before it is stopped with
    /// [`Error::Timeout`]. Listing and sweeping make one call per batch, so
    /// this bounds each batch, not the whole pass. Any duration is accepted;
    /// very long ones mean "no practical limit".
    pub fn call_timeout(mut self, timeout: Duration) -> Self {
        self.call_timeout = timeout;
        self
    }

    /// How much linear memory the component may use, in bytes; growing past
    /// it fails the call with [`Error::MemoryLimit`].
    pub fn memory_limit(mut self, bytes: usize) -> Self {
        self.memory_limit = bytes;
        self
    }

    /// Whether `lookup`, `lookup_all` (shared) and `list` may be answered
    /// from entries already read, kept current by the OS's change
    /// notifications, where those are exact (Linux, local file systems; see
    /// [`crate::watch`]): each such call first reads every notification
    /// queued, and what they name, so it never returns an entry older than
    /// one a write completed before the call began wrote, whichever process
    /// wrote it. While a write to what the call covers is in flight (its
    /// claim held), the call reads the directory, so it never returns an
    /// entry older than one another call returned before it began either,
    /// for writes by this registry (agentmux-srv's own writes take no
    /// claims; see the README).
    /// Elsewhere every call reads the directory. On by default;
    /// the first such call reads the whole directory.
    pub fn lookups_from_notifications(mut self, enabled: bool) -> Self {
        self.lookups_from_notifications = enabled;
        self
    }

    /// Runs this component instead of the embedded one, on a registry on
    /// files (a registry on etcd refuses it). It must export the
    /// `agentmux:registry/registry@0.3.0` and `shared-registry@0.3.0`
    /// interfaces and import only WASI; it
    /// is compiled (in this process, with Cranelift) when the registry is
    /// opened. Needs the `custom-components` feature.
    #[cfg(feature = "custom-components")]
    pub fn component(mut self, component: impl Into<Vec<u8>>) -> Self {
        self.component = Some(OtherComponent::Wasm(component.into().into()));
        self
    }

    /// Runs this component, compiled ahead of time, instead of the embedded
    /// one, on a registry on files (a registry on etcd refuses it): no
    /// compiler at run time. It must export the
    /// `agentmux:registry/registry@0.3.0` and `shared-registry@0.3.0`
    /// interfaces and import only WASI, compiled by
    /// `wasmtime::Engine::precompile_component` of wasmtime 48.0.8 for this
    /// target with the configuration in this crate's `src/engine_config.rs`
    /// (which fixes the settings whose defaults follow wasmtime's Cargo
    /// features, whichever of them the compiling crate enabled). wasmtime
    /// refuses, with [`Error::Setup`] from [`Registry::open_with`], bytes
    /// that are not such a compilation as far as its header tells: another
    /// wasmtime version, CPU architecture or OS, or settings it compares.
    /// The code itself is not checked. Needs the `precompiled-components`
    /// feature.
    ///
    /// # Safety
    ///
    /// The bytes are loaded as native code and run in this process; as for
    /// `wasmtime::component::Component::deserialize`, they must come from a
    /// trusted compilation, never from an untrusted source.
    #[cfg(feature = "precompiled-components")]
    pub unsafe fn precompiled_component(mut self, compiled: impl Into<Vec<u8>>) -> Self {
        self.component = Some(OtherComponent::Precompiled(compiled.into().into()));
        self
    }
}

/// A handle on the agent registry in one data dir.
///
/// Cheap to clone and safe to share between threads and tasks; concurrent
/// calls run in separate component instances. Every method is async and may
/// be awaited on any tokio runtime or executor; see
/// [`blocking::Registry`](crate::blocking::Registry) for synchronous code.
#[derive(Clone)]
pub struct Registry {
    pub(crate) inner: Arc<Inner>,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut f = f.debug_struct("Registry");
        #[cfg(feature = "etcd")]
        if let Some(kv) = &self.inner.kv {
            f.field("store", &kv.describe());
        }
        f.field("data_dir", &self.inner.data_dir)
            .finish_non_exhaustive()
    }
}

/// `fields` with the owner's start time and pid namespace filled in where the
/// caller left them out and the process can be seen.
fn with_owner_facts(mut fields: EntryFields) -> EntryFields {
    if fields.pid != 0 {
        // Only a start time read on the owner's own clock is recorded:
        // readers compare it on the owner's clock.
        if fields.pid_started.is_none() && crate::liveness::shares_clock_with(fields.pid) {
            fields.pid_started = crate::liveness::process_start(fields.pid);
        }
        // Recorded with the start time only, so an entry whose owner was not
        // seen stays byte-identical to what agentmux-srv writes.
        if fields.pid_namespace.is_none() && fields.pid_started.is_some() {
            fields.pid_namespace = crate::liveness::pid_namespace();
        }
    }
    fields
}

impl Registry {
    /// Opens the registry of `data_dir` (the agents live in
    /// `{data_dir}/agents`, which is created, mode 0700, when missing).
    pub fn open(data_dir: impl AsRef<Path>) -> Result<Registry, Error> {
        Self::open_with(data_dir, Options::default())
    }

    /// Opens the registry of `data_dir` with `options`.
    pub fn open_with(data_dir: impl AsRef<Path>, options: Options) -> Result<Registry, Error> {
        Self::open_layout(data_dir.as_ref(), options, false)
    }

    /// Opens the host-wide shared registry rooted at `root` (agentmux-srv's
    /// is [`shared_root`](crate::shared_root)`()`): one entry per agent and
    /// channel, at `{root}/{agent}/{channel}.json`. The root is created, mode
    /// 0700, when missing, and given to the component as its only preopen;
    /// an older root other users could reach is adopted, agent directories
    /// and entries included, as an agents directory is.
    ///
    /// Each entry's channel is its `channel` field: [`Registry::write`] and
    /// [`Registry::renew`] need one. [`Registry::lookup_all`] returns every
    /// channel's entry of an id, freshest first, and [`Registry::lookup`]
    /// the freshest; [`Registry::remove_channel`] removes one channel's
    /// entry, [`Registry::remove`] every channel's.
    pub fn open_shared(root: impl AsRef<Path>) -> Result<Registry, Error> {
        Self::open_shared_with(root, Options::default())
    }

    /// Opens the shared registry rooted at `root` with `options`.
    pub fn open_shared_with(root: impl AsRef<Path>, options: Options) -> Result<Registry, Error> {
        Self::open_layout(root.as_ref(), options, true)
    }

    fn open_layout(path: &Path, options: Options, shared: bool) -> Result<Registry, Error> {
        let data_dir = path.to_path_buf();
        #[cfg(any(feature = "custom-components", feature = "precompiled-components"))]
        let runtime = match &options.component {
            None => Runtime::embedded()?,
            #[cfg(feature = "custom-components")]
            Some(OtherComponent::Wasm(bytes)) => Arc::new(Runtime::new(bytes)?),
            // SAFETY: `Options::precompiled_component` is unsafe: its caller
            // vouched for the bytes.
            #[cfg(feature = "precompiled-components")]
            Some(OtherComponent::Precompiled(bytes)) => {
                Arc::new(unsafe { Runtime::precompiled(bytes) }?)
            }
        };
        #[cfg(not(any(feature = "custom-components", feature = "precompiled-components")))]
        let runtime = Runtime::embedded()?;
        let dir = if shared {
            AgentsDir::open_shared(&data_dir)?
        } else {
            AgentsDir::open(&data_dir)?
        };
        Ok(Registry {
            inner: Arc::new(Inner::new(
                data_dir,
                Some(dir),
                runtime,
                options.call_timeout,
                options.memory_limit,
                options.lookups_from_notifications,
                shared,
            )),
        })
    }

    /// Opens the registry on the etcd cluster `etcd` names, under its key
    /// prefix (see [`crate::Etcd`]). Needs the `etcd` feature.
    ///
    /// Every operation works as on a data dir, with the same rules, and
    /// [`Registry::watch`] follows etcd's own watch. Entries of a
    /// [`Registration`](crate::Registration) live on a lease: when their
    /// owner dies, they vanish within three beats. Nothing is asked of the
    /// cluster until the first call, whose error says if it cannot be
    /// reached.
    #[cfg(feature = "etcd")]
    pub fn open_etcd(etcd: &crate::Etcd) -> Result<Registry, Error> {
        Self::open_etcd_layout(etcd, Options::default(), false)
    }

    /// [`Registry::open_etcd`] with `options` (the call deadline bounds
    /// every request to the cluster too).
    #[cfg(feature = "etcd")]
    pub fn open_etcd_with(etcd: &crate::Etcd, options: Options) -> Result<Registry, Error> {
        Self::open_etcd_layout(etcd, options, false)
    }

    /// The shared registry (one entry per agent and channel, as
    /// [`Registry::open_shared`]) on etcd.
    #[cfg(feature = "etcd")]
    pub fn open_etcd_shared(etcd: &crate::Etcd) -> Result<Registry, Error> {
        Self::open_etcd_layout(etcd, Options::default(), true)
    }

    /// [`Registry::open_etcd_shared`] with `options`.
    #[cfg(feature = "etcd")]
    pub fn open_etcd_shared_with(etcd: &crate::Etcd, options: Options) -> Result<Registry, Error> {
        Self::open_etcd_layout(etcd, options, true)
    }

    #[cfg(feature = "etcd")]
    fn open_etcd_layout(
        etcd: &crate::Etcd,
        options: Options,
        shared: bool,
    ) -> Result<Registry, Error> {
        // The registry on etcd runs its own component (the kv world); one
        // chosen for files would be ignored, so it is refused instead.
        #[cfg(any(feature = "custom-components", feature = "precompiled-components"))]
        if options.component.is_some() {
            return Err(Error::InvalidField(
                "a component of one's own (Options::component, precompiled_component) serves a \
                 registry on files only, not on etcd"
                    .into(),
            ));
        }
        let backend =
            crate::kv::Backend::open(etcd, shared, options.call_timeout, options.memory_limit)?;
        let mut inner = Inner::new(
            PathBuf::new(),
            None,
            Runtime::embedded()?,
            options.call_timeout,
            options.memory_limit,
            false,
            shared,
        );
        inner.kv = Some(Arc::new(backend));
        Ok(Registry {
            inner: Arc::new(inner),
        })
    }

    /// Whether this registry is on etcd (opened by `Registry::open_etcd` or
    /// `open_etcd_shared`, with the `etcd` feature); always false without it.
    pub fn is_etcd(&self) -> bool {
        #[cfg(feature = "etcd")]
        return self.inner.kv.is_some();
        #[cfg(not(feature = "etcd"))]
        false
    }

    /// The data dir this registry was opened on (the root, for a shared
    /// registry; empty on etcd).
    pub fn data_dir(&self) -> &Path {
        &self.inner.data_dir
    }

    /// `{data_dir}/agents` (the root, for a shared registry): the only
    /// directory the component can reach. Empty on etcd.
    pub fn agents_dir(&self) -> PathBuf {
        self.inner.agents_dir()
    }

    /// Whether this is a shared registry ([`Registry::open_shared`]).
    pub fn is_shared(&self) -> bool {
        self.inner.shared
    }

    /// Creates or replaces the entry of `fields.agent_id` and returns it as
    /// stored. When `fields.pid` is a running process and its start time or
    /// pid namespace are not given, they are recorded (so a later reuse of
    /// the pid is not mistaken for the owner). The entry file is made
    /// readable by its owner only.
    pub async fn write(&self, fields: EntryFields) -> Result<AgentEntry, Error> {
        on_etcd!(self, kv => kv.write(with_owner_facts(fields)).await);
        let fields = wit::EntryFields::from(with_owner_facts(fields));
        waiting_out_claims(|| self.write_once(&fields)).await
    }

    async fn write_once(&self, fields: &wit::EntryFields) -> Result<AgentEntry, Error> {
        let mut lease = self.inner.lease(Access::Write).await?;
        let shared = self.inner.shared;
        let entry = lease
            .call(async |api, store| {
                by_layout!(
                    shared,
                    api,
                    call_write(store, fields) | call_write_shared(store, fields)
                )
            })
            .await??;
        lease.restrict(&entry.agent_id, &entry.channel)?;
        Ok(entry.into())
    }

    /// One atomic heartbeat step for the registration
    /// `fields.registration_nonce`:
    /// refreshes the entry if it is still this registration's, restores it if
    /// it is missing, and changes nothing if another registration owns the
    /// id (see the WIT contract's `renew`). [`crate::Registration`] calls this
    /// for you.
    pub async fn renew(&self, fields: EntryFields) -> Result<Renewal, Error> {
        on_etcd!(self, kv => kv.renew(with_owner_facts(fields)).await);
        let fields = wit::EntryFields::from(with_owner_facts(fields));
        waiting_out_claims(|| self.renew_once(&fields)).await
    }

    async fn renew_once(&self, fields: &wit::EntryFields) -> Result<Renewal, Error> {
        let mut lease = self.inner.lease(Access::Write).await?;
        let shared = self.inner.shared;
        let renewal = lease
            .call(async |api, store| {
                by_layout!(
                    shared,
                    api,
                    call_renew(store, fields) | call_renew_shared(store, fields)
                )
            })
            .await??;
        let renewal = Renewal::from(renewal);
        if renewal != Renewal::Superseded {
            lease.restrict(&fields.agent_id, &fields.channel)?;
        }
        Ok(renewal)
    }

    /// Removes the entry of `agent_id` (in a shared registry, every
    /// channel's); true when there was one.
    pub async fn remove(&self, agent_id: &str) -> Result<bool, Error> {
        on_etcd!(self, kv => kv.remove(agent_id, None).await);
        if !self.inner.shared {
            return waiting_out_claims(|| self.remove_once(agent_id, None)).await;
        }
        let mut removed = false;
        for entry in self.lookup_all(agent_id).await? {
            removed |= self.remove_channel(agent_id, &entry.channel).await?;
        }
        Ok(removed)
    }

    /// Removes the entry of `agent_id` in `channel` of a shared registry;
    /// true when there was one. In a per-channel registry, `invalid-field`.
    pub async fn remove_channel(&self, agent_id: &str, channel: &str) -> Result<bool, Error> {
        if !self.inner.shared {
            return Err(Error::InvalidField(
                "channels are the shared registry's: open it with Registry::open_shared".into(),
            ));
        }
        on_etcd!(self, kv => kv.remove(agent_id, Some(channel)).await);
        waiting_out_claims(|| self.remove_once(agent_id, Some(channel))).await
    }

    async fn remove_once(&self, agent_id: &str, channel: Option<&str>) -> Result<bool, Error> {
        let mut lease = self.inner.lease(Access::Write).await?;
        Ok(lease
            .call(async |api, store| match channel {
                Some(channel) => {
                    api.agentmux_registry_shared_registry()
                        .call_remove_shared(store, agent_id, channel)
                        .await
                }
                None => {
                    api.agentmux_registry_registry()
                        .call_remove(store, agent_id)
                        .await
                }
            })
            .await??)
    }

    /// Removes the entry of `agent_id` only while it is still the
    /// registration `owner` names (pid, auth key and a registration nonce
    /// other than 0); true when removed. A successor's registration under the
    /// same id is left alone. To evict a registration's entry you looked up,
    /// pass [`Owner::of`]`(&entry)`; an entry of a plain write (nonce 0) is
    /// never removed this way.
    pub async fn remove_owned(&self, agent_id: &str, owner: &Owner) -> Result<bool, Error> {
        on_etcd!(self, kv => kv.remove_owned(agent_id, owner).await);
        let owner = wit::Owner::from(owner.clone());
        waiting_out_claims(|| self.remove_owned_once(agent_id, &owner)).await
    }

    /// Removes the entry of `agent_id` only while it is still exactly
    /// `judged`, an entry you looked up or listed (every field equal,
    /// `updated_at` included); true when removed. For eviction after a failed
    /// forward or with the owner dead: an entry rewritten since (renewed by a
    /// live owner, or a successor's) stays. Unlike [`Registry::remove_owned`],
    /// it removes plain writes (nonce 0) too.
    pub async fn evict(&self, judged: &AgentEntry) -> Result<bool, Error> {
        on_etcd!(self, kv => kv.evict(judged).await);
        let wire = wit::AgentEntry::from(judged.clone());
        waiting_out_claims(|| self.evict_once(&judged.agent_id, &wire)).await
    }

    async fn evict_once(&self, agent_id: &str, judged: &wit::AgentEntry) -> Result<bool, Error> {
        let mut lease = self.inner.lease(Access::Write).await?;
        let shared = self.inner.shared;
        Ok(lease
            .call(async |api, store| {
                by_layout!(
                    shared,
                    api,
                    call_evict(store, agent_id, judged) | call_evict_shared(store, judged)
                )
            })
            .await??)
    }

    async fn remove_owned_once(&self, agent_id: &str, owner: &wit::Owner) -> Result<bool, Error> {
        let mut lease = self.inner.lease(Access::Write).await?;
        let shared = self.inner.shared;
        Ok(lease
            .call(async |api, store| {
                by_layout!(
                    shared,
                    api,
                    call_remove_owned(store, agent_id, owner)
                        | call_remove_owned_shared(store, agent_id, owner)
                )
            })
            .await??)
    }

    /// The entry of `agent_id`, or `None` when there is no valid one. In a
    /// shared registry, the freshest of its channels' entries.
    pub async fn lookup(&self, agent_id: &str) -> Result<Option<AgentEntry>, Error> {
        on_etcd!(self, kv => kv.lookup(agent_id).await);
        let key = crate::feed::id_key(agent_id);
        let served = self
            .answer_from_notifications(crate::feed::Covers::Id(agent_id), |view| {
                view.get(&key)
                    .and_then(|channels| channels.values().max_by_key(|e| e.updated_at))
                    .cloned()
            })
            .await?;
        match served {
            Some(Some(found)) => {
                self.inner
                    .served_from_notifications
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                Ok(Some(found))
            }
            // A miss reads the directory: it says why a name could not be
            // read (permission denied, say) as a read always has.
            _ => self.read_lookup(agent_id).await,
        }
    }

    /// [`Registry::lookup`], reading the directory.
    pub(crate) async fn read_lookup(&self, agent_id: &str) -> Result<Option<AgentEntry>, Error> {
        on_etcd!(self, kv => kv.lookup(agent_id).await);
        if self.inner.shared {
            return Ok(self.lookup_shared(agent_id).await?.into_iter().next());
        }
        self.lookup_own(agent_id).await
    }

    /// `f` of the entries known from notifications, once every notification
    /// queued now was read; `None` where lookups are not served so (see
    /// [`Options::lookups_from_notifications`]).
    async fn answer_from_notifications<T>(
        &self,
        covers: crate::feed::Covers<'_>,
        f: impl FnOnce(&crate::feed::View) -> T,
    ) -> Result<Option<T>, Error> {
        if !self.inner.lookups_from_notifications {
            return Ok(None);
        }
        Ok(self.inner.served.answer(self, covers, f).await)
    }

    /// Reads the whole directory now and serves the next lookups from
    /// notifications where they are exact (the first lookup otherwise
    /// does that, answering from the directory);
    /// true when they are. For tests and benchmarks.
    #[doc(hidden)]
    pub async fn serve_lookups_from_notifications_now(&self) -> bool {
        self.inner.lookups_from_notifications && self.inner.served.open_now(self).await
    }

    async fn lookup_own(&self, agent_id: &str) -> Result<Option<AgentEntry>, Error> {
        let mut lease = self.inner.lease(Access::Read).await?;
        let found = lease
            .call(async |api, store| {
                api.agentmux_registry_registry()
                    .call_lookup(store, agent_id)
                    .await
            })
            .await??;
        Ok(found.map(AgentEntry::from))
    }

    /// Every entry of `agent_id`, freshest first: in a shared registry, one
    /// per channel (at most 256, the freshest); in a per-channel registry,
    /// its entries under every name `lookup` reads (one, unless agentmux-srv
    /// and this registry both wrote the id, under different names).
    pub async fn lookup_all(&self, agent_id: &str) -> Result<Vec<AgentEntry>, Error> {
        on_etcd!(self, kv => kv.lookup_all(agent_id).await);
        if self.inner.shared {
            let key = crate::feed::id_key(agent_id);
            let served = self
                .answer_from_notifications(crate::feed::Covers::Id(agent_id), |view| {
                    let mut entries: Vec<AgentEntry> = view
                        .get(&key)
                        .map(|channels| channels.values().cloned().collect())
                        .unwrap_or_default();
                    entries.sort_by_key(|e| std::cmp::Reverse(e.updated_at));
                    entries.truncate(MAX_LOOKUP_ALL);
                    entries
                })
                .await?;
            if let Some(entries) = served.filter(|e| !e.is_empty()) {
                return Ok(entries);
            }
        }
        self.read_lookup_all(agent_id).await
    }

    /// [`Registry::lookup_all`], reading the directory.
    pub(crate) async fn read_lookup_all(&self, agent_id: &str) -> Result<Vec<AgentEntry>, Error> {
        on_etcd!(self, kv => kv.lookup_all(agent_id).await);
        if !self.inner.shared {
            let mut lease = self.inner.lease(Access::Read).await?;
            let found = lease
                .call(async |api, store| {
                    api.agentmux_registry_registry()
                        .call_lookup_every(store, agent_id)
                        .await
                })
                .await??;
            return Ok(found.into_iter().map(AgentEntry::from).collect());
        }
        self.lookup_shared(agent_id).await
    }

    async fn lookup_shared(&self, agent_id: &str) -> Result<Vec<AgentEntry>, Error> {
        let mut lease = self.inner.lease(Access::Read).await?;
        let found = lease
            .call(async |api, store| {
                api.agentmux_registry_shared_registry()
                    .call_lookup_all_shared(store, agent_id)
                    .await
            })
            .await??;
        Ok(found.into_iter().map(AgentEntry::from).collect())
    }

    /// Every valid entry, sorted by agent id (in a shared registry, by agent
    /// id in any case, then each id's channels freshest first). The
    /// component's memory stays
    /// bounded whatever the directory holds (entries cross a batch at a
    /// time); the result itself is held here. Use [`Registry::listing`] to go
    /// through a large registry without holding it.
    pub async fn list(&self) -> Result<Vec<AgentEntry>, Error> {
        on_etcd!(self, kv => kv.list_at(None).await);
        let shared = self.inner.shared;
        let served = self
            .answer_from_notifications(crate::feed::Covers::All, |view| {
                crate::feed::entries_of(view, shared)
            })
            .await?;
        match served {
            Some(entries) => Ok(entries),
            None => self.read_list().await,
        }
    }

    /// [`Registry::list`], reading the directory.
    pub(crate) async fn read_list(&self) -> Result<Vec<AgentEntry>, Error> {
        on_etcd!(self, kv => kv.list_at(None).await);
        let mut listing = self.listing();
        let mut entries = Vec::new();
        while let Some(batch) = listing.next_batch().await? {
            entries.extend(batch);
        }
        agentmux_registry_core::ops::sort_listing(&mut entries, self.inner.shared);
        Ok(entries)
    }

    /// For each of `names` (paths relative to [`Registry::agents_dir`], as a
    /// change notification names them; at most 1024), the valid entry
    /// stored there if the name is one of its id's (and, shared, channel's)
    /// names: which id a changed name concerns.
    pub(crate) async fn entries_at(
        &self,
        names: &[String],
    ) -> Result<Vec<Option<AgentEntry>>, Error> {
        let mut lease = self.inner.lease(Access::Read).await?;
        let shared = self.inner.shared;
        let found = lease
            .call(async |api, store| {
                by_layout!(
                    shared,
                    api,
                    call_entries_at(store, names) | call_entries_at_shared(store, names)
                )
            })
            .await??;
        Ok(found.into_iter().map(|e| e.map(AgentEntry::from)).collect())
    }

    /// The registry's changes from now on (`Start::Now`), or starting with
    /// every current entry (`Start::Current`): see [`crate::watch`].
    pub async fn watch(
        &self,
        start: crate::watch::Start,
    ) -> Result<crate::watch::WatchStream, Error> {
        on_etcd!(self, kv => kv.watch(start).await);
        crate::watch::WatchStream::open(self, start).await
    }

    /// Whether `entry`'s owning process lives, as this registry can tell
    /// (see [`crate::liveness`]). On etcd, always [`Liveness::Unknown`]:
    /// owners run on other hosts, whose pids mean nothing here (a dead
    /// owner's registration goes with its lease instead).
    pub fn owner_liveness(&self, entry: &AgentEntry) -> Liveness {
        if self.is_etcd() {
            return Liveness::Unknown;
        }
        owner_liveness(entry)
    }

    /// `entry` with its health, as this registry grades it (on etcd,
    /// from its beats only: see [`Registry::owner_liveness`]).
    pub fn graded(&self, entry: AgentEntry) -> Graded {
        let now = crate::liveness::now_ms();
        let dead = self.owner_liveness(&entry) == Liveness::Dead;
        Graded {
            health: agentmux_registry_core::Health::grade(&entry, now, dead),
            entry,
        }
    }

    /// [`Registry::lookup`], with the entry's health (see
    /// [`liveness::health`](crate::liveness::health)).
    pub async fn lookup_graded(&self, agent_id: &str) -> Result<Option<Graded>, Error> {
        Ok(self.lookup(agent_id).await?.map(|e| self.graded(e)))
    }

    /// [`Registry::lookup_all`], each entry with its health.
    pub async fn lookup_all_graded(&self, agent_id: &str) -> Result<Vec<Graded>, Error> {
        let found = self.lookup_all(agent_id).await?;
        Ok(found.into_iter().map(|e| self.graded(e)).collect())
    }

    /// [`Registry::list`], each entry with its health.
    pub async fn list_graded(&self) -> Result<Vec<Graded>, Error> {
        Ok(self
            .list()
            .await?
            .into_iter()
            .map(|e| self.graded(e))
            .collect())
    }

    /// A pass over every valid entry in directory order, a batch at a time;
    /// memory stays bounded by the batch size. Each batch is one guest call
    /// with its own deadline.
    pub fn listing(&self) -> Listing {
        Listing {
            inner: self.inner.clone(),
            lease: None,
            cursor: None,
            after: None,
            done: false,
        }
    }

    /// Test hook: on etcd, the member requests go to now (its index among
    /// the endpoints); `None` for a directory.
    #[cfg(feature = "etcd")]
    #[doc(hidden)]
    pub fn etcd_member_in_use(&self) -> Option<usize> {
        self.inner.kv.as_ref().map(|kv| kv.member_in_use())
    }

    /// How many lookups found their entry among those read from
    /// notifications (for tests: a lookup read from the directory cannot
    /// show that the notifications kept the entries current).
    #[doc(hidden)]
    pub fn lookups_served_from_notifications(&self) -> u64 {
        self.inner
            .served_from_notifications
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// How many idle component instances the registry keeps for reuse
    /// (for tests: an instance that may hold a guest's state must never be
    /// among them).
    #[doc(hidden)]
    pub fn pooled_instances(&self) -> usize {
        self.inner.pooled_instances()
    }

    /// Removes entries last written more than `max_age` ago, malformed entry
    /// files, entry names that are symlinks, FIFOs, sockets or devices, and
    /// debris of interrupted calls (temporary files, claims of calls that
    /// died). A name another call is changing is left for the next sweep.
    /// Returns how many names were removed.
    ///
    /// The sweep runs in batches, each one guest call with its own deadline,
    /// so a directory of any size is swept by this one call. If a batch
    /// fails, the sweep stops and the error is returned (what was removed
    /// before stays removed).
    pub async fn cleanup_stale(&self, max_age: Duration) -> Result<u64, Error> {
        self.cleanup_stale_with_progress(max_age, |_| {}).await
    }

    /// [`Registry::cleanup_stale`], calling `progress` after every batch.
    pub async fn cleanup_stale_with_progress(
        &self,
        max_age: Duration,
        mut progress: impl FnMut(SweepProgress),
    ) -> Result<u64, Error> {
        on_etcd!(self, kv => self.sweep_store(kv, max_age, progress).await);
        let max_age_ms = u64::try_from(max_age.as_millis()).unwrap_or(u64::MAX);
        let mut lease = self.inner.lease(Access::Write).await?;
        let shared = self.inner.shared;
        let sweep = lease
            .open_resource(async |api, store| {
                by_layout!(shared, api, sweep | shared_sweep => call_constructor(store, max_age_ms))
            })
            .await?;
        loop {
            let p = lease
                .call(async |api, store| {
                    by_layout!(shared, api, sweep | shared_sweep => call_next_batch(store, sweep, SWEEP_BATCH))
                })
                .await??;
            let p = SweepProgress::from(p);
            let (done, removed, failed) = (p.done, p.removed, p.failed);
            if done && failed > 0 {
                tracing::warn!(
                    data_dir = %self.inner.data_dir.display(),
                    "agent registry sweep: {}",
                    agentmux_registry_core::cli::sweep_failures(failed, p.first_failure.as_deref())
                );
            }
            progress(p);
            if done {
                lease.drop_resource(sweep).await?;
                return Ok(removed);
            }
        }
    }

    /// [`Registry::cleanup_stale_with_progress`] on etcd: the component's
    /// sweep, a page of keys per call, each removal conditional on the
    /// revision judged.
    #[cfg(feature = "etcd")]
    async fn sweep_store(
        &self,
        kv: &crate::kv::Backend,
        max_age: Duration,
        mut progress: impl FnMut(SweepProgress),
    ) -> Result<u64, Error> {
        let max_age_ms = u64::try_from(max_age.as_millis()).unwrap_or(u64::MAX);
        let mut totals = SweepProgress::default();
        let mut after = None;
        loop {
            let (examined, removed, next) = kv.sweep_page(after, max_age_ms).await?;
            totals.examined += examined;
            totals.removed += removed;
            totals.done = next.is_none();
            progress(totals.clone());
            match next {
                Some(next) => after = Some(next),
                None => return Ok(totals.removed),
            }
        }
    }

    /// Like [`Registry::lookup`], but `None` when the entry's owning process
    /// is known to be dead (see [`crate::liveness`]). The entry is left in
    /// place; [`Registry::cleanup_dead_owners`] removes such entries.
    pub async fn lookup_live(&self, agent_id: &str) -> Result<Option<AgentEntry>, Error> {
        Ok(self
            .lookup(agent_id)
            .await?
            .filter(|e| self.owner_liveness(e) != Liveness::Dead))
    }

    /// Removes every entry whose owning process is provably dead, each by
    /// compare-and-remove (so an entry re-registered meanwhile stays).
    /// Returns how many were removed, or the error of the first entry that
    /// could not be removed (after trying every other one).
    pub async fn cleanup_dead_owners(&self) -> Result<u64, Error> {
        let (progress, first_error) = self.dead_owner_pass().await?;
        match first_error {
            Some(e) => Err(e),
            None => Ok(progress.removed),
        }
    }

    /// [`Registry::cleanup_dead_owners`], reporting entries it could not
    /// remove instead of failing: they are counted in `failed` (the first
    /// one's reason in `first_failure`) and left for the next pass. Only an
    /// error that ends the pass (listing failed) is returned.
    pub async fn sweep_dead_owners(&self) -> Result<SweepProgress, Error> {
        Ok(self.dead_owner_pass().await?.0)
    }

    async fn dead_owner_pass(&self) -> Result<(SweepProgress, Option<Error>), Error> {
        let mut progress = SweepProgress::default();
        let mut first_error = None;
        let mut listing = self.listing();
        while let Some(batch) = listing.next_batch().await? {
            for entry in batch {
                progress.examined += 1;
                if self.owner_liveness(&entry) != Liveness::Dead {
                    continue;
                }
                match self.evict(&entry).await {
                    Ok(removed) => progress.removed += u64::from(removed),
                    Err(e) => {
                        progress.failed += 1;
                        progress
                            .first_failure
                            .get_or_insert_with(|| e.with_causes());
                        first_error.get_or_insert(e);
                    }
                }
            }
        }
        progress.done = true;
        Ok((progress, first_error))
    }

    /// The name of `agent_id`'s entry file inside [`Registry::agents_dir`]
    /// (in a shared registry, of its directory).
    pub async fn entry_file_name(&self, agent_id: &str) -> Result<String, Error> {
        on_etcd!(self, kv => kv.entry_key(agent_id).await);
        let mut lease = self.inner.lease(Access::Read).await?;
        let shared = self.inner.shared;
        Ok(lease
            .call(async |api, store| {
                by_layout!(
                    shared,
                    api,
                    call_entry_file_name(store, agent_id) | call_agent_dir_name(store, agent_id)
                )
            })
            .await??)
    }
}

/// A pass over every valid entry; see [`Registry::listing`].
///
/// Holds one component instance for the whole pass. Dropping it early is
/// fine: the instance is then discarded rather than pooled.
pub struct Listing {
    inner: Arc<Inner>,
    lease: Option<Lease>,
    cursor: Option<ResourceAny>,
    /// On etcd: the key the next page starts after.
    #[cfg_attr(not(feature = "etcd"), allow(dead_code))]
    after: Option<String>,
    done: bool,
}

impl std::fmt::Debug for Listing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Listing")
            .field("done", &self.done)
            .finish_non_exhaustive()
    }
}

impl Listing {
    /// The next batch of valid entries (possibly empty while the pass goes
    /// on), or `None` once the pass is over. After an error the pass is over.
    pub async fn next_batch(&mut self) -> Result<Option<Vec<AgentEntry>>, Error> {
        if self.done {
            return Ok(None);
        }
        let out = self.step().await;
        if !matches!(out, Ok(Some(_))) {
            self.done = true;
            if let (Some(mut lease), Some(cursor)) = (self.lease.take(), self.cursor.take()) {
                if out.is_ok() {
                    lease.drop_resource(cursor).await?;
                } else {
                    lease.discard();
                }
            }
        }
        out
    }

    async fn step(&mut self) -> Result<Option<Vec<AgentEntry>>, Error> {
        #[cfg(feature = "etcd")]
        if let Some(kv) = self.inner.kv.clone() {
            if self.after.as_deref() == Some("") {
                return Ok(None);
            }
            let (page, next) = kv.list_page(self.after.take(), None).await?;
            // An empty key marks the end: no key is empty.
            self.after = Some(next.unwrap_or_default());
            return Ok(Some(page));
        }
        let lease = match &mut self.lease {
            Some(lease) => lease,
            None => self.lease.insert(self.inner.lease(Access::Read).await?),
        };
        let shared = self.inner.shared;
        let cursor = match self.cursor {
            Some(cursor) => cursor,
            None => {
                let cursor = lease
                    .open_resource(async |api, store| {
                        by_layout!(shared, api, entry_listing | shared_listing => call_constructor(store))
                    })
                    .await?;
                *self.cursor.insert(cursor)
            }
        };
        let batch = lease
            .call(async |api, store| {
                by_layout!(shared, api, entry_listing | shared_listing => call_next_batch(store, cursor, LIST_BATCH))
            })
            .await??;
        Ok(batch.map(|entries| entries.into_iter().map(AgentEntry::from).collect()))
    }
}

impl Drop for Listing {
    fn drop(&mut self) {
        // A cursor still open lives in the instance's store: do not pool it.
        if self.cursor.is_some() {
            if let Some(lease) = &mut self.lease {
                lease.discard();
            }
        }
    }
}

/// How long a call that changes an entry waits, in all, while another call
/// holds the entry's claim (a claim is held for microseconds; a holder that
/// died leaves one that is broken after 10 s).
const CLAIM_WAIT: Duration = Duration::from_secs(2);

/// Makes a call that changes an entry, and makes it again while it reports
/// the entry claimed by another call, for up to [`CLAIM_WAIT`]: the
/// component only spins briefly, so the host sleeps between tries (1 ms,
/// doubling up to 25 ms). Then the last error is returned.
async fn waiting_out_claims<T, F>(mut call: impl FnMut() -> F) -> Result<T, Error>
where
    F: std::future::Future<Output = Result<T, Error>>,
{
    let started = Instant::now();
    let mut pause = Duration::from_millis(1);
    loop {
        match call().await {
            Err(Error::Io(m))
                if agentmux_registry_core::entry::is_busy(&m) && started.elapsed() < CLAIM_WAIT =>
            {
                sleep(pause).await;
                pause = (pause * 2).min(Duration::from_millis(25));
            }
            done => return done,
        }
    }
}

/// Sleeps without holding up an async runtime's worker (on its blocking
/// pool) and without needing its timer; outside a runtime (the blocking API)
/// the calling thread sleeps.
async fn sleep(pause: Duration) {
    match tokio::runtime::Handle::try_current() {
        Ok(runtime) => {
            let _ = runtime
                .spawn_blocking(move || std::thread::sleep(pause))
                .await;
        }
        Err(_) => std::thread::sleep(pause),
    }
}
