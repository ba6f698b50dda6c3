//! The registry's change feed: [`Watch`] (blocking) and [`WatchStream`]
//! (async).
//!
//! The host learns *which names* changed from the OS; the component says
//! *what they mean*: which id's entry a changed name holds (`entries-at`),
//! and what each concerned id's entry now is (`lookup`, or
//! `lookup-all-shared`), by the same rules every lookup follows. A burst of
//! changes to one id is delivered as one event with its final state.
//!
//! Where notifications come from (see [`Notifications`]):
//! - **Linux, local file systems**: inotify on the agents directory (and, in
//!   a shared registry, on each agent directory), plus its parent, so that a
//!   replaced or renamed agents directory is followed. A notification is
//!   queued inside the call that changed the name, so no change is missed;
//!   a queue overflow (the kernel drops notifications when the watcher falls
//!   behind) is answered with a [`Change::Resync`] carrying the full set.
//! - **macOS and Windows**: `kqueue` on the agents directory (and each agent
//!   directory in a shared registry), `ReadDirectoryChangesW` on the agents
//!   directory and below. A notification starts a rescan at once, compared
//!   with the last; a rescan every [`RESCAN_INTERVAL`] catches what they do
//!   not notify (an overflowed buffer, a replaced directory).
//! - **Everywhere else** (network or FUSE file systems on Linux, whose changes
//!   made by other machines raise no notification): rescans every
//!   [`RESCAN_INTERVAL`], each compared with the last.
//!
//! Changes between two rescans are coalesced; none is missed for longer
//! than one interval.

use std::collections::{BTreeMap, HashSet, VecDeque};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use crate::blocking::block_on;
use crate::feed::{differences, entries_of, read_all, Names, View};
use crate::{AgentEntry, Error, Registry};

/// How often a watch without exact OS notifications rescans the directory.
pub const RESCAN_INTERVAL: Duration = Duration::from_secs(1);

/// How long a notified rescan waits for the rest of a burst (a write is a
/// temporary file, its rename and a claim: several notifications).
const NOTIFIED_SETTLE: Duration = Duration::from_millis(5);

/// One change of the registry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// An entry was created or changed: its id's (in a shared registry, its
    /// id's and channel's) entry is now this one.
    Put(AgentEntry),
    /// The id (and channel, in a shared registry; empty otherwise) has no
    /// entry any more.
    Removed {
        /// The id, as its last entry spelled it.
        agent_id: String,
        /// The channel, as its last entry spelled it; empty in a per-channel
        /// registry.
        channel: String,
    },
    /// Notifications were lost (a queue overflow) or the directory was
    /// replaced: this is the full current set, replacing everything known
    /// before.
    Resync(Vec<AgentEntry>),
}

/// Where a watch starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Start {
    /// With a [`Change::Put`] for every current entry, then the changes.
    Current,
    /// With the changes made from now on.
    Now,
}

/// How a watch learns of changes (see the [module](self) documentation).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Notifications {
    /// The OS (or, on etcd, the cluster's watch) notifies every change as it
    /// is made.
    Exact,
    /// The directory is rescanned every interval.
    Rescans(Duration),
    /// The OS says that something changed, which starts a rescan at once;
    /// a rescan every interval remains for what it does not say (its
    /// overflowed buffer, a replaced directory).
    Prompted(Duration),
}

/// Tells a watch's waits to end, or that the OS notified a change.
pub(crate) struct Stop {
    state: Mutex<Waking>,
    woken: Condvar,
    /// A pipe whose write end [`Stop::stop`] closes, to wake a poll.
    #[cfg(target_os = "linux")]
    pipe: Option<(std::os::fd::OwnedFd, Mutex<Option<std::os::fd::OwnedFd>>)>,
}

#[derive(Default)]
struct Waking {
    stopped: bool,
    nudged: bool,
}

/// Why [`Stop::wait`] returned.
#[derive(Debug, PartialEq, Eq)]
enum Woken {
    Stopped,
    Nudged,
    TimedOut,
}

impl Stop {
    pub(crate) fn new() -> Stop {
        Stop {
            state: Mutex::default(),
            woken: Condvar::new(),
            #[cfg(target_os = "linux")]
            pipe: rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC)
                .ok()
                .map(|(read, write)| (read, Mutex::new(Some(write)))),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, Waking> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn is_stopped(&self) -> bool {
        self.state().stopped
    }

    pub(crate) fn stop(&self) {
        self.state().stopped = true;
        self.woken.notify_all();
        #[cfg(target_os = "linux")]
        if let Some((_, write)) = &self.pipe {
            drop(write.lock().unwrap_or_else(|e| e.into_inner()).take());
        }
    }

    /// The OS notified a change: the waiting rescan starts now.
    #[cfg_attr(not(any(windows, target_os = "macos")), allow(dead_code))]
    pub(crate) fn nudge(&self) {
        self.state().nudged = true;
        self.woken.notify_all();
    }

    /// The read end of the pipe [`Stop::stop`] closes.
    #[cfg(target_os = "linux")]
    pub(crate) fn woken_fd(&self) -> Option<std::os::fd::BorrowedFd<'_>> {
        use std::os::fd::AsFd;
        self.pipe.as_ref().map(|(read, _)| read.as_fd())
    }

    /// Waits `timeout` or until stopped, whatever nudges come; true when
    /// stopped.
    fn pause(&self, timeout: Duration) -> bool {
        let state = self.state();
        let (state, _) = self
            .woken
            .wait_timeout_while(state, timeout, |s| !s.stopped)
            .unwrap_or_else(|e| e.into_inner());
        state.stopped
    }

    /// Waits `timeout`, or until stopped or nudged (which it takes back).
    fn wait(&self, timeout: Duration) -> Woken {
        let state = self.state();
        let (mut state, _) = self
            .woken
            .wait_timeout_while(state, timeout, |s| !s.stopped && !s.nudged)
            .unwrap_or_else(|e| e.into_inner());
        if state.stopped {
            Woken::Stopped
        } else if std::mem::take(&mut state.nudged) {
            Woken::Nudged
        } else {
            Woken::TimedOut
        }
    }
}

enum Source {
    #[cfg(target_os = "linux")]
    Feed(Box<crate::feed::Feed>),
    /// etcd's watch, as the async stream delivers it.
    #[cfg(feature = "etcd")]
    Store(WatchStream),
    Rescans {
        every: Duration,
        names: Names,
        view: View,
        /// OS notifications that start a rescan early, where there are any.
        notifier: Option<crate::nudge::Notifier>,
        /// How long the last rescan took: notified rescans are at least
        /// this far apart, so that a busy directory costs at most half of
        /// the watch's thread.
        took: Duration,
    },
}

/// The registry's changes, as a blocking iterator
/// ([`crate::blocking::Registry::watch`]). Each item is a change, or the
/// error that ended the watch.
pub struct Watch {
    registry: Registry,
    source: Source,
    pending: VecDeque<Change>,
    stop: Arc<Stop>,
    failed: bool,
    /// How often it rescans, where it rescans (read when the Linux feed
    /// falls back to rescans).
    #[cfg_attr(not(target_os = "linux"), allow(dead_code))]
    every: Duration,
    /// Rescans made, for tests.
    rescans: Arc<std::sync::atomic::AtomicU64>,
}

impl Drop for Watch {
    fn drop(&mut self) {
        // Ends the OS notifications' thread with it.
        self.stop.stop();
    }
}

impl std::fmt::Debug for Watch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Watch")
            .field("agents_dir", &self.registry.agents_dir())
            .field("notifications", &self.notifications())
            .finish_non_exhaustive()
    }
}

impl Watch {
    pub(crate) fn open(registry: &Registry, start: Start, stop: Arc<Stop>) -> Result<Watch, Error> {
        Self::open_rescanning_every(registry, start, stop, RESCAN_INTERVAL)
    }

    /// [`Watch::open`], with rescans `every` where there are rescans.
    pub(crate) fn open_rescanning_every(
        registry: &Registry,
        start: Start,
        stop: Arc<Stop>,
        every: Duration,
    ) -> Result<Watch, Error> {
        #[cfg(feature = "etcd")]
        if registry.is_etcd() {
            return Ok(Watch {
                registry: registry.clone(),
                source: Source::Store(block_on(registry.watch(start))?),
                pending: VecDeque::new(),
                stop,
                failed: false,
                every,
                rescans: Arc::default(),
            });
        }
        #[cfg(target_os = "linux")]
        let feed = match block_on(crate::feed::Feed::open(registry))? {
            Ok(feed) => Some(feed),
            Err(why) => {
                if let crate::feed::Inexact::Now(why) = why {
                    tracing::warn!(
                        "agentmux-registry: watching {} by rescans: {why}",
                        registry.agents_dir().display()
                    );
                }
                None
            }
        };
        #[cfg(not(target_os = "linux"))]
        let feed: Option<std::convert::Infallible> = None;
        let source = match feed {
            #[cfg(target_os = "linux")]
            Some(feed) => Source::Feed(Box::new(feed)),
            #[cfg(not(target_os = "linux"))]
            Some(never) => match never {},
            None => Self::rescans(registry, &stop, every)?,
        };
        let mut watch = Watch {
            registry: registry.clone(),
            source,
            pending: VecDeque::new(),
            stop,
            failed: false,
            every,
            rescans: Arc::default(),
        };
        if start == Start::Current {
            let entries = entries_of(watch.view(), registry.is_shared());
            watch.pending.extend(entries.into_iter().map(Change::Put));
        }
        Ok(watch)
    }

    /// Rescans from now on, starting from the directory as it is, each
    /// started by an OS notification where there are any, or `every`.
    fn rescans(registry: &Registry, stop: &Arc<Stop>, every: Duration) -> Result<Source, Error> {
        // Armed before the first read: every change after it is notified.
        let notifier =
            crate::nudge::Notifier::start(&registry.agents_dir(), registry.is_shared(), stop);
        let (names, view) = block_on(read_all(registry, || {}))?;
        Ok(Source::Rescans {
            every,
            names,
            view,
            notifier,
            took: Duration::ZERO,
        })
    }

    fn view(&self) -> &View {
        match &self.source {
            #[cfg(target_os = "linux")]
            Source::Feed(feed) => feed.view(),
            Source::Rescans { view, .. } => view,
            // etcd's watch keeps no view: its consumer does.
            #[cfg(feature = "etcd")]
            Source::Store(_) => {
                static NONE: std::sync::LazyLock<View> = std::sync::LazyLock::new(View::new);
                &NONE
            }
        }
    }

    /// Rescans this watch made, counted as they end (for tests).
    #[doc(hidden)]
    pub fn rescan_counter(&self) -> Arc<std::sync::atomic::AtomicU64> {
        self.rescans.clone()
    }

    /// Whether its OS notifications' thread still runs, while the returned
    /// function is kept (for tests); `None` without one.
    #[doc(hidden)]
    pub fn notifier_running(&self) -> Option<impl Fn() -> bool + Send + 'static> {
        match &self.source {
            Source::Rescans {
                notifier: Some(notifier),
                ..
            } => {
                let shared = notifier.shared();
                Some(move || shared.is_running())
            }
            _ => None,
        }
    }

    /// How this watch learns of changes.
    pub fn notifications(&self) -> Notifications {
        match &self.source {
            #[cfg(target_os = "linux")]
            Source::Feed(_) => Notifications::Exact,
            #[cfg(feature = "etcd")]
            Source::Store(_) => Notifications::Exact,
            Source::Rescans {
                every, notifier, ..
            } => match notifier {
                Some(notifier) if notifier.is_active() => Notifications::Prompted(*every),
                _ => Notifications::Rescans(*every),
            },
        }
    }

    /// Waits for the next notifications and reads what they name; false
    /// once stopped.
    fn advance(&mut self) -> Result<bool, Error> {
        match &mut self.source {
            // Served by `next_change` directly.
            #[cfg(feature = "etcd")]
            Source::Store(_) => Ok(false),
            #[cfg(target_os = "linux")]
            Source::Feed(feed) => {
                let caught_up = match feed.wait(&self.stop) {
                    Ok(false) => return Ok(false),
                    Ok(true) => block_on(feed.catch_up(&self.registry)),
                    Err(e) => Err(e),
                };
                match caught_up {
                    Ok(changes) => {
                        if changes.iter().any(|c| matches!(c, Change::Resync(_))) {
                            self.pending.clear();
                        }
                        self.pending.extend(changes);
                    }
                    // Notifications cannot be followed any more (the data
                    // dir is gone, the user's inotify watches ran out):
                    // rescans from here, starting with the full set.
                    Err(e) => {
                        tracing::warn!(
                            "agentmux-registry: watching {} by rescans from now: {}",
                            self.registry.agents_dir().display(),
                            e.with_causes()
                        );
                        self.source = Self::rescans(&self.registry, &self.stop, self.every)?;
                        self.pending.clear();
                        let entries = entries_of(self.view(), self.registry.is_shared());
                        self.pending.push_back(Change::Resync(entries));
                    }
                }
                Ok(true)
            }
            Source::Rescans {
                every,
                names,
                view,
                notifier,
                took,
            } => {
                let woken = self.stop.wait(*every);
                if woken == Woken::Stopped
                    || (woken == Woken::Nudged && self.stop.pause((*took).max(NOTIFIED_SETTLE)))
                {
                    return Ok(false);
                }
                let started = std::time::Instant::now();
                let (new_names, new_view) = block_on(read_all(&self.registry, || {}))?;
                *took = started.elapsed();
                self.rescans
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                *names = new_names;
                let old = std::mem::replace(view, new_view);
                let ids: HashSet<&String> = old.keys().chain(view.keys()).collect();
                let empty = BTreeMap::new();
                let mut changes = Vec::new();
                for id in ids {
                    let before = old.get(id).unwrap_or(&empty);
                    let after = view.get(id).unwrap_or(&empty);
                    changes.extend(differences(before, after));
                }
                // In the order they were made, as far as a rescan can tell:
                // removals, then entries by when they were written.
                changes.sort_by_key(|change| match change {
                    Change::Put(entry) => (1, entry.updated_at),
                    _ => (0, 0),
                });
                // Notifications that ended, or that missed a change (the
                // directory was replaced, their buffer overflowed): new ones
                // on the directory the path names now.
                let missed = woken == Woken::TimedOut && !changes.is_empty();
                if let Some(stale) = notifier.take_if(|n| !n.is_active() || missed) {
                    drop(stale);
                    *notifier = crate::nudge::Notifier::start(
                        &self.registry.agents_dir(),
                        self.registry.is_shared(),
                        &self.stop,
                    );
                }
                self.pending.extend(changes);
                Ok(true)
            }
        }
    }

    /// The next change, waiting for it; `None` once stopped.
    fn next_change(&mut self) -> Option<Result<Change, Error>> {
        #[cfg(feature = "etcd")]
        if let Source::Store(stream) = &mut self.source {
            return crate::blocking::block_on(stream.next());
        }
        loop {
            if let Some(change) = self.pending.pop_front() {
                return Some(Ok(change));
            }
            if self.failed || self.stop.is_stopped() {
                return None;
            }
            match self.advance() {
                Ok(true) => {}
                Ok(false) => return None,
                Err(e) => {
                    self.failed = true;
                    return Some(Err(e));
                }
            }
        }
    }
}

impl Iterator for Watch {
    type Item = Result<Change, Error>;

    /// The next change, waiting as long as it takes; after an error, `None`.
    fn next(&mut self) -> Option<Self::Item> {
        self.next_change()
    }
}

/// The registry's changes as an async stream ([`Registry::watch`]). A thread
/// follows the notifications and hands over each change; dropping the
/// stream stops it. A consumer that falls far behind makes the OS drop
/// notifications, which the stream answers with a [`Change::Resync`].
pub struct WatchStream {
    changes: tokio::sync::mpsc::Receiver<Result<Change, Error>>,
    stop: Arc<Stop>,
    notifications: Notifications,
}

impl std::fmt::Debug for WatchStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WatchStream")
            .field("notifications", &self.notifications)
            .finish_non_exhaustive()
    }
}

/// Changes handed over before the watching thread waits for the consumer.
const STREAM_BUFFER: usize = 1024;

impl WatchStream {
    /// A stream of the changes `changes` hands over (etcd's watch).
    #[cfg(feature = "etcd")]
    pub(crate) fn from_changes(
        changes: tokio::sync::mpsc::Receiver<Result<Change, Error>>,
        notifications: Notifications,
    ) -> WatchStream {
        WatchStream {
            changes,
            stop: Arc::new(Stop::new()),
            notifications,
        }
    }

    pub(crate) async fn open(registry: &Registry, start: Start) -> Result<WatchStream, Error> {
        let stop = Arc::new(Stop::new());
        let (opened_tx, opened) = tokio::sync::oneshot::channel();
        let (tx, changes) = tokio::sync::mpsc::channel(STREAM_BUFFER);
        let registry = registry.clone();
        let thread_stop = stop.clone();
        std::thread::Builder::new()
            .name("agentmux-registry watch".into())
            .spawn(move || {
                let mut watch = match Watch::open(&registry, start, thread_stop) {
                    Ok(watch) => {
                        let _ = opened_tx.send(Ok(watch.notifications()));
                        watch
                    }
                    Err(e) => {
                        let _ = opened_tx.send(Err(e));
                        return;
                    }
                };
                while let Some(change) = watch.next_change() {
                    if tx.blocking_send(change).is_err() {
                        break;
                    }
                }
            })
            .map_err(|e| Error::Thread {
                thread: "watch",
                source: Arc::new(e),
            })?;
        let notifications = opened
            .await
            .map_err(|_| Error::Io("the watch thread ended before it started watching".into()))??;
        Ok(WatchStream {
            changes,
            stop,
            notifications,
        })
    }

    /// How this watch learned of changes when it opened (it may fall back
    /// to rescans later: see [`Notifications`]).
    pub fn notifications(&self) -> Notifications {
        self.notifications
    }

    /// The next change; `None` after an error was returned.
    pub async fn next(&mut self) -> Option<Result<Change, Error>> {
        self.changes.recv().await
    }
}

impl futures_core::Stream for WatchStream {
    type Item = Result<Change, Error>;

    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Self::Item>> {
        self.changes.poll_recv(cx)
    }
}

impl Drop for WatchStream {
    fn drop(&mut self) {
        self.stop.stop();
    }
}
