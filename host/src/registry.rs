//! [`Registry`]: the async handle on one data dir's agents directory.
//!
//! Every guest call goes through one funnel, [`Lease::call`]: it arms that
//! call's own deadline, maps a trap to the matching [`Error`], and decides
//! whether the instance may go back to the pool (only after every call made
//! on it completed successfully).

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use agentmux_registry_core::entry::file_name_of;
use wasmtime::component::ResourceAny;

use crate::agents_dir::AgentsDir;
use crate::bindings::exports::agentmux::registry::registry as wit;
use crate::heartbeat::Heartbeats;
use crate::liveness::{owner_liveness, Liveness};
use crate::runtime::{Instance, Runtime};
use crate::{AgentEntry, EntryFields, Error, Owner};

/// Instances kept warm per registry, for concurrent callers.
const MAX_IDLE_INSTANCES: usize = 16;

/// Entries per guest call when listing: bounds the guest's memory (a valid
/// entry is at most about 4 KiB) and the time of each call.
const LIST_BATCH: u32 = 256;

/// Names looked at per guest call when sweeping.
const SWEEP_BATCH: u32 = 256;

/// Settings for [`Registry::open_with`].
#[derive(Clone, Debug)]
pub struct Options {
    call_timeout: Duration,
    memory_limit: usize,
    #[cfg(feature = "custom-components")]
    component: Option<Arc<[u8]>>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            call_timeout: Duration::from_secs(30),
            memory_limit: 256 << 20,
            #[cfg(feature = "custom-components")]
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

    /// Runs this component instead of the embedded one. It must export the
    /// `agentmux:registry/registry@0.2.0` interface and import only WASI; it
    /// is compiled (in this process, with Cranelift) when the registry is
    /// opened. Needs the `custom-components` feature.
    #[cfg(feature = "custom-components")]
    pub fn component(mut self, component: impl Into<Vec<u8>>) -> Self {
        self.component = Some(component.into().into());
        self
    }
}

/// What [`Registry::renew`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Renewal {
    /// The entry was this registration's and was rewritten.
    Refreshed,
    /// There was no entry (or only a malformed file): it was written anew.
    Restored,
    /// Another registration owns the id now; nothing was changed.
    Superseded,
}

/// How far a sweep has come; see [`Registry::cleanup_stale_with_progress`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SweepProgress {
    /// Directory names looked at so far.
    pub examined: u64,
    /// Directory names removed so far.
    pub removed: u64,
    /// Names that could not be read or removed so far (for example,
    /// permission denied); they stay for the next sweep. A name another
    /// instance removed or rewrote meanwhile is not a failure.
    pub failed: u64,
    /// Why the first of the `failed` names failed.
    pub first_failure: Option<String>,
    /// True once every name was looked at.
    pub done: bool,
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

pub(crate) struct Inner {
    data_dir: PathBuf,
    runtime: Arc<Runtime>,
    call_timeout: Duration,
    memory_limit: usize,
    state: Mutex<State>,
    /// The one heartbeat driver serving every [`crate::Registration`].
    pub(crate) heartbeats: Heartbeats,
}

struct State {
    dir: Arc<AgentsDir>,
    idle: Vec<Instance>,
    /// When `dir` was last checked against the data dir's path.
    checked: Instant,
}

/// Whether a call may change the agents directory.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Access {
    Read,
    Write,
}

/// How stale the directory check may be before a read-only call.
const READ_RECHECK: Duration = Duration::from_millis(100);

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registry")
            .field("data_dir", &self.inner.data_dir)
            .finish_non_exhaustive()
    }
}

fn fields_out(f: &EntryFields) -> wit::EntryFields {
    wit::EntryFields {
        agent_id: f.agent_id.clone(),
        local_url: f.local_url.clone(),
        block_id: f.block_id.clone(),
        pid: f.pid,
        auth_key: f.auth_key.clone(),
        pid_started: f.pid_started,
        pid_namespace: f.pid_namespace,
        registration: f.registration.clone(),
    }
}

fn entry_in(e: wit::AgentEntry) -> AgentEntry {
    AgentEntry {
        agent_id: e.agent_id,
        local_url: e.local_url,
        block_id: e.block_id,
        pid: e.pid,
        updated_at: e.updated_at,
        auth_key: e.auth_key,
        pid_started: e.pid_started,
        pid_namespace: e.pid_namespace,
        registration: e.registration,
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
        // seen stays byte-identical to the historical format.
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
        let data_dir = data_dir.as_ref().to_path_buf();
        #[cfg(feature = "custom-components")]
        let runtime = match &options.component {
            None => Runtime::embedded()?,
            Some(bytes) => Arc::new(Runtime::new(bytes)?),
        };
        #[cfg(not(feature = "custom-components"))]
        let runtime = Runtime::embedded()?;
        let dir = Arc::new(AgentsDir::open(&data_dir)?);
        Ok(Registry {
            inner: Arc::new(Inner {
                data_dir,
                runtime,
                call_timeout: options.call_timeout,
                memory_limit: options.memory_limit,
                state: Mutex::new(State {
                    dir,
                    idle: Vec::new(),
                    checked: Instant::now(),
                }),
                heartbeats: Heartbeats::default(),
            }),
        })
    }

    /// The data dir this registry was opened on.
    pub fn data_dir(&self) -> &Path {
        &self.inner.data_dir
    }

    /// `{data_dir}/agents`, the only directory the component can reach.
    pub fn agents_dir(&self) -> PathBuf {
        self.inner.lock().dir.path().to_path_buf()
    }

    /// Creates or replaces the entry of `fields.agent_id` and returns it as
    /// stored. When `fields.pid` is a running process and its start time or
    /// pid namespace are not given, they are recorded (so a later reuse of
    /// the pid is not mistaken for the owner). The entry file is made
    /// readable by its owner only.
    pub async fn write(&self, fields: EntryFields) -> Result<AgentEntry, Error> {
        let fields = fields_out(&with_owner_facts(fields));
        waiting_out_claims(|| self.write_once(&fields)).await
    }

    async fn write_once(&self, fields: &wit::EntryFields) -> Result<AgentEntry, Error> {
        let mut lease = self.inner.lease(Access::Write).await?;
        let entry = lease
            .call(async |api, store| api.call_write(store, fields).await)
            .await??;
        lease.restrict(&entry.agent_id)?;
        Ok(entry_in(entry))
    }

    /// One atomic heartbeat step for the registration `fields.registration`:
    /// refreshes the entry if it is still this registration's, restores it if
    /// it is missing, and changes nothing if another registration owns the
    /// id (see the WIT contract's `renew`). [`crate::Registration`] calls this
    /// for you.
    pub async fn renew(&self, fields: EntryFields) -> Result<Renewal, Error> {
        let fields = fields_out(&with_owner_facts(fields));
        waiting_out_claims(|| self.renew_once(&fields)).await
    }

    async fn renew_once(&self, fields: &wit::EntryFields) -> Result<Renewal, Error> {
        let mut lease = self.inner.lease(Access::Write).await?;
        let renewal = lease
            .call(async |api, store| api.call_renew(store, fields).await)
            .await??;
        let renewal = match renewal {
            wit::Renewal::Refreshed => Renewal::Refreshed,
            wit::Renewal::Restored => Renewal::Restored,
            wit::Renewal::Superseded => Renewal::Superseded,
        };
        if renewal != Renewal::Superseded {
            lease.restrict(&fields.agent_id)?;
        }
        Ok(renewal)
    }

    /// Removes the entry of `agent_id`; true when there was one.
    pub async fn remove(&self, agent_id: &str) -> Result<bool, Error> {
        waiting_out_claims(|| self.remove_once(agent_id)).await
    }

    async fn remove_once(&self, agent_id: &str) -> Result<bool, Error> {
        let mut lease = self.inner.lease(Access::Write).await?;
        Ok(lease
            .call(async |api, store| api.call_remove(store, agent_id).await)
            .await??)
    }

    /// Removes the entry of `agent_id` only while it is still the
    /// registration `owner` names (pid, auth key and registration token);
    /// true when removed. A successor's registration under the same id is
    /// left alone. To evict an entry you looked up, pass
    /// [`Owner::of`]`(&entry)`.
    pub async fn remove_owned(&self, agent_id: &str, owner: &Owner) -> Result<bool, Error> {
        let owner = wit::Owner {
            pid: owner.pid,
            auth_key: owner.auth_key.clone(),
            registration: owner.registration.clone(),
        };
        waiting_out_claims(|| self.remove_owned_once(agent_id, &owner)).await
    }

    async fn remove_owned_once(&self, agent_id: &str, owner: &wit::Owner) -> Result<bool, Error> {
        let mut lease = self.inner.lease(Access::Write).await?;
        Ok(lease
            .call(async |api, store| api.call_remove_owned(store, agent_id, owner).await)
            .await??)
    }

    /// The entry of `agent_id`, or `None` when there is no valid one.
    pub async fn lookup(&self, agent_id: &str) -> Result<Option<AgentEntry>, Error> {
        let mut lease = self.inner.lease(Access::Read).await?;
        let found = lease
            .call(async |api, store| api.call_lookup(store, agent_id).await)
            .await??;
        Ok(found.map(entry_in))
    }

    /// Every valid entry, sorted by agent id. The component's memory stays
    /// bounded whatever the directory holds (entries cross a batch at a
    /// time); the result itself is held here. Use [`Registry::listing`] to go
    /// through a large registry without holding it.
    pub async fn list(&self) -> Result<Vec<AgentEntry>, Error> {
        let mut listing = self.listing();
        let mut entries = Vec::new();
        while let Some(batch) = listing.next_batch().await? {
            entries.extend(batch);
        }
        entries.sort_by(|a, b| a.agent_id.cmp(&b.agent_id));
        Ok(entries)
    }

    /// A pass over every valid entry in directory order, a batch at a time;
    /// memory stays bounded by the batch size. Each batch is one guest call
    /// with its own deadline.
    pub fn listing(&self) -> Listing {
        Listing {
            inner: self.inner.clone(),
            lease: None,
            cursor: None,
            done: false,
        }
    }

    /// How many idle component instances the registry keeps for reuse
    /// (for tests: an instance that may hold a guest's state must never be
    /// among them).
    #[doc(hidden)]
    pub fn pooled_instances(&self) -> usize {
        self.inner.lock().idle.len()
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
        let max_age_ms = u64::try_from(max_age.as_millis()).unwrap_or(u64::MAX);
        let mut lease = self.inner.lease(Access::Write).await?;
        let sweep = lease
            .open_resource(async |api, store| api.sweep().call_constructor(store, max_age_ms).await)
            .await?;
        loop {
            let p = lease
                .call(async |api, store| {
                    api.sweep().call_next_batch(store, sweep, SWEEP_BATCH).await
                })
                .await??;
            let p = SweepProgress {
                examined: p.examined,
                removed: p.removed,
                failed: p.failed,
                first_failure: p.first_failure,
                done: p.done,
            };
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

    /// Like [`Registry::lookup`], but `None` when the entry's owning process
    /// is known to be dead (see [`crate::liveness`]). The entry is left in
    /// place; [`Registry::cleanup_dead_owners`] removes such entries.
    pub async fn lookup_live(&self, agent_id: &str) -> Result<Option<AgentEntry>, Error> {
        Ok(self
            .lookup(agent_id)
            .await?
            .filter(|e| owner_liveness(e) != Liveness::Dead))
    }

    /// Removes every entry whose owning process is provably dead, each by
    /// compare-and-remove (so an entry re-registered meanwhile stays).
    /// Returns how many were removed.
    pub async fn cleanup_dead_owners(&self) -> Result<u64, Error> {
        let mut removed = 0;
        let mut listing = self.listing();
        while let Some(batch) = listing.next_batch().await? {
            for entry in batch {
                if owner_liveness(&entry) == Liveness::Dead
                    && self
                        .remove_owned(&entry.agent_id, &Owner::of(&entry))
                        .await?
                {
                    removed += 1;
                }
            }
        }
        Ok(removed)
    }

    /// The name of `agent_id`'s entry file inside [`Registry::agents_dir`].
    pub async fn entry_file_name(&self, agent_id: &str) -> Result<String, Error> {
        let mut lease = self.inner.lease(Access::Read).await?;
        Ok(lease
            .call(async |api, store| api.call_entry_file_name(store, agent_id).await)
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
        let lease = match &mut self.lease {
            Some(lease) => lease,
            None => self.lease.insert(self.inner.lease(Access::Read).await?),
        };
        let cursor = match self.cursor {
            Some(cursor) => cursor,
            None => {
                let cursor = lease
                    .open_resource(async |api, store| {
                        api.entry_listing().call_constructor(store).await
                    })
                    .await?;
                *self.cursor.insert(cursor)
            }
        };
        let batch = lease
            .call(async |api, store| {
                api.entry_listing()
                    .call_next_batch(store, cursor, LIST_BATCH)
                    .await
            })
            .await??;
        Ok(batch.map(|entries| entries.into_iter().map(entry_in).collect()))
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

impl Inner {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic while holding the lock leaves the state consistent (a
        // directory handle and a list of idle instances).
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// An instance for one operation. If the agents directory (or the data
    /// dir holding it) was deleted or replaced since it was opened, it is
    /// opened (and created) afresh: before every call that changes the
    /// directory, so no write ever lands in a directory nobody else can see;
    /// before read-only calls at most every [`READ_RECHECK`], since a stale
    /// read can only miss entries.
    async fn lease(self: &Arc<Self>, access: Access) -> Result<Lease, Error> {
        let (dir, idle) = {
            let mut state = self.lock();
            let due = access == Access::Write || state.checked.elapsed() >= READ_RECHECK;
            if due {
                if !state.dir.is_current() {
                    state.dir = Arc::new(AgentsDir::open(&self.data_dir)?);
                    state.idle.clear();
                }
                state.checked = Instant::now();
            }
            (state.dir.clone(), state.idle.pop())
        };
        let instance = match idle {
            Some(instance) => instance,
            None => {
                self.runtime
                    .instantiate(&dir.preopen_path(), self.memory_limit)
                    .await?
            }
        };
        Ok(Lease {
            inner: self.clone(),
            dir,
            instance: Some(instance),
            failed: false,
            in_call: false,
            open_resources: 0,
        })
    }
}

/// An instance checked out for one operation. It goes back to the pool only
/// if every call made on it completed successfully: one that trapped, or
/// whose call was cancelled mid-way, may be in any state and is dropped.
struct Lease {
    inner: Arc<Inner>,
    dir: Arc<AgentsDir>,
    instance: Option<Instance>,
    /// A call on this instance trapped, or it holds state that must not be
    /// pooled.
    failed: bool,
    /// A call started and has not completed (its future was dropped).
    in_call: bool,
    /// Resources the guest created for this lease and that were not dropped
    /// yet (a sweep or listing cursor holds a directory stream): an instance
    /// holding any is never pooled, whatever ended the operation (an error,
    /// a panic in a caller's closure, a dropped future).
    open_resources: usize,
}

/// The registry interface's call handles.
type Api = wit::Guest;

impl Lease {
    /// Makes one guest call: the only place that arms a deadline, runs guest
    /// code and maps its traps. `call` gets the interface and the store.
    async fn call<T>(
        &mut self,
        call: impl AsyncFnOnce(
            &Api,
            &mut wasmtime::Store<crate::runtime::HostState>,
        ) -> wasmtime::Result<T>,
    ) -> Result<T, Error> {
        let timeout = self.inner.call_timeout;
        let instance = self.instance.as_mut().expect("present until drop");
        instance.arm(timeout);
        self.in_call = true;
        let api = instance.bindings.agentmux_registry_registry();
        let out = call(api, &mut instance.store).await;
        self.in_call = false;
        out.map_err(|err| {
            self.failed = true;
            instance.call_error(err, timeout)
        })
    }

    /// Makes a call that creates a guest resource, counted as open until
    /// [`Lease::drop_resource`] frees it.
    async fn open_resource(
        &mut self,
        call: impl AsyncFnOnce(
            &Api,
            &mut wasmtime::Store<crate::runtime::HostState>,
        ) -> wasmtime::Result<ResourceAny>,
    ) -> Result<ResourceAny, Error> {
        let resource = self.call(call).await?;
        self.open_resources += 1;
        Ok(resource)
    }

    /// Frees a resource the guest created for this lease's operation.
    async fn drop_resource(&mut self, resource: ResourceAny) -> Result<(), Error> {
        self.call(async |_, store| resource.resource_drop_async(store).await)
            .await?;
        self.open_resources = self.open_resources.saturating_sub(1);
        Ok(())
    }

    /// Keeps this instance out of the pool.
    fn discard(&mut self) {
        self.failed = true;
    }

    /// Makes `agent_id`'s entry file private to its owner (what WASI cannot
    /// express). The name comes from the rule the component follows.
    fn restrict(&self, agent_id: &str) -> Result<(), Error> {
        match file_name_of(agent_id) {
            Ok(name) => self.dir.restrict_entry(&name),
            Err(_) => Ok(()),
        }
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        if self.failed || self.in_call || self.open_resources > 0 {
            return;
        }
        if let Some(instance) = self.instance.take() {
            let mut state = self.inner.lock();
            if Arc::ptr_eq(&state.dir, &self.dir) && state.idle.len() < MAX_IDLE_INSTANCES {
                state.idle.push(instance);
            }
        }
    }
}
