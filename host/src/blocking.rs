//! A synchronous [`Registry`] for code that is not async.
//!
//! Each call drives the async call to completion on the calling thread. It
//! never starts or enters a tokio runtime, so it also works from inside one
//! (for example in an axum handler), where it blocks that worker for the
//! duration of the call, as a file read would.

use std::future::Future;
use std::path::Path;
use std::pin::pin;
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};
use std::thread::Thread;
use std::time::Duration;

use crate::{AgentEntry, EntryFields, Error, Graded, Options, Owner, Renewal, SweepProgress};

/// The synchronous twin of [`crate::Registry`]; see there for each method.
#[derive(Clone, Debug)]
pub struct Registry {
    inner: crate::Registry,
}

impl Registry {
    /// Opens the registry of `data_dir`; see [`crate::Registry::open`].
    pub fn open(data_dir: impl AsRef<Path>) -> Result<Registry, Error> {
        crate::Registry::open(data_dir).map(Registry::from)
    }

    /// Opens the registry of `data_dir` with `options`.
    pub fn open_with(data_dir: impl AsRef<Path>, options: Options) -> Result<Registry, Error> {
        crate::Registry::open_with(data_dir, options).map(Registry::from)
    }

    /// Opens the shared registry rooted at `root`; see
    /// [`crate::Registry::open_shared`].
    pub fn open_shared(root: impl AsRef<Path>) -> Result<Registry, Error> {
        crate::Registry::open_shared(root).map(Registry::from)
    }

    /// Opens the shared registry rooted at `root` with `options`.
    pub fn open_shared_with(root: impl AsRef<Path>, options: Options) -> Result<Registry, Error> {
        crate::Registry::open_shared_with(root, options).map(Registry::from)
    }

    /// Opens the registry on etcd; see [`crate::Registry::open_etcd`].
    #[cfg(feature = "etcd")]
    pub fn open_etcd(etcd: &crate::Etcd) -> Result<Registry, Error> {
        crate::Registry::open_etcd(etcd).map(Registry::from)
    }

    /// Opens the registry on etcd with `options`.
    #[cfg(feature = "etcd")]
    pub fn open_etcd_with(etcd: &crate::Etcd, options: Options) -> Result<Registry, Error> {
        crate::Registry::open_etcd_with(etcd, options).map(Registry::from)
    }

    /// Opens the shared registry on etcd; see
    /// [`crate::Registry::open_etcd_shared`].
    #[cfg(feature = "etcd")]
    pub fn open_etcd_shared(etcd: &crate::Etcd) -> Result<Registry, Error> {
        crate::Registry::open_etcd_shared(etcd).map(Registry::from)
    }

    /// Opens the shared registry on etcd with `options`.
    #[cfg(feature = "etcd")]
    pub fn open_etcd_shared_with(etcd: &crate::Etcd, options: Options) -> Result<Registry, Error> {
        crate::Registry::open_etcd_shared_with(etcd, options).map(Registry::from)
    }

    /// See [`crate::Registry::is_etcd`].
    pub fn is_etcd(&self) -> bool {
        self.inner.is_etcd()
    }

    /// See [`crate::Registry::owner_liveness`].
    pub fn owner_liveness(&self, entry: &AgentEntry) -> crate::liveness::Liveness {
        self.inner.owner_liveness(entry)
    }

    /// See [`crate::Registry::graded`].
    pub fn graded(&self, entry: AgentEntry) -> Graded {
        self.inner.graded(entry)
    }

    /// See [`crate::Registry::is_shared`].
    pub fn is_shared(&self) -> bool {
        self.inner.is_shared()
    }

    /// The async registry this wraps.
    pub fn as_async(&self) -> &crate::Registry {
        &self.inner
    }

    /// See [`crate::Registry::write`].
    pub fn write(&self, fields: EntryFields) -> Result<AgentEntry, Error> {
        block_on(self.inner.write(fields))
    }

    /// See [`crate::Registry::renew`].
    pub fn renew(&self, fields: EntryFields) -> Result<Renewal, Error> {
        block_on(self.inner.renew(fields))
    }

    /// See [`crate::Registry::remove`].
    pub fn remove(&self, agent_id: &str) -> Result<bool, Error> {
        block_on(self.inner.remove(agent_id))
    }

    /// See [`crate::Registry::remove_channel`].
    pub fn remove_channel(&self, agent_id: &str, channel: &str) -> Result<bool, Error> {
        block_on(self.inner.remove_channel(agent_id, channel))
    }

    /// See [`crate::Registry::evict`].
    pub fn evict(&self, judged: &AgentEntry) -> Result<bool, Error> {
        block_on(self.inner.evict(judged))
    }

    /// See [`crate::Registry::remove_owned`].
    pub fn remove_owned(&self, agent_id: &str, owner: &Owner) -> Result<bool, Error> {
        block_on(self.inner.remove_owned(agent_id, owner))
    }

    /// See [`crate::Registry::lookup`].
    pub fn lookup(&self, agent_id: &str) -> Result<Option<AgentEntry>, Error> {
        block_on(self.inner.lookup(agent_id))
    }

    /// See [`crate::Registry::lookup_all`].
    pub fn lookup_all(&self, agent_id: &str) -> Result<Vec<AgentEntry>, Error> {
        block_on(self.inner.lookup_all(agent_id))
    }

    /// See [`crate::Registry::list`].
    pub fn list(&self) -> Result<Vec<AgentEntry>, Error> {
        block_on(self.inner.list())
    }

    /// The registry's changes, as an iterator that waits for each: see
    /// [`crate::watch`].
    pub fn watch(&self, start: crate::watch::Start) -> Result<crate::watch::Watch, Error> {
        let stop = std::sync::Arc::new(crate::watch::Stop::new());
        crate::watch::Watch::open(&self.inner, start, stop)
    }

    /// [`Registry::watch`], with rescans `every` instead of every
    /// [`RESCAN_INTERVAL`](crate::watch::RESCAN_INTERVAL) where it rescans:
    /// tests make it long to see that OS notifications alone deliver.
    #[doc(hidden)]
    pub fn watch_rescanning_every(
        &self,
        start: crate::watch::Start,
        every: std::time::Duration,
    ) -> Result<crate::watch::Watch, Error> {
        let stop = std::sync::Arc::new(crate::watch::Stop::new());
        crate::watch::Watch::open_rescanning_every(&self.inner, start, stop, every)
    }

    #[doc(hidden)]
    pub fn serve_lookups_from_notifications_now(&self) -> bool {
        block_on(self.inner.serve_lookups_from_notifications_now())
    }

    #[cfg(feature = "etcd")]
    #[doc(hidden)]
    pub fn etcd_member_in_use(&self) -> Option<usize> {
        self.inner.etcd_member_in_use()
    }

    #[doc(hidden)]
    pub fn lookups_served_from_notifications(&self) -> u64 {
        self.inner.lookups_served_from_notifications()
    }

    /// See [`crate::Registry::lookup_graded`].
    pub fn lookup_graded(&self, agent_id: &str) -> Result<Option<Graded>, Error> {
        block_on(self.inner.lookup_graded(agent_id))
    }

    /// See [`crate::Registry::lookup_all_graded`].
    pub fn lookup_all_graded(&self, agent_id: &str) -> Result<Vec<Graded>, Error> {
        block_on(self.inner.lookup_all_graded(agent_id))
    }

    /// See [`crate::Registry::list_graded`].
    pub fn list_graded(&self) -> Result<Vec<Graded>, Error> {
        block_on(self.inner.list_graded())
    }

    /// See [`crate::Registry::listing`]: an iterator of batches; it ends after
    /// the last batch or the first error.
    pub fn listing(&self) -> Listing {
        Listing(self.inner.listing())
    }

    /// See [`crate::Registry::cleanup_stale`].
    pub fn cleanup_stale(&self, max_age: Duration) -> Result<u64, Error> {
        block_on(self.inner.cleanup_stale(max_age))
    }

    /// See [`crate::Registry::cleanup_stale_with_progress`].
    pub fn cleanup_stale_with_progress(
        &self,
        max_age: Duration,
        progress: impl FnMut(SweepProgress),
    ) -> Result<u64, Error> {
        block_on(self.inner.cleanup_stale_with_progress(max_age, progress))
    }

    /// See [`crate::Registry::lookup_live`].
    pub fn lookup_live(&self, agent_id: &str) -> Result<Option<AgentEntry>, Error> {
        block_on(self.inner.lookup_live(agent_id))
    }

    /// See [`crate::Registry::cleanup_dead_owners`].
    pub fn cleanup_dead_owners(&self) -> Result<u64, Error> {
        block_on(self.inner.cleanup_dead_owners())
    }

    /// See [`crate::Registry::sweep_dead_owners`].
    pub fn sweep_dead_owners(&self) -> Result<SweepProgress, Error> {
        block_on(self.inner.sweep_dead_owners())
    }

    /// See [`crate::Registry::entry_file_name`].
    pub fn entry_file_name(&self, agent_id: &str) -> Result<String, Error> {
        block_on(self.inner.entry_file_name(agent_id))
    }
}

/// The synchronous twin of [`crate::Listing`]: yields batches of entries.
#[derive(Debug)]
pub struct Listing(crate::Listing);

impl Iterator for Listing {
    type Item = Result<Vec<AgentEntry>, Error>;

    fn next(&mut self) -> Option<Self::Item> {
        block_on(self.0.next_batch()).transpose()
    }
}

impl From<crate::Registry> for Registry {
    fn from(inner: crate::Registry) -> Self {
        Registry { inner }
    }
}

/// Wakes the blocked thread.
struct Unpark(Thread);

impl Wake for Unpark {
    fn wake(self: Arc<Self>) {
        self.0.unpark();
    }
}

/// Polls `future` to completion on this thread, parking while it is pending.
/// Registry calls normally complete on the first poll (file calls run inline);
/// a pending poll is woken by whichever thread finishes the awaited work.
pub(crate) fn block_on<F: Future>(future: F) -> F::Output {
    let waker = Waker::from(Arc::new(Unpark(std::thread::current())));
    let mut cx = Context::from_waker(&waker);
    let mut future = pin!(future);
    loop {
        if let Poll::Ready(out) = future.as_mut().poll(&mut cx) {
            return out;
        }
        std::thread::park();
    }
}
