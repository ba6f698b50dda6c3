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
        names.extend(entry_files(&item.path(), &name));
    }
    Ok(names)
}

/// The names in the agent directory `dir` that may hold entries, each as
/// `<agent_dir>/<file>`; none when it cannot be read.
fn entry_files(dir: &Path, agent_dir: &str) -> Vec<String> {
    let Ok(files) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    files
        .flatten()
        .filter_map(|file| file.file_name().into_string().ok())
        .filter(|file| may_name_an_entry(file))
        .map(|file| format!("{agent_dir}/{file}"))
        .collect()
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
    // The names were read before the entries: a name written in between
    // holds an entry the view has and the names lack. Every name an entry
    // of the view may be at is counted as its id's, so that the change
    // that later removes or rewrites it makes the id be read again.
    for channels in view.values() {
        for entry in channels.values() {
            for name in names_of(entry, registry.is_shared()) {
                held.entry(name).or_insert_with(|| entry.agent_id.clone());
            }
        }
    }
    Ok((held, view))
}

/// Every name `entry` may be stored at: its own and other writers'
/// (per-channel: a file name; shared: `agent-dir/channel-file`).
fn names_of(entry: &AgentEntry, shared: bool) -> Vec<String> {
    use agentmux_registry_core::name::{
        agent_dir_name, other_writers_dir_names, other_writers_names,
    };
    let files = |id: &str| -> Vec<String> {
        entry_file_name(id)
            .into_iter()
            .chain(other_writers_names(id))
            .collect()
    };
    if !shared {
        return files(&entry.agent_id);
    }
    let dirs: Vec<String> = agent_dir_name(&entry.agent_id)
        .into_iter()
        .chain(other_writers_dir_names(&entry.agent_id))
        .collect();
    let channel_files = files(&entry.channel);
    dirs.iter()
        .flat_map(|dir| {
            channel_files
                .iter()
                .map(move |file| format!("{dir}/{file}"))
        })
        .collect()
}

#[cfg(target_os = "linux")]
/// Whether `agent_id` has one entry name only (its own: no other writer's
/// spelling differs), so that what is stored there is what a lookup finds.
fn has_one_name(agent_id: &str) -> bool {
    agentmux_registry_core::name::other_writers_names(agent_id).is_empty()
}

/// What an answer from the view covers: the entries whose writes in flight
/// make a lookup read the directory instead ([`Feed::in_flight`]).
#[derive(Clone, Copy)]
pub(crate) enum Covers<'a> {
    /// The entries of one id.
    Id(&'a str),
    /// Every entry.
    All,
}

/// What a registry's lookups are served from.
enum Served {
    /// Not decided yet: the first lookup opens the feed.
    Unopened,
    /// A caller is opening the feed or applying
    /// notifications: lookups read the directory meanwhile, which is
    /// always current.
    #[cfg_attr(not(target_os = "linux"), allow(dead_code))]
    Busy,
    /// Entries kept current by notifications.
    #[cfg(target_os = "linux")]
    Feed(Box<Feed>),
    /// The directory, read by every call (no exact notifications on this
    /// file system).
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
/// mutex) and, when there are none to apply, answers from the view at once.
/// When there are, it takes the feed out, applies them (component calls, no
/// lock held) and puts it back; lookups meanwhile read the directory. The
/// first lookup reads the whole directory (and answers from the directory);
/// lookups meanwhile read the directory, so none waits for another.
#[cfg_attr(not(target_os = "linux"), allow(dead_code))]
pub(crate) struct Serving {
    served: std::sync::Mutex<Served>,
    /// The agents directory's path (it never changes; what it names may).
    root: std::sync::OnceLock<std::path::PathBuf>,
}

impl Default for Serving {
    fn default() -> Self {
        Serving {
            served: std::sync::Mutex::new(Served::Unopened),
            root: std::sync::OnceLock::new(),
        }
    }
}

/// Puts the feed back after it was applied to, or, if that work was
/// abandoned (its caller's future dropped), leaves it to be opened afresh.
#[cfg(target_os = "linux")]
struct Settle<'a> {
    serving: &'a Serving,
    outcome: Option<Served>,
}

#[cfg(target_os = "linux")]
impl Drop for Settle<'_> {
    fn drop(&mut self) {
        *self.serving.lock() = self.outcome.take().unwrap_or(Served::Unopened);
    }
}

/// The feed of `registry`, opened (reading the whole directory), or what
/// lookups are left to when it cannot be.
#[cfg(target_os = "linux")]
async fn opened(registry: &Registry) -> Served {
    match Feed::open(registry).await {
        Ok(Ok(feed)) => Served::Feed(Box::new(feed)),
        Ok(Err(why)) => not_served(registry, why),
        Err(e) => not_served(registry, Inexact::Now(e.with_causes())),
    }
}

/// What notifications that cannot be followed now leave lookups to.
#[cfg(target_os = "linux")]
fn not_served(registry: &Registry, why: Inexact) -> Served {
    match why {
        Inexact::Here => Served::ReadThrough,
        Inexact::Now(why) => {
            warn_read_through(registry, &why);
            Served::ReadThroughUntil(std::time::Instant::now() + FEED_RETRY)
        }
    }
}

impl Serving {
    #[cfg_attr(not(target_os = "linux"), allow(dead_code))]
    fn lock(&self) -> std::sync::MutexGuard<'_, Served> {
        self.served.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Opens the feed now (for tests and callers that want their next
    /// lookups served at once); true when lookups are served from it.
    #[cfg_attr(not(target_os = "linux"), allow(unused_variables))]
    pub(crate) async fn open_now(&self, registry: &Registry) -> bool {
        #[cfg(target_os = "linux")]
        let outcome = opened(registry).await;
        #[cfg(not(target_os = "linux"))]
        let outcome = Served::ReadThrough;
        let mut served = self.lock();
        *served = outcome;
        #[cfg(target_os = "linux")]
        let serving = matches!(*served, Served::Feed(_));
        #[cfg(not(target_os = "linux"))]
        let serving = false;
        serving
    }

    /// `f` of the entries known from notifications, once every notification
    /// queued when the call began is applied; `None` where (or while)
    /// lookups read the directory instead, and while a write to what the
    /// answer `covers` is in flight (see [`Feed::in_flight`]).
    #[cfg_attr(not(target_os = "linux"), allow(unused_variables))]
    pub(crate) async fn answer<T>(
        &self,
        registry: &Registry,
        covers: Covers<'_>,
        f: impl FnOnce(&View) -> T,
    ) -> Option<T> {
        #[cfg(target_os = "linux")]
        {
            // Looked at before the lock: a system call outside it.
            let identity = identity(self.root.get_or_init(|| registry.agents_dir()));
            let feed = {
                let mut served = self.lock();
                if let Served::ReadThroughUntil(until) = *served {
                    if std::time::Instant::now() >= until {
                        *served = Served::Unopened;
                    }
                }
                match &mut *served {
                    Served::ReadThrough | Served::ReadThroughUntil(_) | Served::Busy => {
                        return None
                    }
                    Served::Unopened => {
                        *served = Served::Busy;
                        None
                    }
                    Served::Feed(feed) => match feed.poll(identity) {
                        Ok(false) if feed.in_flight(covers, registry.is_shared()) => return None,
                        Ok(false) => return Some(f(feed.view())),
                        Ok(true) => match std::mem::replace(&mut *served, Served::Busy) {
                            Served::Feed(feed) => Some(feed),
                            _ => unreachable!("matched a feed"),
                        },
                        Err(why) => {
                            *served = not_served(registry, Inexact::Now(why.with_causes()));
                            return None;
                        }
                    },
                }
            };
            let Some(mut feed) = feed else {
                // This call reads the whole directory; the others read it
                // meanwhile. If this call is abandoned, the next one opens.
                let mut settle = Settle {
                    serving: self,
                    outcome: None,
                };
                settle.outcome = Some(opened(registry).await);
                return None;
            };
            let mut settle = Settle {
                serving: self,
                outcome: None,
            };
            match feed.catch_up(registry).await {
                Ok(_) => {
                    let answer =
                        (!feed.in_flight(covers, registry.is_shared())).then(|| f(feed.view()));
                    settle.outcome = Some(Served::Feed(feed));
                    answer
                }
                // What was read may be half applied: start afresh later.
                Err(e) => {
                    settle.outcome = Some(not_served(registry, Inexact::Now(e.with_causes())));
                    None
                }
            }
        }
        #[cfg(not(target_os = "linux"))]
        None
    }
}

#[cfg(target_os = "linux")]
fn warn_read_through(registry: &Registry, why: &str) {
    tracing::warn!(
        "agentmux-registry: lookups in {} read the directory for now: {why}",
        registry.agents_dir().display()
    );
}

#[cfg(target_os = "linux")]
use inotify::identity;

/// Why notifications are not exact.
#[cfg(target_os = "linux")]
#[derive(Debug)]
pub(crate) enum Inexact {
    /// Not on this file system.
    Here,
    /// Not now, for this reason; they may be later.
    Now(String),
}

/// The registry as its notifications show it (Linux, local file systems).
#[cfg(target_os = "linux")]
pub(crate) struct Feed {
    notifier: inotify::Notifier,
    names: Names,
    view: View,
    /// Notifications read but not applied yet.
    pending: inotify::Batch,
    /// Why the view cannot be kept exact any more, if it cannot.
    inexact: Option<String>,
}

#[cfg(target_os = "linux")]
impl Feed {
    /// Starts following `registry`'s directory: `Ok(Err(why))` where
    /// notifications cannot be exact (`Inexact::Here`: not a local file
    /// system; `Inexact::Now`: no inotify instance or watch to be had, or no
    /// directory to watch, which may change).
    pub(crate) async fn open(registry: &Registry) -> Result<Result<Feed, Inexact>, Error> {
        let dir = registry.agents_dir();
        match inotify::is_exact(&dir) {
            Some(true) => {}
            Some(false) => return Ok(Err(Inexact::Here)),
            None => {
                return Ok(Err(Inexact::Now(format!(
                    "cannot look at {}",
                    dir.display()
                ))))
            }
        }
        let mut notifier = match inotify::Notifier::new(&dir, registry.is_shared()) {
            Ok(notifier) => notifier,
            Err(e) => {
                return Ok(Err(Inexact::Now(format!(
                    "cannot watch {}: {e} (see /proc/sys/fs/inotify/)",
                    dir.display()
                ))))
            }
        };
        let (names, view) = read_all(registry, || notifier.watch_subdirs()).await?;
        if let Some(why) = notifier.lost() {
            return Ok(Err(Inexact::Now(why.to_owned())));
        }
        Ok(Ok(Feed {
            notifier,
            names,
            view,
            pending: inotify::Batch::default(),
            inexact: None,
        }))
    }

    /// What the feed knows.
    pub(crate) fn view(&self) -> &View {
        &self.view
    }

    /// Reads the notifications queued now, without applying them: true
    /// when some are waiting to be applied ([`Feed::catch_up`]), false when
    /// the view is current. No waiting, no component call.
    /// `identity` is what the agents directory's path names now (see
    /// [`identity`]), read before any lock is taken.
    pub(crate) fn poll(&mut self, identity: Option<(u64, u64)>) -> Result<bool, Error> {
        if let Some(why) = self.notifier.lost().or(self.inexact.as_deref()) {
            return Err(Error::Io(format!("notifications are not exact: {why}")));
        }
        let batch = self
            .notifier
            .drain(&self.names, identity)
            .map_err(|e| Error::directory(self.notifier.root(), e))?;
        self.pending.resync |= batch.resync;
        self.pending.names.extend(batch.names);
        Ok(self.pending.resync || !self.pending.names.is_empty())
    }

    /// Whether a write to what `covers` names may be in flight: its claim
    /// is held, as the notifications read so far show. The kernel makes a
    /// rename visible a moment before it queues its notification, so another
    /// process can read a new entry that no notification announces yet. The
    /// writer held the entry's claim since before its rename, and releases
    /// it only after the rename's notification was queued: an answer from
    /// the view while no claim is held is at least as new as anything
    /// another reader could have read before the call began.
    pub(crate) fn in_flight(&self, covers: Covers<'_>, shared: bool) -> bool {
        use agentmux_registry_core::name::{
            agent_dir_name, claim_file_name, other_writers_dir_names, other_writers_names,
        };
        match covers {
            Covers::All => self.notifier.claims_held(),
            Covers::Id(agent_id) if shared => agent_dir_name(agent_id)
                .into_iter()
                .chain(other_writers_dir_names(agent_id))
                .any(|dir| self.notifier.claims_held_in(&dir)),
            // The names of the entries the view holds for the id too: one
            // may be at a spelling of its own (an older writer's).
            Covers::Id(agent_id) => entry_file_name(agent_id)
                .into_iter()
                .chain(other_writers_names(agent_id))
                .chain(
                    self.view
                        .get(&id_key(agent_id))
                        .into_iter()
                        .flat_map(BTreeMap::values)
                        .flat_map(|entry| names_of(entry, false)),
                )
                .any(|name| self.notifier.claim_held("", &claim_file_name(&name))),
        }
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
        self.poll(identity(&dir))?;
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
                let all = registry.read_lookup_all(&agent_id).await?;
                if all.len() >= crate::registry::MAX_LOOKUP_ALL {
                    // More channels than one lookup returns: the view
                    // could not tell a channel left out from one removed.
                    let why = format!(
                        "agent {agent_id:?} has more than {} channels",
                        crate::registry::MAX_LOOKUP_ALL - 1
                    );
                    self.inexact = Some(why.clone());
                    return Err(Error::Io(format!("notifications are not exact: {why}")));
                }
                all
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

    use agentmux_registry_core::name::{may_name_an_entry, CLAIM_PREFIX};
    use rustix::event::{poll, PollFd, PollFlags};
    use rustix::fs::inotify::{self, CreateFlags, ReadFlags, WatchFlags};
    use rustix::io::Errno;

    use crate::watch::Stop;

    /// Local file systems, by `statfs` magic: only this host's kernel
    /// changes them, so inotify sees every change. Every other kind
    /// (network, cluster and FUSE file systems, VM shares) may be changed
    /// where this kernel does not see it.
    const LOCAL_MAGICS: [i64; 16] = [
        0xef53,      // ext2, ext3, ext4
        0x5846_5342, // XFS
        0x9123_683e, // Btrfs
        0x0102_1994, // tmpfs
        0x8584_58f6, // ramfs
        0x2fc1_2fc1, // ZFS
        0xf2f5_2010, // F2FS
        0x794c_7630, // overlayfs
        0x5265_4973, // ReiserFS
        0x3153_464a, // JFS
        0xca45_1a4e, // bcachefs
        0x3434,      // NILFS2
        0x4d44,      // FAT
        0x2011_bab0, // exFAT
        0x7366_746e, // NTFS (ntfs3)
        0x482b,      // HFS+
    ];

    /// Whether `magic` (a `statfs` file system type) is a local file system.
    pub(super) fn is_local(magic: i64) -> bool {
        LOCAL_MAGICS.contains(&magic)
    }

    /// Whether inotify sees every change of `dir`: a local file system.
    /// `None` when `dir` cannot be looked at.
    pub(super) fn is_exact(dir: &Path) -> Option<bool> {
        // `f_type`'s width differs between architectures.
        #[allow(clippy::unnecessary_cast)]
        rustix::fs::statfs(dir)
            .ok()
            .map(|fs| is_local(fs.f_type as i64))
    }

    #[cfg(test)]
    mod tests {
        #[test]
        fn only_local_file_systems_are_exact() {
            for local in [0xef53, 0x0102_1994, 0x5846_5342, 0x9123_683e, 0x794c_7630] {
                assert!(super::is_local(local), "{local:#x}");
            }
            // NFS, CIFS, FUSE, 9P, Lustre, GPFS, BeeGFS, OCFS2, GFS2,
            // kAFS, vboxsf: each may change where this kernel cannot see.
            for remote in [
                0x6969,
                0xff53_4d42,
                0x6573_5546,
                0x0102_1997,
                0x0bd0_0bd0,
                0x4750_4653,
                0x1983_0326,
                0x7461_636f,
                0x0116_1970,
                0x6b41_4653,
                0x786f_4256,
            ] {
                assert!(!super::is_local(remote), "{remote:#x}");
            }
        }
    }

    /// What a wait found.
    #[derive(Default)]
    pub(crate) struct Batch {
        /// Names (relative to the agents directory) that may have changed.
        pub(super) names: HashSet<String>,
        /// Notifications were lost, or the directory was replaced.
        pub(super) resync: bool,
    }

    /// The (device, inode) of the directory at `path`, never following a
    /// link; `None` when there is none.
    pub(crate) fn identity(path: &Path) -> Option<(u64, u64)> {
        use std::os::unix::fs::MetadataExt;
        std::fs::symlink_metadata(path)
            .ok()
            .filter(|m| m.is_dir())
            .map(|m| (m.dev(), m.ino()))
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
        /// The claim files present, as the notifications read so far show,
        /// by directory (`""`: the agents directory; shared: an agent
        /// directory's name).
        claims: HashMap<String, HashSet<String>>,
        /// The agents directory watched (device, inode); `None` while it
        /// is missing. A lookup compares it with what the path names now,
        /// so a replaced data dir above it is noticed too.
        watched: Option<(u64, u64)>,
        /// Why a directory that should be watched is not (the user's
        /// inotify watches are all in use, say): notifications are not
        /// exact while it lasts.
        lost: Option<String>,
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

    /// Applies a notification about the claim file `name` in `dir` to the
    /// claims recorded as held.
    fn note_claim(
        claims: &mut HashMap<String, HashSet<String>>,
        dir: &str,
        name: String,
        flags: ReadFlags,
    ) {
        if flags.intersects(ReadFlags::CREATE | ReadFlags::MOVED_TO) {
            claims.entry(dir.to_owned()).or_default().insert(name);
        } else if flags.intersects(ReadFlags::DELETE | ReadFlags::MOVED_FROM) {
            if let Some(held) = claims.get_mut(dir) {
                held.remove(&name);
                if held.is_empty() {
                    claims.remove(dir);
                }
            }
        }
    }

    impl Notifier {
        pub(super) fn new(dir: &Path, shared: bool) -> std::io::Result<Notifier> {
            let fd = inotify::init(CreateFlags::CLOEXEC | CreateFlags::NONBLOCK)?;
            let mut notifier = Notifier {
                fd,
                shared,
                root: dir.to_path_buf(),
                watched: None,
                lost: None,
                dir_wd: -1,
                parent_wd: None,
                base: None,
                subdirs: HashMap::new(),
                claims: HashMap::new(),
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
            self.claims.clear();
            self.lost = None;
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
            // Read after the watch is placed: a replacement after this is
            // either seen by the watch or by the comparison.
            self.watched = identity(dir);
            if !self.shared && self.dir_wd >= 0 {
                self.scan_claims("", dir);
            }
            self.watch_subdirs();
            Ok(())
        }

        /// Records the claim files in `path` (the directory `dir` names)
        /// as held. Read after its watch is placed: the notifications
        /// queued meanwhile are applied after, in order, so the record ends
        /// as the directory is.
        fn scan_claims(&mut self, dir: &str, path: &Path) {
            let held: HashSet<String> = std::fs::read_dir(path)
                .into_iter()
                .flatten()
                .flatten()
                .filter_map(|item| item.file_name().into_string().ok())
                .filter(|name| name.starts_with(CLAIM_PREFIX))
                .collect();
            if held.is_empty() {
                self.claims.remove(dir);
            } else {
                self.claims.insert(dir.to_owned(), held);
            }
        }

        /// Whether claim file `name` in `dir` is held.
        pub(super) fn claim_held(&self, dir: &str, name: &str) -> bool {
            self.claims.get(dir).is_some_and(|held| held.contains(name))
        }

        /// Whether any claim file in `dir` is held.
        pub(super) fn claims_held_in(&self, dir: &str) -> bool {
            self.claims.contains_key(dir)
        }

        /// Whether any claim file is held.
        pub(super) fn claims_held(&self) -> bool {
            !self.claims.is_empty()
        }

        /// The agents directory watched (the shared root).
        pub(super) fn root(&self) -> &Path {
            &self.root
        }

        /// Whether the agents directory's path still names the directory
        /// watched.
        pub(super) fn is_current(&self) -> bool {
            identity(&self.root) == self.watched
        }

        /// Why notifications are not exact now, if they are not.
        pub(super) fn lost(&self) -> Option<&str> {
            self.lost.as_deref()
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
            match inotify::add_watch(&self.fd, self.root.join(name), DIR_EVENTS) {
                Ok(wd) => {
                    self.subdirs.insert(wd, name.to_owned());
                    self.scan_claims(name, &self.root.join(name));
                }
                // Gone already, or a link: no entry is read from it.
                Err(Errno::NOENT | Errno::NOTDIR | Errno::LOOP) => {}
                Err(e) => {
                    self.lost = Some(format!(
                        "cannot watch {}: {e} (see /proc/sys/fs/inotify/max_user_watches)",
                        self.root.join(name).display()
                    ));
                }
            }
        }

        /// Waits until notifications are queued; false once stopped.
        pub(super) fn wait(&mut self, stop: &Stop) -> std::io::Result<bool> {
            loop {
                if stop.is_stopped() {
                    return Ok(false);
                }
                // Once a second, whether a directory above the agents
                // directory was replaced (no watch here sees that); without
                // a stop pipe, the stop flag is looked at then too.
                let woken = stop.woken_fd();
                let timeout = rustix::event::Timespec {
                    tv_sec: 1,
                    tv_nsec: 0,
                };
                let mut fds = vec![PollFd::new(&self.fd, PollFlags::IN)];
                fds.extend(woken.as_ref().map(|fd| PollFd::new(fd, PollFlags::IN)));
                match poll(&mut fds, Some(&timeout)) {
                    Ok(_) | Err(Errno::INTR) => {}
                    Err(e) => return Err(e.into()),
                }
                if !self.is_current() {
                    return Ok(true);
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
        pub(super) fn drain(
            &mut self,
            known: &HashMap<String, String>,
            identity: Option<(u64, u64)>,
        ) -> std::io::Result<Batch> {
            let mut batch = Batch {
                names: HashSet::new(),
                resync: identity != self.watched,
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
                    if !self.shared && name.starts_with(CLAIM_PREFIX) {
                        note_claim(&mut self.claims, "", name, flags);
                    } else if !self.shared {
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
                    // A directory's watch goes when the directory does, which
                    // may be long after its removal (a process had it open):
                    // by then a new directory of that name may hold claims.
                    if let Some(dir) = self.subdirs.remove(&wd) {
                        if !self.subdirs.values().any(|d| *d == dir) {
                            self.claims.remove(&dir);
                        }
                    }
                } else if let (Some(dir), Some(name)) = (self.subdirs.get(&wd), name) {
                    if name.starts_with(CLAIM_PREFIX) {
                        note_claim(&mut self.claims, dir, name, flags);
                    } else if may_name_an_entry(&name) {
                        batch.names.insert(format!("{dir}/{name}"));
                    }
                }
            }
            // Before the new ones are read: a directory removed and made
            // again holds what it holds now.
            for dir in &gone_dirs {
                self.claims.remove(dir);
                // Its watch now follows a directory no name of the root
                // holds: its later notifications concern no agent.
                let stale: Vec<i32> = self
                    .subdirs
                    .iter()
                    .filter(|(_, d)| *d == dir)
                    .map(|(&wd, _)| wd)
                    .collect();
                for wd in stale {
                    self.subdirs.remove(&wd);
                    let _ = inotify::remove_watch(&self.fd, wd);
                }
            }
            for dir in new_dirs {
                self.watch_subdir(&dir);
                batch
                    .names
                    .extend(super::entry_files(&self.root.join(&dir), &dir));
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
