//! What the registry knows from its notifications: the names holding
//! entries and each id's current entries, kept up to date from the OS's
//! notifications (see [`crate::watch`] for where they come from). The
//! change feed is built on it, and so are lookups served without reading
//! the directory ([`Feed::catch_up`], then the view).

#[cfg(target_os = "linux")]
use std::collections::HashSet;
use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use agentmux_registry_core::name::{entry_file_name, may_name_an_entry};

use crate::watch::Change;
#[cfg(target_os = "linux")]
use crate::watch::Stop;
use crate::{AgentEntry, Error, Registry};

/// Names passed to the component per `entries-at` call (its limit).
const NAMES_PER_CALL: usize = 1024;

/// `id`'s key: its own file name (ids are case-insensitive).
pub(crate) fn id_key(agent_id: &str) -> String {
    entry_file_name(agent_id).unwrap_or_else(|_| agent_id.to_lowercase())
}

/// Per id key, per channel key, the entry.
pub(crate) type View = HashMap<String, BTreeMap<String, AgentEntry>>;

/// Every name known to hold an entry, with that entry's id.
pub(crate) type Names = HashMap<String, String>;

/// Every entry of `view`, sorted as a listing is.
pub(crate) fn entries_of(view: &View, shared: bool) -> Vec<AgentEntry> {
    let mut entries: Vec<AgentEntry> = view
        .values()
        .flat_map(|channels| channels.values().cloned())
        .collect();
    agentmux_registry_core::ops::sort_listing(&mut entries, shared);
    entries
}

/// What turns `before` into `after` (one id's entries by channel).
pub(crate) fn differences(
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

/// The names holding entries and the entries a lookup of each id returns,
/// read afresh (after `before_reading`, which watches what is read).
pub(crate) async fn read_all(
    registry: &Registry,
    before_reading: impl FnOnce(),
) -> Result<(Names, View), Error> {
    let dir = registry.agents_dir();
    // Watched before they are read: nothing changed in between is missed.
    before_reading();
    let names = match entry_names(&dir, registry.is_shared()) {
        Ok(names) => names,
        // Removed or moved away, and not replaced yet: nothing is registered
        // until it is (its parent's watch says when).
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Ok((Names::new(), View::new()));
        }
        Err(e) => return Err(Error::directory(&dir, e)),
    };
    let mut held = Names::new();
    for chunk in names.chunks(NAMES_PER_CALL) {
        let entries = registry.entries_at(chunk).await?;
        for (name, entry) in chunk.iter().zip(entries) {
            if let Some(entry) = entry {
                held.insert(name.clone(), entry.agent_id);
            }
        }
    }
    let mut view = View::new();
    for entry in registry.read_list().await? {
        view.entry(id_key(&entry.agent_id))
            .or_default()
            .insert(id_key(&entry.channel), entry);
    }
    Ok((held, view))
}

#[cfg(target_os = "linux")]
/// Whether `agent_id` has one entry name only (its own: no other writer's
/// spelling differs), so that what is stored there is what a lookup finds.
fn has_one_name(agent_id: &str) -> bool {
    agentmux_registry_core::name::other_writers_names(agent_id).is_empty()
}

/// What a registry's lookups are served from.
enum Served {
    /// Not decided yet: the first lookup decides.
    Unopened,
    /// A caller is opening the feed or applying notifications: the others
    /// wait for it (their answer must include what it applies).
    #[cfg_attr(not(target_os = "linux"), allow(dead_code))]
    Busy,
    /// Entries kept current by notifications.
    #[cfg(target_os = "linux")]
    Feed(Box<Feed>),
    /// The directory, read by every call.
    #[cfg_attr(not(target_os = "linux"), allow(dead_code))]
    ReadThrough,
    /// The directory, read by every call until then (the notifications
    /// could not be followed: tried again after).
    #[cfg_attr(not(target_os = "linux"), allow(dead_code))]
    ReadThroughUntil(std::time::Instant),
}

/// How long lookups read the directory after the notifications could not
/// be followed, before they are tried again.
#[cfg(target_os = "linux")]
const FEED_RETRY: std::time::Duration = std::time::Duration::from_secs(1);

/// A registry's lookups answered from notifications.
///
/// A lookup reads the notifications queued (one system call, under a plain
/// mutex) and, when there are none to apply, answers from the view at once:
/// concurrent lookups never wait on a component call. When there are, one
/// caller takes the feed out, applies them (component calls, no lock held)
/// and puts it back; the others wait for it, since their answers must
/// include what it applies.
#[cfg_attr(not(target_os = "linux"), allow(dead_code))]
pub(crate) struct Serving {
    served: std::sync::Mutex<Served>,
    settled: tokio::sync::Notify,
}

impl Default for Serving {
    fn default() -> Self {
        Serving {
            served: std::sync::Mutex::new(Served::Unopened),
            settled: tokio::sync::Notify::new(),
        }
    }
}

/// Puts the feed back (or, if the work was abandoned, leaves it to be
/// opened afresh) and wakes the callers waiting for it.
#[cfg(target_os = "linux")]
struct Settle<'a> {
    serving: &'a Serving,
    outcome: Option<Served>,
}

#[cfg(target_os = "linux")]
impl Drop for Settle<'_> {
    fn drop(&mut self) {
        // A caller dropped mid-work (its future cancelled) leaves no feed
        // behind: the next caller opens it afresh.
        let outcome = self.outcome.take().unwrap_or(Served::Unopened);
        *self.serving.lock() = outcome;
        self.serving.settled.notify_waiters();
    }
}

impl Serving {
    #[cfg_attr(not(target_os = "linux"), allow(dead_code))]
    fn lock(&self) -> std::sync::MutexGuard<'_, Served> {
        self.served.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// `f` of the entries known from notifications, once every notification
    /// queued when the call began is applied; `None` where lookups read the
    /// directory instead.
    #[cfg_attr(not(target_os = "linux"), allow(unused_variables))]
    pub(crate) async fn answer<T>(
        &self,
        registry: &Registry,
        f: impl FnOnce(&View) -> T,
    ) -> Option<T> {
        #[cfg(target_os = "linux")]
        loop {
            enum Next {
                Open,
                Apply(Box<Feed>),
                Wait,
            }
            let settled = self.settled.notified();
            let mut settled = std::pin::pin!(settled);
            let next = {
                let mut served = self.lock();
                if let Served::ReadThroughUntil(until) = *served {
                    if std::time::Instant::now() >= until {
                        *served = Served::Unopened;
                    }
                }
                match &mut *served {
                    Served::ReadThrough | Served::ReadThroughUntil(_) => return None,
                    Served::Feed(feed) => match feed.poll(&registry.agents_dir()) {
                        Ok(false) => return Some(f(feed.view())),
                        Ok(true) => match std::mem::replace(&mut *served, Served::Busy) {
                            Served::Feed(feed) => Next::Apply(feed),
                            _ => unreachable!("matched a feed"),
                        },
                        Err(e) => {
                            warn_read_through(registry, &e);
                            *served =
                                Served::ReadThroughUntil(std::time::Instant::now() + FEED_RETRY);
                            return None;
                        }
                    },
                    Served::Unopened => {
                        *served = Served::Busy;
                        Next::Open
                    }
                    Served::Busy => {
                        // Registered before the lock is released: the wake
                        // that settles it cannot be missed.
                        settled.as_mut().enable();
                        Next::Wait
                    }
                }
            };
            if let Next::Wait = next {
                settled.await;
                continue;
            }
            let mut settle = Settle {
                serving: self,
                outcome: None,
            };
            let outcome = match next {
                Next::Wait => unreachable!("waited above"),
                Next::Open => match Feed::open(registry).await {
                    Ok(Some(feed)) => Served::Feed(Box::new(feed)),
                    Ok(None) => Served::ReadThrough,
                    // No notifications to be had here (for example, the
                    // user's inotify instances are all in use), or the
                    // directory could not be read whole: this call reads
                    // the directory, as calls did before; the feed is tried
                    // again later.
                    Err(e) => {
                        warn_read_through(registry, &e);
                        Served::ReadThroughUntil(std::time::Instant::now() + FEED_RETRY)
                    }
                },
                Next::Apply(mut feed) => match feed.catch_up(registry).await {
                    Ok(_) => Served::Feed(feed),
                    // What was read may be half applied: start afresh later.
                    Err(e) => {
                        warn_read_through(registry, &e);
                        Served::ReadThroughUntil(std::time::Instant::now() + FEED_RETRY)
                    }
                },
            };
            settle.outcome = Some(outcome);
            drop(settle);
        }
        #[cfg(not(target_os = "linux"))]
        None
    }
}

#[cfg(target_os = "linux")]
fn warn_read_through(registry: &Registry, e: &Error) {
    tracing::warn!(
        "agentmux-registry: lookups in {} read the directory for now: {}",
        registry.agents_dir().display(),
        e.with_causes()
    );
}

/// The registry as its notifications show it (Linux, local file systems).
#[cfg(target_os = "linux")]
pub(crate) struct Feed {
    notifier: inotify::Notifier,
    names: Names,
    view: View,
    /// Notifications read but not applied yet.
    pending: inotify::Batch,
}

#[cfg(target_os = "linux")]
impl Feed {
    /// Starts following `registry`'s directory; `None` where its file
    /// system gives no exact notifications.
    pub(crate) async fn open(registry: &Registry) -> Result<Option<Feed>, Error> {
        let dir = registry.agents_dir();
        if !inotify::is_exact(&dir) {
            return Ok(None);
        }
        let mut notifier = inotify::Notifier::new(&dir, registry.is_shared())
            .map_err(|e| Error::directory(&dir, e))?;
        let (names, view) = read_all(registry, || notifier.watch_subdirs()).await?;
        Ok(Some(Feed {
            notifier,
            names,
            view,
            pending: inotify::Batch::default(),
        }))
    }

    /// What the feed knows.
    pub(crate) fn view(&self) -> &View {
        &self.view
    }

    /// Reads the notifications queued now, without applying them: true
    /// when some are waiting to be applied ([`Feed::catch_up`]), false when
    /// the view is current. No waiting, no component call.
    pub(crate) fn poll(&mut self, dir: &Path) -> Result<bool, Error> {
        let batch = self
            .notifier
            .drain(&self.names)
            .map_err(|e| Error::directory(dir, e))?;
        self.pending.resync |= batch.resync;
        self.pending.names.extend(batch.names);
        Ok(self.pending.resync || !self.pending.names.is_empty())
    }

    /// Waits until notifications are queued; false once stopped.
    pub(crate) fn wait(&mut self, stop: &Stop) -> Result<bool, Error> {
        self.notifier
            .wait(stop)
            .map_err(|e| Error::Io(e.to_string()))
    }

    /// Reads what every notification queued now names, and returns what
    /// changed: after it, the view is at least as new as every change
    /// completed before the call.
    pub(crate) async fn catch_up(&mut self, registry: &Registry) -> Result<Vec<Change>, Error> {
        let dir = registry.agents_dir();
        self.poll(&dir)?;
        let batch = std::mem::take(&mut self.pending);
        if batch.resync {
            self.notifier
                .rewatch(&dir)
                .map_err(|e| Error::directory(&dir, e))?;
            // The directory may have been replaced: the next call checks.
            registry.inner.recheck_dir();
            let notifier = &mut self.notifier;
            let (names, view) = read_all(registry, || notifier.watch_subdirs()).await?;
            self.names = names;
            self.view = view;
            return Ok(vec![Change::Resync(entries_of(
                &self.view,
                registry.is_shared(),
            ))]);
        }
        if batch.names.is_empty() {
            return Ok(Vec::new());
        }
        self.apply(registry, batch.names).await
    }

    /// Re-reads `names` and the ids they held or hold.
    async fn apply(
        &mut self,
        registry: &Registry,
        names: HashSet<String>,
    ) -> Result<Vec<Change>, Error> {
        let names: Vec<String> = names.into_iter().collect();
        let mut ids: BTreeMap<String, String> = BTreeMap::new();
        // Ids that have one name only, with what it holds now: no lookup
        // can answer otherwise (per-channel registry).
        let mut only_name: HashMap<String, Option<AgentEntry>> = HashMap::new();
        for chunk in names.chunks(NAMES_PER_CALL) {
            let entries = registry.entries_at(chunk).await?;
            for (name, entry) in chunk.iter().zip(entries) {
                if let Some(old) = self.names.remove(name) {
                    ids.insert(id_key(&old), old.clone());
                    if !registry.is_shared() && has_one_name(&old) {
                        only_name.entry(id_key(&old)).or_insert(None);
                    }
                }
                if let Some(entry) = entry {
                    let key = id_key(&entry.agent_id);
                    ids.insert(key.clone(), entry.agent_id.clone());
                    self.names.insert(name.clone(), entry.agent_id.clone());
                    if !registry.is_shared() && has_one_name(&entry.agent_id) {
                        only_name.insert(key, Some(entry));
                    }
                }
            }
        }
        let mut changes = Vec::new();
        for (key, agent_id) in ids {
            let now: Vec<AgentEntry> = if let Some(only) = only_name.remove(&key) {
                only.into_iter().collect()
            } else if registry.is_shared() {
                registry.read_lookup_all(&agent_id).await?
            } else {
                registry.read_lookup(&agent_id).await?.into_iter().collect()
            };
            let after: BTreeMap<String, AgentEntry> =
                now.into_iter().map(|e| (id_key(&e.channel), e)).collect();
            let before = self.view.remove(&key).unwrap_or_default();
            changes.extend(differences(&before, &after));
            if !after.is_empty() {
                self.view.insert(key, after);
            }
        }
        Ok(changes)
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

    use crate::watch::Stop;

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
    #[derive(Default)]
    pub(crate) struct Batch {
        /// Names (relative to the agents directory) that may have changed.
        pub(super) names: HashSet<String>,
        /// Notifications were lost, or the directory was replaced.
        pub(super) resync: bool,
    }

    pub(super) struct Notifier {
        fd: OwnedFd,
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

    // ATTRIB: a mode change can make an entry unreadable, or readable.
    const DIR_EVENTS: WatchFlags = WatchFlags::CREATE
        .union(WatchFlags::CLOSE_WRITE)
        .union(WatchFlags::ATTRIB)
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
        pub(super) fn new(dir: &Path, shared: bool) -> std::io::Result<Notifier> {
            let fd = inotify::init(CreateFlags::CLOEXEC | CreateFlags::NONBLOCK)?;
            let mut notifier = Notifier {
                fd,
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

        /// Waits until notifications are queued; false once stopped.
        pub(super) fn wait(&mut self, stop: &Stop) -> std::io::Result<bool> {
            loop {
                if stop.is_stopped() {
                    return Ok(false);
                }
                // Without a stop pipe, the stop flag is looked at every
                // 200 ms.
                let woken = stop.woken_fd();
                let timeout = rustix::event::Timespec {
                    tv_sec: 0,
                    tv_nsec: 200_000_000,
                };
                let mut fds = vec![PollFd::new(&self.fd, PollFlags::IN)];
                fds.extend(woken.as_ref().map(|fd| PollFd::new(fd, PollFlags::IN)));
                match poll(&mut fds, woken.is_none().then_some(&timeout)) {
                    Ok(_) | Err(Errno::INTR) => {}
                    Err(e) => return Err(e.into()),
                }
                if fds.get(1).is_some_and(|fd| !fd.revents().is_empty()) {
                    return Ok(false);
                }
                if !fds[0].revents().is_empty() {
                    return Ok(true);
                }
            }
        }

        /// Every notification queued now, without waiting: the names they
        /// concern (`known` says which names an agent directory that moved
        /// away held).
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
