//! The change feed: a watcher's view, built from its changes alone, ends
//! equal to the registry, whatever other processes did; lost notifications
//! are answered with a resync; a replaced directory is followed.

use std::collections::BTreeMap;
use std::time::Duration;

use agentmux_registry::blocking::Registry;
use agentmux_registry::watch::{Change, Notifications, Start, Watch};
use agentmux_registry::AgentEntry;
use agentmux_registry_tests::{fields, Fixture};

type View = BTreeMap<(String, String), AgentEntry>;

fn key(agent_id: &str, channel: &str) -> (String, String) {
    (agent_id.to_lowercase(), channel.to_lowercase())
}

/// The registry's entries, as a view.
fn listed(registry: &Registry) -> View {
    let entries = registry.list().unwrap();
    entries
        .into_iter()
        .map(|e| (key(&e.agent_id, &e.channel), e))
        .collect()
}

/// Applies changes to `view` until `until` was put; returns how many
/// changes came.
fn follow(watch: &mut Watch, view: &mut View, until: &str) -> u64 {
    let mut changes = 0;
    for change in watch {
        changes += 1;
        let sentinel = match &change {
            Ok(Change::Put(entry)) => entry.agent_id == until,
            Ok(Change::Resync(entries)) => entries.iter().any(|e| e.agent_id == until),
            _ => false,
        };
        apply(view, change.unwrap());
        if sentinel {
            return changes;
        }
    }
    panic!("the watch ended");
}

/// Applies one change to `view`.
fn apply(view: &mut View, change: Change) {
    match change {
        Change::Put(entry) => {
            view.insert(key(&entry.agent_id, &entry.channel), entry);
        }
        Change::Removed { agent_id, channel } => {
            assert!(
                view.remove(&key(&agent_id, &channel)).is_some(),
                "removed {agent_id:?} {channel:?}, which was never put"
            );
        }
        Change::Resync(entries) => {
            view.clear();
            view.extend(
                entries
                    .into_iter()
                    .map(|entry| (key(&entry.agent_id, &entry.channel), entry)),
            );
        }
    }
}

/// Writes an entry for `id` on `channel`.
fn write_on_channel(registry: &Registry, id: &str, channel: &str) {
    let mut f = fields(id, "http://127.0.0.1:1", "b", 0, "k");
    f.channel = channel.into();
    registry.write(f).unwrap();
}

#[cfg_attr(not(unix), allow(dead_code))]
/// Writes `id`, after which every earlier change is delivered before its
/// put (notifications are delivered in order).
fn sentinel(registry: &Registry, id: &str) {
    registry
        .write(fields(id, "http://127.0.0.1:9", "sentinel", 0, "k"))
        .unwrap();
}

// Several processes replacing files (see `stress` for why Unix only).
#[cfg(unix)]
#[test]
fn a_watcher_follows_four_processes_to_the_registry_s_exact_state() {
    let _alone = agentmux_registry_tests::one_heavy_test_at_a_time();
    let fixture = Fixture::new();
    let registry = Registry::open(fixture.data_dir()).unwrap();
    for k in 0..4 {
        registry
            .write(fields(
                &format!("any-{k}"),
                "http://127.0.0.1:2",
                "pre",
                0,
                "k",
            ))
            .unwrap();
    }
    let mut watch = registry.watch(Start::Current).unwrap();
    let dir = fixture.data_dir();
    let workers: Vec<_> = (0..4)
        .map(|w| {
            std::process::Command::new(env!("CARGO_BIN_EXE_registry-watch-worker"))
                .args([dir.to_str().unwrap(), &w.to_string(), "1500"])
                .stdout(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    // The watcher follows while they run; once all are done, a sentinel
    // written after them ends the following.
    let waiter = {
        let registry = registry.clone();
        std::thread::spawn(move || {
            let mut failed = 0u64;
            for worker in workers {
                let out = worker.wait_with_output().unwrap();
                assert!(out.status.success());
                failed += String::from_utf8_lossy(&out.stdout)
                    .trim()
                    .parse::<u64>()
                    .unwrap();
            }
            sentinel(&registry, "zz-sentinel");
            failed
        })
    };
    let mut view = View::new();
    let changes = follow(&mut watch, &mut view, "zz-sentinel");
    let failed = waiter.join().unwrap();
    let expected = listed(&registry);
    let missed: Vec<_> = expected.keys().filter(|k| !view.contains_key(*k)).collect();
    let extra: Vec<_> = view.keys().filter(|k| !expected.contains_key(*k)).collect();
    let wrong: Vec<_> = expected
        .iter()
        .filter(|(k, e)| view.get(*k).is_some_and(|v| v != *e))
        .map(|(k, _)| k)
        .collect();
    eprintln!(
        "watch: 4 processes x 1500 operations, {changes} changes followed, {} entries at the end: missed={} extra={} wrong={} failed_operations={failed}",
        expected.len(),
        missed.len(),
        extra.len(),
        wrong.len()
    );
    assert!(
        missed.is_empty() && extra.is_empty() && wrong.is_empty(),
        "missed {missed:?}, extra {extra:?}, wrong {wrong:?}"
    );
    assert_eq!(failed, 0, "operations failed (see stderr)");
    assert!(changes > 100, "only {changes} changes seen while they ran");
}

#[cfg(target_os = "linux")]
#[test]
fn lost_notifications_are_answered_with_the_full_set() {
    let fixture = Fixture::new();
    let registry = Registry::open(fixture.data_dir()).unwrap();
    registry
        .write(fields("before", "http://127.0.0.1:1", "b", 0, "k"))
        .unwrap();
    let mut watch = registry.watch(Start::Now).unwrap();
    assert_eq!(watch.notifications(), Notifications::Exact);
    // While nobody reads the watch, more notifications than the kernel
    // queues (each file: created, written, removed).
    let max: usize = std::fs::read_to_string("/proc/sys/fs/inotify/max_queued_events")
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    for i in 0..max / 3 + 100 {
        let path = fixture.agents().join(format!("junk-{i}.json"));
        std::fs::write(&path, b"not an entry").unwrap();
        std::fs::remove_file(&path).unwrap();
    }
    registry
        .write(fields("after", "http://127.0.0.1:2", "b", 0, "k"))
        .unwrap();
    registry.remove("before").unwrap();
    let first = watch.next().unwrap().unwrap();
    let Change::Resync(entries) = first else {
        panic!("expected a resync, got {first:?}");
    };
    let ids: Vec<&str> = entries.iter().map(|e| e.agent_id.as_str()).collect();
    assert_eq!(ids, ["after"]);
    // And it goes on.
    registry
        .write(fields("later", "http://127.0.0.1:3", "b", 0, "k"))
        .unwrap();
    let mut view: View = entries
        .into_iter()
        .map(|e| (key(&e.agent_id, &e.channel), e))
        .collect();
    follow(&mut watch, &mut view, "later");
    assert_eq!(view, listed(&registry));
}

// Windows refuses to rename a directory a process has open.
#[cfg(unix)]
#[test]
fn a_replaced_agents_directory_is_followed() {
    let fixture = Fixture::new();
    let registry = Registry::open(fixture.data_dir()).unwrap();
    registry
        .write(fields("old", "http://127.0.0.1:1", "b", 0, "k"))
        .unwrap();
    let mut watch = registry.watch(Start::Current).unwrap();
    let mut view = View::new();
    follow(&mut watch, &mut view, "old");
    // Another instance moves the directory aside and puts a new one with
    // an entry of its own in place.
    let agents = fixture.agents();
    let aside = fixture.data_dir().join("agents-aside");
    std::fs::rename(&agents, &aside).unwrap();
    std::fs::create_dir(&agents).unwrap();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&agents, std::fs::Permissions::from_mode(0o700)).unwrap();
    }
    std::fs::copy(aside.join("old.json"), agents.join("moved.json")).unwrap();
    let moved = std::fs::read_to_string(agents.join("moved.json"))
        .unwrap()
        .replace("\"old\"", "\"moved\"");
    std::fs::write(agents.join("moved.json"), moved).unwrap();
    sentinel(&registry, "zz-sentinel");
    follow(&mut watch, &mut view, "zz-sentinel");
    let ids: Vec<&str> = view.values().map(|e| e.agent_id.as_str()).collect();
    assert_eq!(ids, ["moved", "zz-sentinel"]);
    assert_eq!(view, listed(&registry));
}

#[test]
fn the_shared_registry_is_watched_per_agent_and_channel() {
    let fixture = Fixture::new();
    let root = fixture.data_dir().join("shared");
    let registry = Registry::open_shared(&root).unwrap();
    let mut watch = registry.watch(Start::Now).unwrap();
    let write = |id: &str, channel: &str| write_on_channel(&registry, id, channel);
    write("a1", "stable");
    write("A1", "dev-a");
    write("b1", "stable");
    assert!(registry.remove_channel("a1", "stable").unwrap());
    // A whole agent directory goes: its entries are removed with it.
    assert!(registry.remove("b1").unwrap());
    let mut view = View::new();
    write("zz-sentinel", "stable");
    follow(&mut watch, &mut view, "zz-sentinel");
    let keys: Vec<_> = view.keys().cloned().collect();
    assert_eq!(
        keys,
        [key("a1", "dev-a"), key("zz-sentinel", "stable")],
        "{view:?}"
    );
    assert_eq!(view, listed(&registry));
}

/// Where the OS notifies changes (inotify on Linux, kqueue on macOS,
/// ReadDirectoryChangesW on Windows), they are delivered without waiting for
/// a rescan: with rescans an hour apart, every change still arrives, in a
/// per-channel registry and in the agent directories of a shared one.
#[test]
fn os_notifications_deliver_changes_without_waiting_for_a_rescan() {
    let fixture = Fixture::new();
    let shared = Registry::open_shared(fixture.data_dir().join("shared")).unwrap();
    for registry in [&fixture.registry, &shared] {
        let mut watch = registry
            .watch_rescanning_every(Start::Now, Duration::from_secs(3600))
            .unwrap();
        let notifications = watch.notifications();
        assert!(
            matches!(
                notifications,
                Notifications::Exact | Notifications::Prompted(_)
            ),
            "a local temporary directory is watched by {notifications:?}"
        );
        // The follower hands over its view after every change. (It stays
        // blocked in the watch after the test; the process ends it.)
        let rescans = watch.rescan_counter();
        let (views, delivered) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut view = View::new();
            for change in &mut watch {
                apply(&mut view, change.unwrap());
                if views.send(view.clone()).is_err() {
                    return;
                }
            }
        });
        let write = |id: &str, channel: &str| write_on_channel(registry, id, channel);
        write("a1", "stable");
        write("b1", "dev");
        write("a1", "stable");
        assert!(registry.remove("b1").unwrap());
        write("c1", "stable");
        let expected = listed(registry);
        assert_eq!(expected.len(), 2);
        // Where a rescan can see a name mid-rename (Wine), a view may be
        // wrong for a moment; the rescan the last change prompts sets it
        // right.
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        let mut view = View::new();
        while view != expected {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            view = delivered.recv_timeout(left).unwrap_or_else(|_| {
                panic!(
                    "after 60 s with rescans an hour apart ({notifications:?}) the watch \
                     shows {view:?}, the registry {expected:?}"
                )
            });
        }
        // Rescans come from notifications, not from a timer of their own:
        // with nothing changing, at most one for a second (a notification
        // of the last write's claim file may still be on its way); a
        // notifier that woke the watch at every one of its own timeouts
        // would make about five.
        if let Notifications::Prompted(_) = notifications {
            let before = rescans.load(std::sync::atomic::Ordering::Relaxed);
            std::thread::sleep(Duration::from_secs(1));
            let after = rescans.load(std::sync::atomic::Ordering::Relaxed);
            assert!(
                after - before <= 1,
                "{} rescans with nothing changing",
                after - before
            );
        }
    }
}

/// Dropping a watch ends the thread that follows its OS notifications (with
/// its directory handle or descriptors).
#[cfg(any(windows, target_os = "macos"))]
#[test]
fn a_dropped_watch_ends_its_os_notifications() {
    let fixture = Fixture::new();
    let watch = fixture
        .registry
        .watch_rescanning_every(Start::Now, Duration::from_secs(3600))
        .unwrap();
    let running = watch
        .notifier_running()
        .expect("a watch here follows OS notifications");
    assert!(running());
    drop(watch);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while running() {
        assert!(
            std::time::Instant::now() < deadline,
            "the notifications' thread still runs 10 s after the watch was dropped"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The guarantee of lookups served from notifications: a lookup never
/// returns an entry older than one a write completed before the lookup
/// began wrote, whichever process wrote it. Another process writes version
/// k, then says so through a pipe; the next lookup here must return k or
/// later. The writer also overflows the notification queue on purpose and
/// replaces the agents directory now and then.
#[cfg(target_os = "linux")]
#[test]
fn lookups_served_from_notifications_are_never_stale_across_processes() {
    use std::io::{BufRead, Write};
    // Two queue overflows and two directory replacements among them.
    const TRIALS: u64 = 50_000;
    let _alone = agentmux_registry_tests::one_heavy_test_at_a_time();
    let fixture = Fixture::new();
    let registry = Registry::open(fixture.data_dir()).unwrap();
    assert!(registry.serve_lookups_from_notifications_now());
    assert_eq!(registry.lookup("probe").unwrap(), None);
    let dir = fixture.data_dir();
    let mut writer = std::process::Command::new(env!("CARGO_BIN_EXE_registry-watch-worker"))
        .args(["probe", dir.to_str().unwrap(), &TRIALS.to_string()])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut ack = writer.stdin.take().unwrap();
    let written = std::io::BufReader::new(writer.stdout.take().unwrap()).lines();
    let (mut stale, mut missing, mut trials) = (0u64, 0u64, 0u64);
    for line in written {
        let k: u64 = line.unwrap().parse().unwrap();
        match registry.lookup("probe").unwrap() {
            Some(entry) if entry.updated_at >= k => {}
            Some(_) => stale += 1,
            None => missing += 1,
        }
        trials += 1;
        writeln!(ack).unwrap();
    }
    assert!(writer.wait().unwrap().success());
    let served = registry.lookups_served_from_notifications();
    // As the writer makes them (see `probe` in watch_worker.rs).
    let (overflows, replacements) = (TRIALS / 20_000, (TRIALS + 12_500) / 25_000);
    eprintln!(
        "never stale: {trials} trials, stale={stale} missing={missing}, \
         {served} answered from notifications ({overflows} queue overflows, \
         {replacements} directory replacements)"
    );
    assert_eq!(trials, TRIALS);
    assert_eq!((stale, missing), (0, 0));
    // Every trial was answered from notifications, not by reading the file.
    assert_eq!(served, TRIALS);
}

/// Lookups from several threads while another rewrites an entry: each
/// returns at least the version written before it began, and lookups
/// abandoned midway (their future dropped while applying notifications)
/// leave later lookups working and current.
#[cfg(target_os = "linux")]
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_and_abandoned_lookups_stay_current() {
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::Arc;
    let fixture = Fixture::new();
    let registry = agentmux_registry::Registry::open(fixture.data_dir()).unwrap();
    assert!(registry.serve_lookups_from_notifications_now().await);
    let write = |registry: &agentmux_registry::Registry, k: u64| {
        let registry = registry.clone();
        async move {
            registry
                .write(fields("hot", "http://127.0.0.1:1", &k.to_string(), 0, "k"))
                .await
                .unwrap();
        }
    };
    write(&registry, 0).await;
    let written = Arc::new(AtomicU64::new(0));
    // Lookups made, and readers done: the writer lets some lookups run
    // between its writes, while no write holds the entry's claim (lookups
    // then read the directory), so that notifications serve lookups too.
    let (looked, done) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let readers: Vec<_> = (0..3)
        .map(|_| {
            let (registry, written) = (registry.clone(), written.clone());
            let (looked, done) = (looked.clone(), done.clone());
            tokio::spawn(async move {
                let (mut stale, mut abandoned) = (0u64, 0u64);
                for i in 0..2_000u64 {
                    let k = written.load(Ordering::SeqCst);
                    if i % 4 == 3 {
                        // Dropped at its first await, whatever it was doing.
                        let quick = tokio::time::timeout(Duration::ZERO, registry.lookup("hot"));
                        abandoned += u64::from(quick.await.is_err());
                        continue;
                    }
                    let found = registry.lookup("hot").await.unwrap().unwrap();
                    stale += u64::from(found.block_id.parse::<u64>().unwrap() < k);
                    looked.fetch_add(1, Ordering::SeqCst);
                }
                done.fetch_add(1, Ordering::SeqCst);
                (stale, abandoned)
            })
        })
        .collect();
    for k in 1..=500 {
        write(&registry, k).await;
        written.store(k, Ordering::SeqCst);
        let since = looked.load(Ordering::SeqCst);
        while looked.load(Ordering::SeqCst) < since + 6 && done.load(Ordering::SeqCst) < 3 {
            tokio::task::yield_now().await;
        }
    }
    let (mut stale, mut abandoned) = (0, 0);
    for reader in readers {
        let (s, a) = reader.await.unwrap();
        stale += s;
        abandoned += a;
    }
    assert_eq!(stale, 0);
    write(&registry, 501).await;
    let last = registry.lookup("hot").await.unwrap().unwrap();
    assert_eq!(last.block_id, "501");
    eprintln!(
        "concurrent lookups: 4,500 by 3 tasks, stale=0; of 1,500 given no time, {abandoned} abandoned midway; {} from notifications",
        registry.lookups_served_from_notifications()
    );
    assert!(registry.lookups_served_from_notifications() > 1_000);
}

/// A data dir replaced above the agents directory (no watch of the agents
/// directory or its parent sees that) is noticed by the next lookup.
#[cfg(target_os = "linux")]
#[test]
fn a_replaced_data_dir_is_noticed_by_the_next_lookup() {
    use std::os::unix::fs::PermissionsExt;
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let registry = Registry::open(&data).unwrap();
    assert!(registry.serve_lookups_from_notifications_now());
    registry
        .write(fields("x", "http://127.0.0.1:1", "first", 0, "k"))
        .unwrap();
    assert_eq!(registry.lookup("x").unwrap().unwrap().block_id, "first");
    let served = registry.lookups_served_from_notifications();
    assert_eq!(served, 1, "answered from notifications");
    // Another instance moves the whole data dir aside and makes a new one.
    std::fs::rename(&data, tmp.path().join("data-aside")).unwrap();
    let agents = data.join("agents");
    std::fs::create_dir_all(&agents).unwrap();
    for dir in [&data, &agents] {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).unwrap();
    }
    let mut entry: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(tmp.path().join("data-aside/agents/x.json")).unwrap(),
    )
    .unwrap();
    entry["block_id"] = "second".into();
    std::fs::write(agents.join("x.json"), entry.to_string()).unwrap();
    std::fs::set_permissions(
        agents.join("x.json"),
        std::fs::Permissions::from_mode(0o600),
    )
    .unwrap();
    assert_eq!(registry.lookup("x").unwrap().unwrap().block_id, "second");
}

/// Moves the data dir at `data` aside and puts a new one in its place,
/// holding one entry, `id`, written as another instance would.
#[cfg(target_os = "linux")]
fn replace_data_dir(data: &std::path::Path, aside: &str, id: &str) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::rename(data, data.with_file_name(aside)).unwrap();
    let agents = data.join("agents");
    std::fs::create_dir_all(&agents).unwrap();
    for dir in [data, &agents] {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).unwrap();
    }
    let entry = agentmux_registry_tests::SeedEntry::new(id, agentmux_registry_tests::now_ms());
    let path = agents.join(format!("{id}.json"));
    std::fs::write(&path, entry.to_json()).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
}

/// A watch follows its data dir when another instance replaces it, and
/// goes on (by rescans) when it is removed and made again.
#[cfg(target_os = "linux")]
#[test]
fn a_watch_follows_a_replaced_or_removed_data_dir() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let registry = Registry::open(&data).unwrap();
    registry
        .write(fields("old", "http://127.0.0.1:1", "b", 0, "k"))
        .unwrap();
    let mut watch = registry.watch(Start::Current).unwrap();
    let mut view = View::new();
    follow(&mut watch, &mut view, "old");
    replace_data_dir(&data, "data-aside", "new");
    // No sentinel can be written before the watch has noticed (it might
    // land in the old directory): the new entry itself ends the following.
    follow(&mut watch, &mut view, "new");
    let ids: Vec<&str> = view.values().map(|e| e.agent_id.as_str()).collect();
    assert_eq!(ids, ["new"], "{view:?}");
    // Removed whole, then made again.
    std::fs::remove_dir_all(&data).unwrap();
    replace_data_dir_after_removal(&data, "again");
    follow(&mut watch, &mut view, "again");
    let ids: Vec<&str> = view.values().map(|e| e.agent_id.as_str()).collect();
    assert_eq!(ids, ["again"], "{view:?}");
}

/// Makes the data dir at `data` (gone) again, holding one entry, `id`.
#[cfg(target_os = "linux")]
fn replace_data_dir_after_removal(data: &std::path::Path, id: &str) {
    std::fs::create_dir_all(data.with_file_name("scratch")).unwrap();
    let staged = data.with_file_name("staged");
    std::fs::create_dir_all(&staged).unwrap();
    replace_data_dir(&staged, "staged-aside", id);
    std::fs::rename(&staged, data).unwrap();
}

/// An agent with more channels than one lookup returns (256): no channel
/// is reported removed that is not, and lookups and listings stay whole.
#[test]
fn an_agent_with_more_channels_than_a_lookup_returns_is_followed_whole() {
    let fixture = Fixture::new();
    let root = fixture.data_dir().join("shared");
    let registry = Registry::open_shared(&root).unwrap();
    let write = |channel: &str, block: &str| {
        let mut f = fields("big", "http://127.0.0.1:1", block, 0, "k");
        f.channel = channel.into();
        registry.write(f).unwrap();
    };
    for c in 0..300 {
        write(&format!("c{c}"), "first");
    }
    let _ = registry.serve_lookups_from_notifications_now();
    let mut watch = registry.watch(Start::Now).unwrap();
    write("c5", "second");
    write("zz", "sentinel");
    let mut removed = 0;
    let mut c5 = String::new();
    for change in &mut watch {
        match change.unwrap() {
            Change::Removed { .. } => removed += 1,
            Change::Put(e) if e.channel == "c5" => c5 = e.block_id,
            Change::Put(e) if e.channel == "zz" => break,
            // The watch may fall back to rescans here: the full set.
            Change::Resync(all) => {
                assert_eq!(all.len(), 301, "the full set");
                if let Some(e) = all.iter().find(|e| e.channel == "c5") {
                    c5 = e.block_id.clone();
                }
                if all.iter().any(|e| e.channel == "zz") {
                    break;
                }
            }
            _ => {}
        }
    }
    assert_eq!(removed, 0, "no channel was removed");
    assert_eq!(c5, "second");
    assert_eq!(registry.list().unwrap().len(), 301);
    assert_eq!(registry.lookup_all("big").unwrap().len(), 256);
}

/// The entry file of `id` under `root` (any depth), as the registry wrote it.
#[cfg(target_os = "linux")]
fn entry_file_of(root: &std::path::Path, id: &str) -> std::path::PathBuf {
    let mut dirs = vec![root.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        for item in std::fs::read_dir(&dir).unwrap().flatten() {
            let path = item.path();
            if item.file_type().unwrap().is_dir() {
                dirs.push(path);
            } else if path.extension().is_some_and(|e| e == "json")
                && std::fs::read_to_string(&path)
                    .unwrap()
                    .contains(&format!("\"agent_id\":\"{id}\""))
            {
                return path;
            }
        }
    }
    panic!("no entry file of {id:?} under {}", root.display());
}

/// Rewrites the entry file `entry` with `block_id`, through a hard link
/// from outside its directory: the change is visible to every reader, but no
/// notification reaches a watch of the entry's directory. That is how a
/// rename looks to other processes in the moment between the kernel making
/// it visible and queueing its notification.
#[cfg(target_os = "linux")]
fn change_unannounced(entry: &std::path::Path, outside: &std::path::Path, block_id: &str) {
    let link = outside.join("link.json");
    let _ = std::fs::remove_file(&link);
    std::fs::hard_link(entry, &link).unwrap();
    let mut json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&link).unwrap()).unwrap();
    json["block_id"] = block_id.into();
    std::fs::write(&link, json.to_string()).unwrap();
    std::fs::remove_file(&link).unwrap();
}

/// A write in flight is never answered from notifications. The kernel makes
/// a rename visible a moment before it queues the rename's notification, so
/// a lookup in another process can read the new entry first; a lookup
/// answered from notifications after that one must not return the older
/// entry (the churn test caught one doing so). Every writer holds the
/// entry's claim from before its rename until after that notification is
/// queued, so while a claim is held, lookups and listings read the
/// directory. Emulated here: the claim taken by hand (before the lookups are
/// served, and after), the entry changed unannounced.
#[cfg(target_os = "linux")]
#[test]
fn a_write_in_flight_is_never_answered_from_notifications() {
    use agentmux_registry_core::name::claim_file_name;
    let fixture = Fixture::new();
    let outside = tempfile::tempdir().unwrap();
    let registry = &fixture.registry;
    registry
        .write(fields("x", "http://127.0.0.1:1", "first", 0, "k"))
        .unwrap();
    // A claim held before the lookups are served is found by the first read.
    let claim = fixture.path(&claim_file_name("x.json"));
    std::fs::write(&claim, "").unwrap();
    let late = Registry::open(fixture.data_dir()).unwrap();
    assert!(late.serve_lookups_from_notifications_now());
    change_unannounced(&fixture.path("x.json"), outside.path(), "second");
    assert_eq!(late.lookup("x").unwrap().unwrap().block_id, "second");
    assert_eq!(late.lookups_served_from_notifications(), 0);
    std::fs::remove_file(&claim).unwrap();

    assert!(registry.serve_lookups_from_notifications_now());
    assert_eq!(registry.lookup("x").unwrap().unwrap().block_id, "second");
    assert_eq!(registry.lookups_served_from_notifications(), 1);
    // The window itself: with no claim held, the unannounced change is not
    // seen (what a lookup would answer while a rename's notification is not
    // queued yet, were the writer not holding the claim).
    change_unannounced(&fixture.path("x.json"), outside.path(), "third");
    assert_eq!(registry.lookup("x").unwrap().unwrap().block_id, "second");
    assert_eq!(registry.lookups_served_from_notifications(), 2);
    // With the claim held, the lookup and the listing read the directory.
    std::fs::write(&claim, "").unwrap();
    change_unannounced(&fixture.path("x.json"), outside.path(), "fourth");
    assert_eq!(registry.lookup("x").unwrap().unwrap().block_id, "fourth");
    let listed: Vec<String> = registry
        .list()
        .unwrap()
        .into_iter()
        .map(|e| e.block_id)
        .collect();
    assert_eq!(listed, ["fourth"]);
    assert_eq!(registry.lookups_served_from_notifications(), 2);
    // Another id's claim leaves this id's lookups served.
    registry
        .write(fields("y", "http://127.0.0.1:1", "b", 0, "k"))
        .unwrap();
    assert_eq!(registry.lookup("y").unwrap().unwrap().block_id, "b");
    assert_eq!(registry.lookups_served_from_notifications(), 3);
    // Released, and the write made: served again, and current.
    std::fs::remove_file(&claim).unwrap();
    registry
        .write(fields("x", "http://127.0.0.1:1", "fifth", 0, "k"))
        .unwrap();
    assert_eq!(registry.lookup("x").unwrap().unwrap().block_id, "fifth");
    assert_eq!(registry.lookups_served_from_notifications(), 4);
}

/// The same in a shared registry, where an agent's channels are files in
/// its agent directory: a claim held there makes its lookups read the
/// directory.
#[cfg(target_os = "linux")]
#[test]
fn a_write_in_flight_in_an_agent_directory_is_never_answered_from_notifications() {
    let fixture = Fixture::new();
    let outside = tempfile::tempdir().unwrap();
    let root = fixture.data_dir().join("shared");
    let registry = Registry::open_shared(&root).unwrap();
    write_on_channel(&registry, "z", "c1");
    let entry = entry_file_of(&root, "z");
    let claim = entry.parent().unwrap().join(".claim-0123456789abcdef");
    // A claim held before the lookups are served is found by the first read.
    std::fs::write(&claim, "").unwrap();
    let late = Registry::open_shared(&root).unwrap();
    assert!(late.serve_lookups_from_notifications_now());
    change_unannounced(&entry, outside.path(), "early");
    assert_eq!(late.lookup("z").unwrap().unwrap().block_id, "early");
    assert_eq!(late.lookups_served_from_notifications(), 0);
    std::fs::remove_file(&claim).unwrap();

    assert!(registry.serve_lookups_from_notifications_now());
    let lookup = || registry.lookup("z").unwrap().unwrap().block_id;
    let lookup_all = || registry.lookup_all("z").unwrap()[0].block_id.clone();
    change_unannounced(&entry, outside.path(), "second");
    // No claim held: answered from notifications (the unannounced change
    // unseen).
    assert_eq!(
        (lookup(), lookup_all()),
        ("early".to_owned(), "early".to_owned())
    );
    assert_eq!(registry.lookups_served_from_notifications(), 1);
    std::fs::write(&claim, "").unwrap();
    assert_eq!(
        (lookup(), lookup_all()),
        ("second".to_owned(), "second".to_owned())
    );
    assert_eq!(registry.lookups_served_from_notifications(), 1);
    std::fs::remove_file(&claim).unwrap();
    write_on_channel(&registry, "z", "c1");
    assert_eq!(lookup(), "b");
    assert_eq!(registry.lookups_served_from_notifications(), 2);
}

/// An agent directory removed while a process has it open loses its watch
/// only when that process closes it. A new directory of that name, made
/// meanwhile with a write in flight in it, keeps its claim counted then.
#[cfg(target_os = "linux")]
#[test]
fn an_agent_directory_made_again_while_the_old_one_is_open_keeps_its_claims() {
    use std::os::unix::fs::PermissionsExt;
    let fixture = Fixture::new();
    let outside = tempfile::tempdir().unwrap();
    let root = fixture.data_dir().join("shared");
    let registry = Registry::open_shared(&root).unwrap();
    write_on_channel(&registry, "z", "c1");
    assert!(registry.serve_lookups_from_notifications_now());
    let entry = entry_file_of(&root, "z");
    let agent_dir = entry.parent().unwrap().to_path_buf();
    let saved = std::fs::read(&entry).unwrap();
    // Another process has the agent directory open while it is removed...
    let held_open = std::fs::File::open(&agent_dir).unwrap();
    std::fs::remove_file(&entry).unwrap();
    std::fs::remove_dir(&agent_dir).unwrap();
    assert_eq!(registry.lookup("z").unwrap(), None);
    // ... and it is made again, with a write in flight in it.
    std::fs::create_dir(&agent_dir).unwrap();
    std::fs::set_permissions(&agent_dir, std::fs::Permissions::from_mode(0o700)).unwrap();
    std::fs::write(agent_dir.join(".claim-0123456789abcdef"), "").unwrap();
    std::fs::write(&entry, &saved).unwrap();
    std::fs::set_permissions(&entry, std::fs::Permissions::from_mode(0o600)).unwrap();
    assert_eq!(registry.lookup("z").unwrap().unwrap().block_id, "b");
    // The removed directory's watch goes now, its notification last.
    drop(held_open);
    change_unannounced(&entry, outside.path(), "second");
    assert_eq!(registry.lookup("z").unwrap().unwrap().block_id, "second");
}

/// An entry at an older writer's spelling of its id (`AgentX.json`, the
/// case-preserving name registry 0.2 used) is in the view under its id, so a
/// lookup of another spelling (`agentx`) may be answered with it. A claim
/// held on that name makes such a lookup read the directory too, as one on
/// the looked-up spelling's own names does.
#[cfg(target_os = "linux")]
#[test]
fn a_write_in_flight_at_an_older_spelling_is_never_answered_from_notifications() {
    use agentmux_registry_core::name::claim_file_name;
    let fixture = Fixture::new();
    let outside = tempfile::tempdir().unwrap();
    let registry = &fixture.registry;
    registry
        .write(fields("AgentX", "http://127.0.0.1:1", "first", 0, "k"))
        .unwrap();
    let older = fixture.path("AgentX.json");
    std::fs::rename(fixture.path("agentx.json"), &older).unwrap();
    assert!(registry.serve_lookups_from_notifications_now());
    // No claim held: a lookup of the other spelling is answered from the
    // view, with the entry at the older name (the change below unseen).
    change_unannounced(&older, outside.path(), "second");
    assert_eq!(
        registry.lookup("agentx").unwrap().unwrap().block_id,
        "first"
    );
    assert_eq!(registry.lookups_served_from_notifications(), 1);
    // The claim of the older name held: the lookup reads the directory,
    // answering as a registry that never serves lookups does.
    let claim = fixture.path(&claim_file_name("AgentX.json"));
    std::fs::write(&claim, "").unwrap();
    let reading = Registry::open_with(
        fixture.data_dir(),
        agentmux_registry::Options::new().lookups_from_notifications(false),
    )
    .unwrap();
    assert_eq!(
        registry.lookup("agentx").unwrap(),
        reading.lookup("agentx").unwrap()
    );
    assert_eq!(registry.lookups_served_from_notifications(), 1);
    // Released: served again.
    std::fs::remove_file(&claim).unwrap();
    registry.lookup("agentx").unwrap();
    assert_eq!(registry.lookups_served_from_notifications(), 2);
}
