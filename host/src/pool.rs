//! The pool of component instances behind a [`crate::Registry`], and
//! [`Lease`], an instance checked out for one operation.
//!
//! Every guest call goes through one funnel, [`Lease::call`]: it arms that
//! call's own deadline, maps a trap to the matching [`Error`], and decides
//! whether the instance may go back to the pool (only after every call made
//! on it completed successfully).

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use agentmux_registry_core::entry::file_name_of;
use agentmux_registry_core::name::agent_dir_name;
use wasmtime::component::ResourceAny;

use crate::agents_dir::AgentsDir;
use crate::heartbeat::Heartbeats;
use crate::runtime::{Instance, Runtime};
use crate::Error;

/// Instances kept warm per registry, for concurrent callers.
const MAX_IDLE_INSTANCES: usize = 16;

/// What every clone of a [`crate::Registry`] shares: its settings, its
/// agents directory and its pool of idle instances.
pub(crate) struct Inner {
    pub(crate) data_dir: PathBuf,
    /// Whether the directory is a shared root (see `Registry::open_shared`).
    pub(crate) shared: bool,
    runtime: Arc<Runtime>,
    call_timeout: Duration,
    memory_limit: usize,
    state: Mutex<State>,
    /// The one heartbeat driver serving every [`crate::Registration`].
    pub(crate) heartbeats: Heartbeats,
    /// Whether lookups may be served from notifications.
    pub(crate) lookups_from_notifications: bool,
    /// What lookups are served from.
    pub(crate) served: crate::feed::Serving,
    /// Lookups answered from notifications (see
    /// `Registry::lookups_served_from_notifications`).
    pub(crate) served_from_notifications: std::sync::atomic::AtomicU64,
    /// The etcd backend of a registry opened on etcd, which serves every
    /// call instead of the directory (there is none: no call leases an
    /// instance of the file component).
    #[cfg(feature = "etcd")]
    pub(crate) kv: Option<Arc<crate::kv::Backend>>,
}

struct State {
    /// `None` on etcd.
    dir: Option<Arc<AgentsDir>>,
    idle: Vec<Instance>,
    /// When `dir` was last checked against the data dir's path.
    checked: Instant,
}

/// Whether a call may change the agents directory.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Access {
    Read,
    Write,
}

/// How stale the directory check may be before a read-only call.
const READ_RECHECK: Duration = Duration::from_millis(100);

impl Inner {
    pub(crate) fn new(
        data_dir: PathBuf,
        dir: Option<AgentsDir>,
        runtime: Arc<Runtime>,
        call_timeout: Duration,
        memory_limit: usize,
        lookups_from_notifications: bool,
        shared: bool,
    ) -> Inner {
        Inner {
            data_dir,
            shared,
            runtime,
            call_timeout,
            memory_limit,
            state: Mutex::new(State {
                dir: dir.map(Arc::new),
                idle: Vec::new(),
                checked: Instant::now(),
            }),
            heartbeats: Heartbeats::default(),
            lookups_from_notifications,
            served: crate::feed::Serving::default(),
            served_from_notifications: std::sync::atomic::AtomicU64::new(0),
            #[cfg(feature = "etcd")]
            kv: None,
        }
    }

    /// The agents directory as last opened (empty on etcd).
    pub(crate) fn agents_dir(&self) -> PathBuf {
        self.lock()
            .dir
            .as_ref()
            .map(|dir| dir.path().to_path_buf())
            .unwrap_or_default()
    }

    /// How many idle instances are pooled.
    pub(crate) fn pooled_instances(&self) -> usize {
        self.lock().idle.len()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic while holding the lock leaves the state consistent (a
        // directory handle and a list of idle instances).
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Makes the next call check whether the agents directory was replaced,
    /// whatever it does (a notification said it may have been).
    #[cfg_attr(not(target_os = "linux"), allow(dead_code))]
    pub(crate) fn recheck_dir(&self) {
        let mut state = self.lock();
        if let Some(long_ago) = Instant::now().checked_sub(READ_RECHECK) {
            state.checked = long_ago;
        }
    }

    /// An instance for one operation. If the agents directory (or the data
    /// dir holding it) was deleted or replaced since it was opened, it is
    /// opened (and created) afresh: before every call that changes the
    /// directory, so no write ever lands in a directory nobody else can see;
    /// before read-only calls at most every [`READ_RECHECK`], since a stale
    /// read can only miss entries.
    pub(crate) async fn lease(self: &Arc<Self>, access: Access) -> Result<Lease, Error> {
        let (dir, idle) = {
            let mut state = self.lock();
            let Some(mut dir) = state.dir.clone() else {
                return Err(Error::Io(
                    "this registry has no directory (it is on etcd)".into(),
                ));
            };
            let due = access == Access::Write || state.checked.elapsed() >= READ_RECHECK;
            if due {
                if !dir.is_current() {
                    dir = Arc::new(dir.reopen()?);
                    state.dir = Some(dir.clone());
                    state.idle.clear();
                }
                state.checked = Instant::now();
            }
            (dir, state.idle.pop())
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
pub(crate) struct Lease {
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

/// The component's call handles: both interfaces of its world.
type Api = crate::bindings::AgentRegistry;

impl Lease {
    /// Makes one guest call: the only place that arms a deadline, runs guest
    /// code and maps its traps. `call` gets the interface and the store.
    pub(crate) async fn call<T>(
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
        let out = call(&instance.bindings, &mut instance.store).await;
        self.in_call = false;
        out.map_err(|err| {
            self.failed = true;
            instance.call_error(err, timeout)
        })
    }

    /// Makes a call that creates a guest resource, counted as open until
    /// [`Lease::drop_resource`] frees it.
    pub(crate) async fn open_resource(
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
    pub(crate) async fn drop_resource(&mut self, resource: ResourceAny) -> Result<(), Error> {
        self.call(async |_, store| resource.resource_drop_async(store).await)
            .await?;
        self.open_resources = self.open_resources.saturating_sub(1);
        Ok(())
    }

    /// Keeps this instance out of the pool.
    pub(crate) fn discard(&mut self) {
        self.failed = true;
    }

    /// Makes `agent_id`'s entry file (and in a shared registry its agent
    /// directory) private to its owner: what WASI cannot express. The names
    /// come from the rules the component follows.
    pub(crate) fn restrict(&self, agent_id: &str, channel: &str) -> Result<(), Error> {
        if !self.inner.shared {
            return match file_name_of(agent_id) {
                Ok(name) => self.dir.restrict_entry(&name),
                Err(_) => Ok(()),
            };
        }
        let (Ok(dir), Ok(file)) = (agent_dir_name(agent_id), file_name_of(channel)) else {
            return Ok(());
        };
        self.dir.restrict_dir(&dir)?;
        self.dir.restrict_entry(&format!("{dir}/{file}"))
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        if self.failed || self.in_call || self.open_resources > 0 {
            return;
        }
        if let Some(instance) = self.instance.take() {
            let mut state = self.inner.lock();
            let current = state
                .dir
                .as_ref()
                .is_some_and(|dir| Arc::ptr_eq(dir, &self.dir));
            if current && state.idle.len() < MAX_IDLE_INSTANCES {
                state.idle.push(instance);
            }
        }
    }
}
