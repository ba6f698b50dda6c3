//! The host-wide shared registry (`{root}/{agent}/{channel}.json`): one entry
//! per agent and channel, as agentmux-srv keeps it, with every rule of the
//! per-channel registry.

use std::path::Path;
#[cfg(unix)]
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
#[cfg(unix)]
use std::sync::Arc;
use std::time::Duration;

use agentmux_registry::blocking::Registry;
use agentmux_registry::{EntryFields, Error, Owner, Renewal};
use agentmux_registry_tests::{fields, now_ms};

fn in_channel(agent_id: &str, channel: &str, pid: u32) -> EntryFields {
    EntryFields {
        channel: channel.into(),
        ..fields(agent_id, "http://127.0.0.1:1", "b", pid, "k")
    }
}

fn open(root: &Path) -> Registry {
    Registry::open_shared(root).unwrap()
}

#[test]
fn two_channels_publish_one_agent_and_are_found_freshest_first() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("reactive");
    let registry = open(&root);
    assert!(registry.is_shared());
    let stable = registry.write(in_channel("AgentX", "stable", 0)).unwrap();
    std::thread::sleep(Duration::from_millis(2));
    let dev = registry.write(in_channel("agentx", "Dev-A", 0)).unwrap();
    assert!(root.join("agentx/stable.json").is_file());
    assert!(root.join("agentx/dev-a.json").is_file());

    assert_eq!(
        registry.lookup_all("AGENTX").unwrap(),
        [dev.clone(), stable.clone()],
        "freshest first, any case"
    );
    assert_eq!(registry.lookup("agentX").unwrap(), Some(dev.clone()));
    assert_eq!(registry.list().unwrap(), [dev.clone(), stable.clone()]);

    // One channel's entry goes; the other stays. The last one takes the
    // agent's directory with it.
    assert!(registry.remove_channel("AgentX", "stable").unwrap());
    assert!(!registry.remove_channel("AgentX", "stable").unwrap());
    assert_eq!(registry.lookup_all("agentx").unwrap(), [dev]);
    assert!(registry.remove_channel("AgentX", "dev-a").unwrap());
    assert!(
        !root.join("agentx").exists(),
        "the empty agent dir is removed"
    );
    assert_eq!(registry.lookup_all("agentx").unwrap(), []);
}

#[test]
fn a_write_needs_a_channel_and_names_are_checked() {
    let tmp = tempfile::tempdir().unwrap();
    let registry = open(&tmp.path().join("reactive"));
    for (bad, kind) in [
        (in_channel("a", "", 0), "invalid field"),
        (in_channel("", "stable", 0), "invalid agent id"),
        (in_channel("a", &"c".repeat(300), 0), "invalid field"),
    ] {
        let err = registry.write(bad.clone()).unwrap_err();
        assert!(err.to_string().starts_with(kind), "{bad:?}: {err}");
    }
    assert!(matches!(
        registry.remove_channel("a", ""),
        Err(Error::InvalidField(_))
    ));
    // Per-channel registries have no channels to remove.
    let per_channel = Registry::open(tmp.path().join("data")).unwrap();
    assert!(matches!(
        per_channel.remove_channel("a", "stable"),
        Err(Error::InvalidField(_))
    ));
}

#[test]
fn registrations_renew_and_remove_their_own_channel_entry_only() {
    let tmp = tempfile::tempdir().unwrap();
    let registry = open(&tmp.path().join("reactive"));
    let mine = EntryFields {
        registration_nonce: 11,
        extra: vec![("uid".into(), r#""u-1""#.into())],
        ..in_channel("a1", "stable", 7)
    };
    let theirs = EntryFields {
        registration_nonce: 12,
        ..in_channel("a1", "dev-a", 7)
    };
    assert_eq!(registry.renew(mine.clone()).unwrap(), Renewal::Restored);
    assert_eq!(registry.renew(mine.clone()).unwrap(), Renewal::Refreshed);
    registry.write(theirs.clone()).unwrap();
    assert_eq!(registry.renew(mine.clone()).unwrap(), Renewal::Refreshed);
    let stored = registry.lookup_all("a1").unwrap();
    assert_eq!(stored.len(), 2);
    let own = stored.iter().find(|e| e.channel == "stable").unwrap();
    assert_eq!(own.extra_value("uid"), Some(r#""u-1""#), "kept by renewals");

    let owner = |nonce| Owner {
        pid: 7,
        auth_key: "k".into(),
        registration_nonce: nonce,
    };
    assert!(!registry.remove_owned("a1", &owner(13)).unwrap());
    assert!(registry.remove_owned("A1", &owner(11)).unwrap());
    let left = registry.lookup_all("a1").unwrap();
    assert_eq!(left.len(), 1);
    assert_eq!(left[0].channel, "dev-a");
    // Evict removes exactly what was judged: not after a rewrite.
    let judged = left[0].clone();
    std::thread::sleep(Duration::from_millis(2));
    registry.write(theirs).unwrap();
    assert!(!registry.evict(&judged).unwrap());
    let now = registry.lookup("a1").unwrap().unwrap();
    assert!(registry.evict(&now).unwrap());
    assert_eq!(registry.lookup_all("a1").unwrap(), []);
}

/// What agentmux-srv writes into the shared root (its names, its key order,
/// `channel` and `registration_nonce` always present, identity keys after
/// them) is found by every operation, and kept byte for byte until changed.
#[test]
fn entries_todays_server_wrote_are_found_by_every_operation() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("reactive");
    std::fs::create_dir_all(root.join("my_agent")).unwrap();
    std::fs::create_dir_all(root.join("agentx")).unwrap();
    let t = now_ms();
    let dotted = format!(
        r#"{{"agent_id":"My.Agent","local_url":"http://127.0.0.1:9","block_id":"b","pid":4000000000,"updated_at":{t},"auth_key":"k","channel":"Dev.A","registration_nonce":7,"jekt_public_key":"cHVi","uid":"u-1","uid_public_key":"a2V5"}}"#
    );
    let plain = format!(
        r#"{{"agent_id":"AgentX","local_url":"http://127.0.0.1:8","block_id":"b","pid":4000000000,"updated_at":{},"auth_key":"k","channel":"stable","registration_nonce":0}}"#,
        t - 1
    );
    std::fs::write(root.join("my_agent/dev_a.json"), &dotted).unwrap();
    std::fs::write(root.join("agentx/stable.json"), &plain).unwrap();
    let registry = open(&root);

    let found = registry.lookup_all("MY.AGENT").unwrap();
    assert_eq!(found.len(), 1);
    assert_eq!(serde_json::to_string(&found[0]).unwrap(), dotted);
    assert_eq!(found[0].registration_nonce, 7);
    assert_eq!(found[0].extra.len(), 3);
    let agentx = registry.lookup("agentx").unwrap().unwrap();
    assert_eq!(agentx.agent_id, "AgentX");
    assert_eq!(agentx.registration_nonce, 0);
    let listed = registry.list().unwrap();
    assert_eq!(listed.len(), 2);
    // Another id's spelling that maps to the server's `my_agent` is not it.
    assert_eq!(registry.lookup_all("my_agent").unwrap(), []);

    // A conditional removal needs the nonce; 0 never matches.
    let owner = Owner::of(&found[0]);
    assert!(!registry
        .remove_owned(
            "my.agent",
            &Owner {
                registration_nonce: 8,
                ..owner.clone()
            }
        )
        .unwrap());
    assert!(registry.remove_owned("my.agent", &owner).unwrap());
    assert!(!root.join("my_agent").exists());
    assert!(!registry
        .remove_owned("agentx", &Owner::of(&agentx))
        .unwrap());
    assert!(registry.evict(&agentx).unwrap());
    assert!(registry.list().unwrap().is_empty());
}

/// A name in an agent directory that is not a regular file, or a file with
/// other hard links, is never opened or written through: readers skip it, a
/// write replaces the name.
#[cfg(unix)]
#[test]
fn fifos_and_hard_links_in_an_agent_dir_are_never_followed() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("reactive");
    let registry = open(&root);
    registry.write(in_channel("a", "stable", 0)).unwrap();
    let fifo = root.join("a/dev-a.json");
    assert!(std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap()
        .success());
    // A reader would block for ever opening it: it is looked at, not opened.
    assert_eq!(registry.lookup_all("a").unwrap().len(), 1);
    assert_eq!(registry.list().unwrap().len(), 1);
    registry.write(in_channel("a", "dev-a", 0)).unwrap();
    assert!(
        std::fs::metadata(&fifo).unwrap().is_file(),
        "replaced, not written through"
    );

    let outside = tmp.path().join("outside.json");
    std::fs::write(&outside, "untouched").unwrap();
    std::fs::hard_link(&outside, root.join("a/dev-b.json")).unwrap();
    registry.write(in_channel("a", "dev-b", 0)).unwrap();
    assert_eq!(std::fs::read_to_string(&outside).unwrap(), "untouched");
    assert_eq!(registry.lookup_all("a").unwrap().len(), 3);
}

/// `lookup_all` returns at most 256 entries, the freshest, however many
/// channels an agent has.
#[test]
fn lookup_all_returns_the_freshest_256() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("reactive");
    let registry = open(&root);
    for i in 0..300 {
        registry
            .write(in_channel("busy", &format!("c{i}"), 0))
            .unwrap();
    }
    let all = registry.lookup_all("busy").unwrap();
    assert_eq!(all.len(), 256);
    assert!(all.windows(2).all(|w| w[0].updated_at >= w[1].updated_at));
    let oldest_kept = all.last().unwrap().updated_at;
    let listed = registry.list().unwrap();
    assert_eq!(listed.len(), 300, "a listing has no such cap");
    let dropped = listed.iter().filter(|e| e.updated_at < oldest_kept).count();
    assert!(dropped <= 300 - 256, "only the stalest are left out");
}

/// Entries this crate writes in the shared root are where agentmux-srv
/// looks: `<root>/<sanitised lowercase id>/<sanitised lowercase channel>.json`
/// (for ids and channels of letters, digits, `-` and `_`).
#[test]
fn shared_entries_are_where_the_server_looks() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("reactive");
    let registry = open(&root);
    let written = registry
        .write(EntryFields {
            registration_nonce: 3,
            ..in_channel("Agent_X-1", "Dev-A", 0)
        })
        .unwrap();
    let text = std::fs::read_to_string(root.join("agent_x-1/dev-a.json")).unwrap();
    let read: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(read["agent_id"], "Agent_X-1");
    assert_eq!(read["channel"], "Dev-A");
    assert_eq!(read["registration_nonce"], 3);
    assert_eq!(read["updated_at"], written.updated_at);
}

/// Readers of one agent's channels while they are rewritten see every
/// channel, complete, every time: a rewrite is one rename.
#[cfg(unix)]
#[test]
fn readers_never_miss_a_channel_being_rewritten() {
    let _heavy = agentmux_registry_tests::one_heavy_test_at_a_time();
    let tmp = tempfile::tempdir().unwrap();
    let registry = open(&tmp.path().join("reactive"));
    for i in 0..4 {
        registry
            .write(in_channel("steady", &format!("c{i}"), 0))
            .unwrap();
    }
    let stop = Arc::new(AtomicBool::new(false));
    let written = Arc::new(AtomicU64::new(0));
    let writers: Vec<_> = (0..2)
        .map(|w| {
            let (registry, stop, written) = (registry.clone(), stop.clone(), written.clone());
            std::thread::spawn(move || {
                let mut n = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let fields = EntryFields {
                        block_id: format!("{n}"),
                        ..in_channel("steady", &format!("c{}", w * 2 + (n % 2) as usize), 0)
                    };
                    registry.write(fields).unwrap();
                    n += 1;
                    written.fetch_add(1, Ordering::Relaxed);
                }
                n
            })
        })
        .collect();
    let mut reads = 0;
    let mut short = 0;
    // At least 300 reads, while at least 300 rewrites are made.
    while reads < 300 || written.load(Ordering::Relaxed) < 300 {
        if registry.lookup_all("steady").unwrap().len() != 4 {
            short += 1;
        }
        reads += 1;
    }
    stop.store(true, Ordering::Relaxed);
    let writes: u64 = writers.into_iter().map(|w| w.join().unwrap()).sum();
    assert!(writes > 0);
    assert_eq!(
        short, 0,
        "{short} of {reads} reads missed a channel ({writes} writes)"
    );
}

/// An agent and channel with entries in two places (this registry's
/// directory and agentmux-srv's `_`-sanitised one) is listed once, with the
/// freshest entry, the one `lookup_all` returns.
#[test]
fn a_listing_returns_the_freshest_of_two_copies() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("reactive");
    let registry = open(&root);
    let ours = registry.write(in_channel("My.Agent", "stable", 0)).unwrap();
    std::fs::create_dir_all(root.join("my_agent")).unwrap();
    std::fs::write(
        root.join("my_agent/stable.json"),
        format!(
            r#"{{"agent_id":"My.Agent","local_url":"http://127.0.0.1:2","block_id":"fresh","pid":0,"updated_at":{},"auth_key":"","channel":"stable","registration_nonce":0}}"#,
            ours.updated_at + 5_000
        ),
    )
    .unwrap();
    let all = registry.lookup_all("my.agent").unwrap();
    assert_eq!(all.len(), 1);
    assert_eq!(all[0].block_id, "fresh");
    let listed = registry.list().unwrap();
    assert_eq!(listed, all, "the listing agrees with lookup_all");
}

/// 16 channels write, re-write and remove their entries of one agent while a
/// sweeper keeps removing the agent's directory whenever it is empty: every
/// write lands (its writer makes the directory again), and every entry just
/// written is found.
// Concurrency on Windows cannot be proven under Wine (see `stress`).
#[cfg(unix)]
#[test]
fn sixteen_channels_and_a_sweeper_on_one_agent_dir_lose_nothing() {
    let _heavy = agentmux_registry_tests::one_heavy_test_at_a_time();
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("reactive");
    let registry = open(&root);
    let stop = Arc::new(AtomicBool::new(false));
    let sweeps = Arc::new(AtomicU64::new(0));
    let sweeper = {
        let (registry, stop, sweeps) = (registry.clone(), stop.clone(), sweeps.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                registry.cleanup_stale(Duration::from_secs(3600)).unwrap();
                sweeps.fetch_add(1, Ordering::Relaxed);
            }
        })
    };
    let writers: Vec<_> = (0..16)
        .map(|i| {
            let registry = registry.clone();
            std::thread::spawn(move || {
                let channel = format!("c{i}");
                let (mut lost, mut failed) = (0, Vec::new());
                for round in 0..300 {
                    let fields = EntryFields {
                        block_id: format!("{round}"),
                        ..in_channel("contended", &channel, 0)
                    };
                    if let Err(e) = registry.write(fields) {
                        failed.push(e.to_string());
                        continue;
                    }
                    let found = registry.lookup_all("contended").unwrap();
                    if !found
                        .iter()
                        .any(|e| e.channel == channel && e.block_id == round.to_string())
                    {
                        lost += 1;
                    }
                    // Emptying the directory often: for the sweeper, and for
                    // the other writers' removals, which remove it too.
                    if round % 2 == 0 {
                        registry.remove_channel("contended", &channel).unwrap();
                    }
                }
                (lost, failed)
            })
        })
        .collect();
    let mut lost = 0;
    let mut failed = Vec::new();
    for writer in writers {
        let (l, f) = writer.join().unwrap();
        lost += l;
        failed.extend(f);
    }
    stop.store(true, Ordering::Relaxed);
    sweeper.join().unwrap();
    assert_eq!((lost, failed), (0, Vec::<String>::new()));
    assert!(sweeps.load(Ordering::Relaxed) > 0);
    let left = registry.lookup_all("contended").unwrap();
    assert_eq!(left.len(), 16, "each channel's last write: {left:?}");
    assert!(left.iter().all(|e| e.block_id == "299"));
}

#[cfg(unix)]
#[test]
fn agent_dirs_are_private_and_an_older_root_is_adopted() {
    use std::os::unix::fs::PermissionsExt;
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("reactive");
    // As agentmux-srv leaves it: directories 0755, entries 0600.
    std::fs::create_dir_all(root.join("agentx")).unwrap();
    for dir in [&root, &root.join("agentx")] {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let file = root.join("agentx/stable.json");
    std::fs::write(&file, "{}").unwrap();
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
    let registry = open(&root);
    assert_eq!(mode(&root), 0o700);
    assert_eq!(mode(&root.join("agentx")), 0o700);
    assert_eq!(mode(&file), 0o600);
    registry
        .write(in_channel("new-agent", "stable", 0))
        .unwrap();
    assert_eq!(mode(&root.join("new-agent")), 0o700);
    assert_eq!(mode(&root.join("new-agent/stable.json")), 0o600);

    // A file others could have written, in an agent directory of a root being
    // adopted, is refused by name.
    let other = tmp.path().join("other");
    std::fs::create_dir_all(other.join("a")).unwrap();
    std::fs::set_permissions(&other, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::write(other.join("a/stable.json"), "{}").unwrap();
    std::fs::set_permissions(
        other.join("a/stable.json"),
        std::fs::Permissions::from_mode(0o666),
    )
    .unwrap();
    let err = Registry::open_shared(&other).unwrap_err().to_string();
    assert!(
        err.contains("stable.json") && err.contains("writable by others"),
        "{err}"
    );
}

#[cfg(unix)]
#[test]
fn a_symlink_at_an_agent_dir_name_is_never_followed() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("reactive");
    let registry = open(&root);
    let outside = tmp.path().join("outside");
    std::fs::create_dir(&outside).unwrap();
    std::os::unix::fs::symlink(&outside, root.join("victim")).unwrap();
    let err = registry
        .write(in_channel("victim", "stable", 0))
        .unwrap_err();
    assert!(matches!(err, Error::Conflict(_)), "{err}");
    assert_eq!(std::fs::read_dir(&outside).unwrap().count(), 0);
    assert!(registry.list().unwrap().is_empty());
}

/// Agents in the big shared root.
#[cfg(unix)]
const BIG: usize = 20_000;

/// A shared root of many agents, with entries far larger together than the
/// component's memory, is listed and swept a batch per call: every entry
/// listed once, the old half swept with their directories. (Not under
/// Wine, where 40,000 file calls take minutes: the bounds are the guest's,
/// the same everywhere, and `scale` checks the per-channel ones there.)
#[cfg(not(windows))]
#[test]
fn a_big_shared_root_lists_and_sweeps_in_bounded_memory() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("reactive");
    let options = agentmux_registry::Options::new().memory_limit(16 << 20);
    let registry = Registry::open_shared_with(&root, options).unwrap();
    let now = now_ms();
    let url = format!("http://127.0.0.1:1/{}", "p".repeat(2000));
    for i in 0..BIG {
        let age = if i % 2 == 0 { 0 } else { 4 * 24 * 3600 * 1000 };
        let id = format!("agent-{i:05}");
        std::fs::create_dir(root.join(&id)).unwrap();
        std::fs::write(
            root.join(&id).join("stable.json"),
            format!(
                r#"{{"agent_id":"{id}","local_url":"{url}","block_id":"b","pid":0,"updated_at":{},"auth_key":"","channel":"stable","registration_nonce":0}}"#,
                now - age
            ),
        )
        .unwrap();
    }
    // Over 40 MB of entries through 16 MiB of guest memory.
    let mut listed = 0;
    for batch in registry.listing() {
        listed += batch.unwrap().len();
    }
    assert_eq!(listed, BIG);
    let removed = registry
        .cleanup_stale(Duration::from_secs(24 * 3600))
        .unwrap();
    assert_eq!(
        removed, BIG as u64,
        "the old half's entries and their directories"
    );
    assert_eq!(std::fs::read_dir(&root).unwrap().count(), BIG / 2);
    assert_eq!(registry.list().unwrap().len(), BIG / 2);
}
