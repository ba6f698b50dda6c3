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
//! - **Everywhere else** (macOS, Windows, and network or FUSE file systems on
//!   Linux, whose changes made by other machines raise no notification):
//!   rescans every [`RESCAN_INTERVAL`], each compared with the last. Changes
//!   between two rescans are coalesced; none is missed for longer than one
//!   interval.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::path::Path;
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use agentmux_registry_core::name::{entry_file_name, may_name_an_entry};

use crate::blocking::block_on;
use crate::{AgentEntry, Error, Registry};

/// How often a watch without OS notifications rescans the directory.
pub const RESCAN_INTERVAL: Duration = Duration::from_secs(1);

/// Names passed to the component per `entries-at` call (its limit).
const NAMES_PER_CALL: usize = 1024;

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
    /// The OS notifies every change as it is made.
    Exact,
    /// The directory is rescanned every interval.
    Rescans(Duration),
}

/// `id`'s key: its own file name (ids are case-insensitive).
fn id_key(agent_id: &str) -> String {
    entry_file_name(agent_id).unwrap_or_else(|_| agent_id.to_lowercase())
}

/// What a watch last delivered: per id key, per channel key, the entry.
type View = HashMap<String, BTreeMap<String, AgentEntry>>;

/// Tells a watch's waits to end.
#[derive(Default)]
pub(crate) struct Stop {
    stopped: Mutex<bool>,
    woken: Condvar,
    #[cfg(target_os = "linux")]
    wake: Mutex<Option<std::os::fd::OwnedFd>>,
}

impl Stop {
    fn is_stopped(&self) -> bool {
        *self.stopped.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn stop(&self) {
        *self.stopped.lock().unwrap_or_else(|e| e.into_inner()) = true;
        self.woken.notify_all();
        // Closing the write end wakes a poll on the read end.
        #[cfg(target_os = "linux")]
        drop(self.wake.lock().unwrap_or_else(|e| e.into_inner()).take());
    }

    /// Waits `timeout` or until stopped; true when stopped.
    fn wait(&self, timeout: Duration) -> bool {
        let stopped = self.stopped.lock().unwrap_or_else(|e| e.into_inner());
        let (stopped, _) = self
            .woken
            .wait_timeout_while(stopped, timeout, |s| !*s)
            .unwrap_or_else(|e| e.into_inner());
        *stopped
    }
}

enum Source {
    #[cfg(target_os = "linux")]
    Inotify(inotify::Notifier),
    Rescans(Duration),
}

/// The registry's changes, as a blocking iterator ([`Registry::watch`]
/// through [`crate::blocking::Registry::watch`]). Each item is a change, or
/// the error that ended the watch.
pub struct Watch {
    registry: Registry,
    source: Source,
    /// Every name known to hold an entry, with that entry's id.
    names: HashMap<String, String>,
    view: View,
    pending: VecDeque<Change>,
    stop: Arc<Stop>,
    failed: bool,
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
        let dir = registry.agents_dir();
        let source = Self::source(&dir, registry.is_shared(), &stop)?;
        let mut watch = Watch {
            registry: registry.clone(),
            source,
            names: HashMap::new(),
            view: View::new(),
            pending: VecDeque::new(),
            stop,
            failed: false,
        };
        let (names, view) = watch.read_all()?;
        watch.names = names;
        watch.view = view;
        if start == Start::Current {
            let entries = watch.current();
            watch.pending.extend(entries.into_iter().map(Change::Put));
        }
        Ok(watch)
    }

    #[cfg_attr(not(target_os = "linux"), allow(unused_variables))]
    fn source(dir: &Path, shared: bool, stop: &Stop) -> Result<Source, Error> {
        #[cfg(target_os = "linux")]
        if inotify::is_exact(dir) {
            let notifier =
                inotify::Notifier::new(dir, shared, stop).map_err(|e| Error::directory(dir, e))?;
            return Ok(Source::Inotify(notifier));
        }
        Ok(Source::Rescans(RESCAN_INTERVAL))
    }

    /// How this watch learns of changes.
    pub fn notifications(&self) -> Notifications {
        match &self.source {
            #[cfg(target_os = "linux")]
            Source::Inotify(_) => Notifications::Exact,
            Source::Rescans(every) => Notifications::Rescans(*every),
        }
    }

    /// Every entry of the view, sorted as a listing is.
    fn current(&self) -> Vec<AgentEntry> {
        let mut entries: Vec<AgentEntry> = self
            .view
            .values()
            .flat_map(|channels| channels.values().cloned())
            .collect();
        agentmux_registry_core::ops::sort_listing(&mut entries, self.registry.is_shared());
        entries
    }

    /// The names holding entries and the entries a lookup of each id
    /// returns, read afresh.
    fn read_all(&mut self) -> Result<(HashMap<String, String>, View), Error> {
        let dir = self.registry.agents_dir();
        // Watched before they are read: nothing changed in between is missed.
        #[cfg(target_os = "linux")]
        if let Source::Inotify(notifier) = &mut self.source {
            notifier.watch_subdirs();
        }
        let names = match entry_names(&dir, self.registry.is_shared()) {
            Ok(names) => names,
            // Removed or moved away, and not replaced yet: nothing is
            // registered until it is (its parent's watch says when).
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Ok((HashMap::new(), View::new()));
            }
            Err(e) => return Err(Error::directory(&dir, e)),
        };
        let mut held = HashMap::new();
        for chunk in names.chunks(NAMES_PER_CALL) {
            let entries = block_on(self.registry.entries_at(chunk))?;
            for (name, entry) in chunk.iter().zip(entries) {
                if let Some(entry) = entry {
                    held.insert(name.clone(), entry.agent_id);
                }
            }
        }
        let mut view = View::new();
        for entry in block_on(self.registry.list())? {
            view.entry(id_key(&entry.agent_id))
                .or_default()
                .insert(id_key(&entry.channel), entry);
        }
        Ok((held, view))
    }

    /// Reads everything again, delivering what changed (`resync`: the full
    /// set instead).
    fn rescan(&mut self, resync: bool) -> Result<(), Error> {
        let (names, view) = self.read_all()?;
        self.names = names;
        let old = std::mem::replace(&mut self.view, view);
        if resync {
            self.pending.clear();
            let entries = self.current();
            self.pending.push_back(Change::Resync(entries));
            return Ok(());
        }
        let ids: HashSet<&String> = old.keys().chain(self.view.keys()).collect();
        let empty = BTreeMap::new();
        let mut changes = Vec::new();
        for id in ids {
            let before = old.get(id).unwrap_or(&empty);
            let after = self.view.get(id).unwrap_or(&empty);
            changes.extend(differences(before, after));
        }
        self.pending.extend(changes);
        Ok(())
    }

    /// Re-reads `names` and the ids they held or hold, delivering what
    /// changed.
    #[cfg_attr(not(target_os = "linux"), allow(dead_code))]
    fn apply(&mut self, names: HashSet<String>) -> Result<(), Error> {
        let names: Vec<String> = names.into_iter().collect();
        let mut ids: BTreeMap<String, String> = BTreeMap::new();
        for chunk in names.chunks(NAMES_PER_CALL) {
            let entries = block_on(self.registry.entries_at(chunk))?;
            for (name, entry) in chunk.iter().zip(entries) {
                if let Some(old) = self.names.remove(name) {
                    ids.insert(id_key(&old), old);
                }
                if let Some(entry) = entry {
                    ids.insert(id_key(&entry.agent_id), entry.agent_id.clone());
                    self.names.insert(name.clone(), entry.agent_id);
                }
            }
        }
        for (key, agent_id) in ids {
            let now: Vec<AgentEntry> = if self.registry.is_shared() {
                block_on(self.registry.lookup_all(&agent_id))?
            } else {
                block_on(self.registry.lookup(&agent_id))?
                    .into_iter()
                    .collect()
            };
            let after: BTreeMap<String, AgentEntry> =
                now.into_iter().map(|e| (id_key(&e.channel), e)).collect();
            let before = self.view.remove(&key).unwrap_or_default();
            self.pending.extend(differences(&before, &after));
            if !after.is_empty() {
                self.view.insert(key, after);
            }
        }
        Ok(())
    }

    /// Waits for the next notifications and reads what they name; false
    /// once stopped.
    fn advance(&mut self) -> Result<bool, Error> {
        match &mut self.source {
            #[cfg(target_os = "linux")]
            Source::Inotify(notifier) => {
                let dir = self.registry.agents_dir();
                let Some(batch) = notifier
                    .wait(&self.stop, &self.names)
                    .map_err(|e| Error::directory(&dir, e))?
                else {
                    return Ok(false);
                };
                if batch.resync {
                    notifier
                        .rewatch(&dir)
                        .map_err(|e| Error::directory(&dir, e))?;
                    self.rescan(true)?;
                } else {
                    self.apply(batch.names)?;
                }
                Ok(true)
            }
            Source::Rescans(every) => {
                if self.stop.wait(*every) {
                    return Ok(false);
                }
                self.rescan(false)?;
                Ok(true)
            }
        }
    }

    /// The next change, waiting for it; `None` once stopped.
    fn next_change(&mut self) -> Option<Result<Change, Error>> {
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

/// What turns `before` into `after` (one id's entries by channel).
fn differences(
    before: &BTreeMap<String, AgentEntry>,
    after: &BTreeMap<String, AgentEntry>,
) -> Vec<Change> {
    let mut changes = Vec::new();
    for (channel, entry) in before {
        if !after.contains_key(channel) {
            changes.push(Change::Removed {
                agent_id: entry.agent_id.clone(),
                channel: entry.channel.clone(),
            });
        }
    }
    for (channel, entry) in after {
        if before.get(channel) != Some(entry) {
            changes.push(Change::Put(entry.clone()));
        }
    }
    changes
}

/// The names in `dir` that may hold entries (in a shared root,
/// `<agent-dir>/<file>` for each agent directory), never following a link.
fn entry_names(dir: &Path, shared: bool) -> std::io::Result<Vec<String>> {
    let mut names = Vec::new();
    for item in std::fs::read_dir(dir)? {
        let item = item?;
        let Ok(name) = item.file_name().into_string() else {
            continue;
        };
        if !shared {
            if may_name_an_entry(&name) {
                names.push(name);
            }
            continue;
        }
        if name.starts_with('.') || !item.file_type().is_ok_and(|t| t.is_dir()) {
            continue;
        }
        let Ok(files) = std::fs::read_dir(item.path()) else {
            continue;
        };
        for file in files.flatten() {
            if let Ok(file) = file.file_name().into_string() {
                if may_name_an_entry(&file) {
                    names.push(format!("{name}/{file}"));
                }
            }
        }
    }
    Ok(names)
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
    pub(crate) async fn open(registry: &Registry, start: Start) -> Result<WatchStream, Error> {
        let stop = Arc::new(Stop::default());
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

    /// How this watch learns of changes.
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

#[cfg(target_os = "linux")]
mod inotify {
    //! inotify: exact notifications on local file systems.

    use std::collections::{HashMap, HashSet};
    use std::mem::MaybeUninit;
    use std::os::fd::OwnedFd;
    use std::path::{Path, PathBuf};

    use agentmux_registry_core::name::may_name_an_entry;
    use rustix::event::{poll, PollFd, PollFlags};
    use rustix::fs::inotify::{self, CreateFlags, ReadFlags, WatchFlags};
    use rustix::io::Errno;

    use super::Stop;

    /// File systems whose changes can be made where this host's kernel does
    /// not see them (network and FUSE file systems), by `statfs` magic.
    const REMOTE_MAGICS: [i64; 10] = [
        0x6969,      // NFS
        0x517b,      // SMB
        0xff53_4d42, // CIFS
        0xfe53_4d42, // SMB2
        0x6573_5546, // FUSE
        0x0102_1997, // 9P (VM and WSL shares)
        0x00c3_6400, // Ceph
        0x5346_414f, // AFS
        0x7375_7245, // Coda
        0x564c,      // NCP
    ];

    /// Whether inotify sees every change of `dir`: a local file system.
    pub(super) fn is_exact(dir: &Path) -> bool {
        // `f_type`'s width differs between architectures.
        #[allow(clippy::unnecessary_cast)]
        rustix::fs::statfs(dir).is_ok_and(|fs| !REMOTE_MAGICS.contains(&(fs.f_type as i64)))
    }

    /// What a wait found.
    pub(super) struct Batch {
        /// Names (relative to the agents directory) that may have changed.
        pub(super) names: HashSet<String>,
        /// Notifications were lost, or the directory was replaced.
        pub(super) resync: bool,
    }

    pub(super) struct Notifier {
        fd: OwnedFd,
        /// Read end of the pipe [`Stop::stop`] closes.
        woken: OwnedFd,
        shared: bool,
        /// The agents directory (the shared root).
        root: PathBuf,
        dir_wd: i32,
        parent_wd: Option<i32>,
        /// The agents directory's name in its parent.
        base: Option<std::ffi::OsString>,
        /// Agent directories (shared registry) by watch.
        subdirs: HashMap<i32, String>,
        buf: Vec<MaybeUninit<u8>>,
    }

    const DIR_EVENTS: WatchFlags = WatchFlags::CREATE
        .union(WatchFlags::CLOSE_WRITE)
        .union(WatchFlags::MOVED_FROM)
        .union(WatchFlags::MOVED_TO)
        .union(WatchFlags::DELETE)
        .union(WatchFlags::DELETE_SELF)
        .union(WatchFlags::MOVE_SELF)
        .union(WatchFlags::DONT_FOLLOW)
        .union(WatchFlags::ONLYDIR);

    const PARENT_EVENTS: WatchFlags = WatchFlags::CREATE
        .union(WatchFlags::MOVED_FROM)
        .union(WatchFlags::MOVED_TO)
        .union(WatchFlags::DELETE)
        .union(WatchFlags::ONLYDIR);

    impl Notifier {
        pub(super) fn new(dir: &Path, shared: bool, stop: &Stop) -> std::io::Result<Notifier> {
            let fd = inotify::init(CreateFlags::CLOEXEC | CreateFlags::NONBLOCK)?;
            let (woken, wake) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC)?;
            *stop.wake.lock().unwrap_or_else(|e| e.into_inner()) = Some(wake);
            let mut notifier = Notifier {
                fd,
                woken,
                shared,
                root: dir.to_path_buf(),
                dir_wd: -1,
                parent_wd: None,
                base: None,
                subdirs: HashMap::new(),
                buf: vec![MaybeUninit::uninit(); 64 * 1024],
            };
            notifier.rewatch(dir)?;
            Ok(notifier)
        }

        /// Watches `dir` and its parent afresh (after a replacement).
        pub(super) fn rewatch(&mut self, dir: &Path) -> std::io::Result<()> {
            for wd in [Some(self.dir_wd), self.parent_wd]
                .into_iter()
                .flatten()
                .chain(self.subdirs.keys().copied())
                .filter(|&wd| wd >= 0)
            {
                let _ = inotify::remove_watch(&self.fd, wd);
            }
            self.subdirs.clear();
            let parent: Option<PathBuf> = dir.parent().map(Path::to_path_buf);
            self.parent_wd = parent
                .filter(|p| !p.as_os_str().is_empty())
                .map(|p| inotify::add_watch(&self.fd, &p, PARENT_EVENTS))
                .transpose()?;
            self.base = dir.file_name().map(|n| n.to_os_string());
            self.root = dir.to_path_buf();
            self.dir_wd = match inotify::add_watch(&self.fd, dir, DIR_EVENTS) {
                Ok(wd) => wd,
                // Gone for now: its parent's watch says when it is back.
                Err(Errno::NOENT) if self.parent_wd.is_some() => -1,
                Err(e) => return Err(e.into()),
            };
            self.watch_subdirs();
            Ok(())
        }

        /// Watches every agent directory (shared registry).
        pub(super) fn watch_subdirs(&mut self) {
            if !self.shared {
                return;
            }
            let Ok(items) = std::fs::read_dir(&self.root) else {
                return;
            };
            for item in items.flatten() {
                if let Ok(name) = item.file_name().into_string() {
                    if !name.starts_with('.') && item.file_type().is_ok_and(|t| t.is_dir()) {
                        self.watch_subdir(&name);
                    }
                }
            }
        }

        /// Watches agent directory `name`; a directory that cannot be
        /// watched (gone already, or a link) is one no entry is read from.
        fn watch_subdir(&mut self, name: &str) {
            if let Ok(wd) = inotify::add_watch(&self.fd, self.root.join(name), DIR_EVENTS) {
                self.subdirs.insert(wd, name.to_owned());
            }
        }

        /// Waits for notifications: the names they concern (`known` says
        /// which names an agent directory that moved away held); `None`
        /// once stopped.
        pub(super) fn wait(
            &mut self,
            stop: &Stop,
            known: &HashMap<String, String>,
        ) -> std::io::Result<Option<Batch>> {
            loop {
                let batch = self.drain(known)?;
                if batch.resync || !batch.names.is_empty() {
                    return Ok(Some(batch));
                }
                if stop.is_stopped() {
                    return Ok(None);
                }
                let mut fds = [
                    PollFd::new(&self.fd, PollFlags::IN),
                    PollFd::new(&self.woken, PollFlags::IN),
                ];
                match poll(&mut fds, None) {
                    Ok(_) | Err(Errno::INTR) => {}
                    Err(e) => return Err(e.into()),
                }
                if !fds[1].revents().is_empty() {
                    return Ok(None);
                }
            }
        }

        /// Every notification queued now, without waiting.
        pub(super) fn drain(&mut self, known: &HashMap<String, String>) -> std::io::Result<Batch> {
            let mut batch = Batch {
                names: HashSet::new(),
                resync: false,
            };
            let (mut new_dirs, mut gone_dirs) = (Vec::new(), Vec::new());
            let mut reader = inotify::Reader::new(&self.fd, &mut self.buf);
            loop {
                let event = match reader.next() {
                    Ok(event) => event,
                    Err(Errno::AGAIN) => break,
                    Err(Errno::INTR) => continue,
                    Err(e) => return Err(e.into()),
                };
                let flags = event.events();
                if flags.contains(ReadFlags::QUEUE_OVERFLOW) {
                    batch.resync = true;
                    continue;
                }
                let wd = event.wd();
                let name = event
                    .file_name()
                    .and_then(|n| n.to_str().ok())
                    .map(str::to_owned);
                if wd == self.dir_wd {
                    if flags.intersects(
                        ReadFlags::DELETE_SELF | ReadFlags::MOVE_SELF | ReadFlags::IGNORED,
                    ) {
                        batch.resync = true;
                        continue;
                    }
                    let Some(name) = name else { continue };
                    if !self.shared {
                        if may_name_an_entry(&name) {
                            batch.names.insert(name);
                        }
                    } else if flags.contains(ReadFlags::ISDIR) && !name.starts_with('.') {
                        if flags.intersects(ReadFlags::CREATE | ReadFlags::MOVED_TO) {
                            new_dirs.push(name);
                        } else if flags.intersects(ReadFlags::DELETE | ReadFlags::MOVED_FROM) {
                            gone_dirs.push(name);
                        }
                    }
                } else if Some(wd) == self.parent_wd {
                    // The agents directory itself was created, removed,
                    // renamed or replaced.
                    if name.as_deref().map(std::ffi::OsStr::new) == self.base.as_deref() {
                        batch.resync = true;
                    }
                } else if flags.contains(ReadFlags::IGNORED) {
                    self.subdirs.remove(&wd);
                } else if let (Some(dir), Some(name)) = (self.subdirs.get(&wd), name) {
                    if may_name_an_entry(&name) {
                        batch.names.insert(format!("{dir}/{name}"));
                    }
                }
            }
            for dir in new_dirs {
                self.watch_subdir(&dir);
                if let Ok(files) = std::fs::read_dir(self.root.join(&dir)) {
                    for file in files.flatten() {
                        if let Ok(file) = file.file_name().into_string() {
                            if may_name_an_entry(&file) {
                                batch.names.insert(format!("{dir}/{file}"));
                            }
                        }
                    }
                }
            }
            for dir in gone_dirs {
                let prefix = format!("{dir}/");
                batch
                    .names
                    .extend(known.keys().filter(|n| n.starts_with(&prefix)).cloned());
            }
            Ok(batch)
        }
    }
}
