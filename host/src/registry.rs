//! [`Registry`]: the async handle on one data dir's agents directory.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::agents_dir::AgentsDir;
use crate::liveness::{owner_liveness, Liveness};
use crate::runtime::{Instance, Runtime};
use crate::{AgentEntry, Error};

/// Instances kept warm per registry, for concurrent callers.
const MAX_IDLE_INSTANCES: usize = 16;

/// Settings for [`Registry::open_with`].
#[derive(Clone, Debug)]
pub struct Options {
    call_timeout: Duration,
    memory_limit: usize,
    component: Option<Arc<[u8]>>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            call_timeout: Duration::from_secs(30),
            memory_limit: 256 << 20,
            component: None,
        }
    }
}

impl Options {
    /// Default options: 30 s per call, 256 MiB of guest memory, the embedded
    /// component.
    pub fn new() -> Self {
        Self::default()
    }

    /// How long one call may run before it is stopped with [`Error::Timeout`].
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
    /// `agentmux:registry/registry@0.1.0` interface and import only WASI; it
    /// is compiled when the registry is opened.
    pub fn component(mut self, component: impl Into<Vec<u8>>) -> Self {
        self.component = Some(component.into().into());
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
    inner: Arc<Inner>,
}

struct Inner {
    data_dir: PathBuf,
    runtime: Arc<Runtime>,
    call_timeout: Duration,
    memory_limit: usize,
    state: Mutex<State>,
}

struct State {
    dir: Arc<AgentsDir>,
    idle: Vec<Instance>,
    /// When `dir` was last checked against `{data_dir}/agents`.
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

impl Registry {
    /// Opens the registry of `data_dir` (the agents live in
    /// `{data_dir}/agents`, which is created, mode 0700, when missing).
    pub fn open(data_dir: impl AsRef<Path>) -> Result<Registry, Error> {
        Self::open_with(data_dir, Options::default())
    }

    /// Opens the registry of `data_dir` with `options`.
    pub fn open_with(data_dir: impl AsRef<Path>, options: Options) -> Result<Registry, Error> {
        let data_dir = data_dir.as_ref().to_path_buf();
        let runtime = match &options.component {
            None => Runtime::embedded()?,
            Some(bytes) => Arc::new(Runtime::new(bytes)?),
        };
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

    /// Creates or replaces the entry of `agent_id`, stamped with the current
    /// time and with the start time of process `pid` (so a later reuse of the
    /// pid is not mistaken for the owner), and returns it as stored. The entry
    /// file is made readable by its owner only.
    pub async fn write(
        &self,
        agent_id: &str,
        local_url: &str,
        block_id: &str,
        pid: u32,
        auth_key: &str,
    ) -> Result<AgentEntry, Error> {
        let pid_started = crate::liveness::process_start(pid);
        let mut lease = self.inner.lease(Access::Write).await?;
        let (written, name) = {
            let inst = lease.instance();
            let api = inst.bindings.agentmux_registry_registry();
            let written = api
                .call_write(
                    &mut inst.store,
                    agent_id,
                    local_url,
                    block_id,
                    pid,
                    auth_key,
                    pid_started,
                )
                .await;
            let name = match &written {
                Ok(Ok(_)) => Some(api.call_entry_file_name(&mut inst.store, agent_id).await),
                _ => None,
            };
            (written, name)
        };
        let entry = lease.finish(written)??;
        if let Some(name) = name {
            let name = lease.finish(name)??;
            lease.dir.restrict_entry(&name)?;
        }
        Ok(entry.into())
    }

    /// Removes the entry of `agent_id`; true when there was one.
    pub async fn remove(&self, agent_id: &str) -> Result<bool, Error> {
        let mut lease = self.inner.lease(Access::Write).await?;
        let inst = lease.instance();
        let api = inst.bindings.agentmux_registry_registry();
        let out = api.call_remove(&mut inst.store, agent_id).await;
        Ok(lease.finish(out)??)
    }

    /// Removes the entry of `agent_id` only while it is still the registration
    /// of process `pid` with `auth_key`; true when removed. A successor's
    /// registration under the same id is left alone.
    pub async fn remove_owned(
        &self,
        agent_id: &str,
        pid: u32,
        auth_key: &str,
    ) -> Result<bool, Error> {
        let mut lease = self.inner.lease(Access::Write).await?;
        let inst = lease.instance();
        let api = inst.bindings.agentmux_registry_registry();
        let out = api
            .call_remove_owned(&mut inst.store, agent_id, pid, auth_key)
            .await;
        Ok(lease.finish(out)??)
    }

    /// The entry of `agent_id`, or `None` when there is no valid one.
    pub async fn lookup(&self, agent_id: &str) -> Result<Option<AgentEntry>, Error> {
        let mut lease = self.inner.lease(Access::Read).await?;
        let inst = lease.instance();
        let api = inst.bindings.agentmux_registry_registry();
        let out = api.call_lookup(&mut inst.store, agent_id).await;
        Ok(lease.finish(out)??.map(AgentEntry::from))
    }

    /// Every valid entry, sorted by agent id.
    pub async fn list(&self) -> Result<Vec<AgentEntry>, Error> {
        let mut lease = self.inner.lease(Access::Read).await?;
        let inst = lease.instance();
        let api = inst.bindings.agentmux_registry_registry();
        let out = api.call_list(&mut inst.store).await;
        Ok(lease
            .finish(out)??
            .into_iter()
            .map(AgentEntry::from)
            .collect())
    }

    /// Removes entries last written more than `max_age` ago, malformed entry
    /// files, names that are not regular single-link files, and debris of
    /// interrupted writes. Returns how many names were removed.
    pub async fn cleanup_stale(&self, max_age: Duration) -> Result<u32, Error> {
        let max_age_ms = u64::try_from(max_age.as_millis()).unwrap_or(u64::MAX);
        let mut lease = self.inner.lease(Access::Write).await?;
        let inst = lease.instance();
        let api = inst.bindings.agentmux_registry_registry();
        let out = api.call_cleanup_stale(&mut inst.store, max_age_ms).await;
        Ok(lease.finish(out)??)
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

    /// Removes every entry whose owning process is known to be dead, each by
    /// compare-and-remove (so an entry re-registered meanwhile stays).
    /// Returns how many were removed.
    pub async fn cleanup_dead_owners(&self) -> Result<u32, Error> {
        let mut removed = 0;
        for entry in self.list().await? {
            if owner_liveness(&entry) == Liveness::Dead
                && self
                    .remove_owned(&entry.agent_id, entry.pid, &entry.auth_key)
                    .await?
            {
                removed += 1;
            }
        }
        Ok(removed)
    }

    /// The name of `agent_id`'s entry file inside [`Registry::agents_dir`].
    pub async fn entry_file_name(&self, agent_id: &str) -> Result<String, Error> {
        let mut lease = self.inner.lease(Access::Read).await?;
        let inst = lease.instance();
        let api = inst.bindings.agentmux_registry_registry();
        let out = api.call_entry_file_name(&mut inst.store, agent_id).await;
        Ok(lease.finish(out)??)
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

    /// An instance for one call. If `{data_dir}/agents` was deleted or
    /// replaced since it was opened, it is opened (and created) afresh: before
    /// every call that changes the directory, so no write ever lands in a
    /// directory nobody else can see; before read-only calls at most every
    /// [`READ_RECHECK`], since a stale read can only miss entries.
    async fn lease(&self, access: Access) -> Result<Lease<'_>, Error> {
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
        let mut instance = match idle {
            Some(instance) => instance,
            None => {
                self.runtime
                    .instantiate(&dir.preopen_path(), self.memory_limit)
                    .await?
            }
        };
        instance.arm(self.call_timeout);
        Ok(Lease {
            inner: self,
            dir,
            instance: Some(instance),
            reusable: false,
        })
    }
}

/// An instance checked out for one call. It goes back to the pool only if the
/// call completed: one that trapped, or whose call was cancelled mid-way, may
/// be in any state and is dropped.
struct Lease<'a> {
    inner: &'a Inner,
    dir: Arc<AgentsDir>,
    instance: Option<Instance>,
    reusable: bool,
}

impl Lease<'_> {
    fn instance(&mut self) -> &mut Instance {
        self.reusable = false;
        self.instance.as_mut().expect("present until drop")
    }

    /// Converts a call's outcome; a trap becomes the matching [`Error`].
    fn finish<T>(&mut self, out: wasmtime::Result<T>) -> Result<T, Error> {
        match out {
            Ok(value) => {
                self.reusable = true;
                Ok(value)
            }
            Err(err) => {
                let instance = self.instance.as_ref().expect("present until drop");
                Err(instance.call_error(err, self.inner.call_timeout))
            }
        }
    }
}

impl Drop for Lease<'_> {
    fn drop(&mut self) {
        if !self.reusable {
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
