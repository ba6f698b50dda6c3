//! The registration lifecycle: tokens, atomic renewal, heartbeats that
//! restore a swept entry and stop only when superseded, liveness that never
//! calls an invisible owner dead, and a replaced data dir.

use std::time::Duration;

use agentmux_registry::blocking;
#[cfg(target_os = "linux")]
use agentmux_registry::liveness::{owner_liveness, pid_namespace, Liveness};
use agentmux_registry::{EntryFields, Error, Owner, Registration, Registry, Renewal};
use agentmux_registry_tests::{fields, wait_past_ms, GIVE_UP_AFTER};
#[cfg(target_os = "linux")]
use agentmux_registry_tests::{now_ms, run_alone_in_a_child, SeedEntry};

fn open() -> (tempfile::TempDir, Registry) {
    let tmp = tempfile::tempdir().unwrap();
    let registry = Registry::open(tmp.path()).unwrap();
    (tmp, registry)
}

fn with_nonce(agent_id: &str, nonce: u64) -> EntryFields {
    EntryFields {
        registration_nonce: nonce,
        ..fields(agent_id, "http://127.0.0.1:1", "b", std::process::id(), "k")
    }
}

#[tokio::test(flavor = "current_thread")]
async fn renew_refreshes_restores_and_yields_to_other_registrations() {
    let (tmp, registry) = open();
    let first = registry.write(with_nonce("r", 1)).await.unwrap();
    wait_past_ms(first.updated_at);

    assert_eq!(
        registry.renew(with_nonce("r", 1)).await.unwrap(),
        Renewal::Refreshed
    );
    let refreshed = registry.lookup("r").await.unwrap().unwrap();
    assert!(refreshed.updated_at > first.updated_at);

    // Another registration of the same id owns it: nothing changes.
    assert_eq!(
        registry.renew(with_nonce("r", 2)).await.unwrap(),
        Renewal::Superseded
    );
    assert_eq!(registry.lookup("r").await.unwrap().unwrap(), refreshed);

    // A plain write (no token) by anyone else also supersedes.
    registry
        .write(fields("r", "http://127.0.0.1:2", "b", 7, "other"))
        .await
        .unwrap();
    assert_eq!(
        registry.renew(with_nonce("r", 1)).await.unwrap(),
        Renewal::Superseded
    );

    // Missing or malformed: restored.
    assert!(registry.remove("r").await.unwrap());
    assert_eq!(
        registry.renew(with_nonce("r", 1)).await.unwrap(),
        Renewal::Restored
    );
    assert_eq!(
        registry
            .lookup("r")
            .await
            .unwrap()
            .unwrap()
            .registration_nonce,
        1
    );
    std::fs::write(tmp.path().join("agents/r.json"), "{ not json").unwrap();
    assert_eq!(
        registry.renew(with_nonce("r", 1)).await.unwrap(),
        Renewal::Restored
    );
    assert!(registry.lookup("r").await.unwrap().is_some());

    // Only a registration can be renewed.
    let plain = fields("r", "u", "b", 1, "k");
    assert!(matches!(
        registry.renew(plain).await,
        Err(Error::InvalidField(_))
    ));
}

#[tokio::test(flavor = "current_thread")]
async fn remove_owned_needs_the_registration_nonce_to_match() {
    let (_tmp, registry) = open();
    let entry = registry.write(with_nonce("o", 1)).await.unwrap();
    let same_process_other_registration = Owner {
        registration_nonce: 2,
        ..Owner::of(&entry)
    };
    assert!(!registry
        .remove_owned("o", &same_process_other_registration)
        .await
        .unwrap());
    let no_nonce = Owner {
        registration_nonce: 0,
        ..Owner::of(&entry)
    };
    assert!(!registry.remove_owned("o", &no_nonce).await.unwrap());
    assert!(registry
        .remove_owned("o", &Owner::of(&entry))
        .await
        .unwrap());
}

/// Issue: a heartbeat that found its entry swept (owner stalled past the sweep
/// age) stopped for good. Now its next renewal restores the entry, and it
/// goes on beating.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_live_registration_swept_away_is_restored_within_a_beat() {
    let (_tmp, registry) = open();
    // Never due on its own: each renewal here is asked for (`beat_now`), so
    // no renewal can meet the sweeps below.
    let guard = Registration::register(
        &registry,
        fields("swept", "http://127.0.0.1:1", "b", 0, "k"),
        Duration::from_secs(3600),
    )
    .await
    .unwrap();
    let mut stamped = guard.entry().updated_at;
    for round in 0..2 {
        // Another instance's sweep takes the entry away (as after a long stall).
        wait_past_ms(stamped);
        assert_eq!(
            registry.cleanup_stale(Duration::ZERO).await.unwrap(),
            1,
            "round {round}"
        );
        assert_eq!(registry.lookup("swept").await.unwrap(), None);
        assert!(guard.beat_now(GIVE_UP_AFTER), "round {round}");
        let entry = registry
            .lookup("swept")
            .await
            .unwrap()
            .unwrap_or_else(|| panic!("round {round}: the next renewal restored the entry"));
        assert_eq!(entry.registration_nonce, guard.nonce());
        assert!(!guard.is_superseded());
        assert_eq!(
            registry.heartbeat_count(),
            1,
            "round {round}: still beating"
        );
        stamped = entry.updated_at;
    }
    drop(guard);
    assert_eq!(registry.lookup("swept").await.unwrap(), None);
}

/// Issue: two registrations of one id in one process could not be told apart,
/// so dropping the older removed the newer's entry.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_registrations_of_one_id_in_one_process_never_confuse_each_other() {
    let (_tmp, registry) = open();
    let beat = Duration::from_millis(20);
    let older = Registration::register(
        &registry,
        fields("twin", "http://127.0.0.1:1", "b", 0, "k"),
        beat,
    )
    .await
    .unwrap();
    let newer = Registration::register(
        &registry,
        fields("twin", "http://127.0.0.1:2", "b", 0, "k"),
        beat,
    )
    .await
    .unwrap();
    assert_ne!(older.nonce(), newer.nonce());
    assert_eq!(older.entry().pid, newer.entry().pid);
    // The older's next renewal finds the newer's entry.
    assert!(older.beat_now(GIVE_UP_AFTER));
    assert!(
        older.is_superseded(),
        "the older registration's heartbeat stopped"
    );
    drop(older);
    let entry = registry.lookup("twin").await.unwrap();
    assert_eq!(
        entry.map(|e| e.registration_nonce),
        Some(newer.nonce()),
        "dropping the older left the newer's entry"
    );
    // The newer goes on beating, and its entry stays its own.
    let then = newer.renewals();
    assert!(newer.wait_for_renewals(then + 2, GIVE_UP_AFTER) >= then + 2);
    let entry = registry
        .lookup("twin")
        .await
        .unwrap()
        .expect("the newer entry stays");
    assert_eq!(entry.registration_nonce, newer.nonce());
    assert_eq!(entry.local_url, "http://127.0.0.1:2");
    drop(newer);
    assert_eq!(registry.lookup("twin").await.unwrap(), None);
}

/// Issue: a heartbeat was lookup-then-write, so a successor registering in
/// between was overwritten. Renewal is one conditional component call: a
/// successor's entry, once written, is never replaced by the predecessor.
#[test]
fn a_fast_heartbeat_never_overwrites_a_successor() {
    let tmp = tempfile::tempdir().unwrap();
    let registry = blocking::Registry::open(tmp.path()).unwrap();
    let async_registry = registry.as_async().clone();
    for trial in 0..100 {
        let id = format!("race-{trial}");
        let guard = blocking_register(&async_registry, &id, Duration::from_millis(1));
        // The heartbeat is beating: the write below races its renewals.
        assert!(guard.wait_for_renewals(1, GIVE_UP_AFTER) >= 1);
        let successor = EntryFields {
            registration_nonce: trial + 1,
            ..fields(&id, "http://127.0.0.1:2", "b", 1, "new")
        };
        registry.write(successor).unwrap();
        // A renewal that began after the write has finished: it found the
        // successor's entry and stopped the heartbeat.
        assert!(guard.beat_now(GIVE_UP_AFTER));
        assert!(guard.is_superseded(), "trial {trial}: still beating");
        let entry = registry
            .lookup(&id)
            .unwrap()
            .expect("the successor's entry");
        assert_eq!(
            entry.auth_key, "new",
            "trial {trial}: the successor was overwritten"
        );
        drop(guard);
        let entry = registry
            .lookup(&id)
            .unwrap()
            .expect("drop left the successor alone");
        assert_eq!(entry.auth_key, "new", "trial {trial}");
    }
}

fn blocking_register(registry: &Registry, id: &str, beat: Duration) -> Registration {
    let fields = fields(id, "http://127.0.0.1:1", "b", 0, "old");
    tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap()
        .block_on(Registration::register(registry, fields, beat))
        .unwrap()
}

/// Issue: one OS thread per registration. Now one driver serves them all.
/// Threads are counted per process, so the check runs alone in a child
/// process of this test binary.
#[cfg(target_os = "linux")]
#[test]
fn one_heartbeat_driver_serves_every_registration() {
    const CHILD: &str = "AGENTMUX_TEST_HEARTBEAT_CHILD";
    if std::env::var_os(CHILD).is_some() {
        tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap()
            .block_on(many_registrations_one_driver());
        return;
    }
    run_alone_in_a_child(
        "lifecycle::one_heartbeat_driver_serves_every_registration",
        CHILD,
    );
}

#[cfg(target_os = "linux")]
async fn many_registrations_one_driver() {
    let (_tmp, registry) = open();
    let mut guards = Vec::new();
    for i in 0..50 {
        let f = fields(&format!("many-{i}"), "http://127.0.0.1:1", "b", 0, "k");
        guards.push(
            Registration::register(&registry, f, Duration::from_millis(50))
                .await
                .unwrap(),
        );
    }
    assert_eq!(registry.heartbeat_count(), 50);
    let drivers = || {
        std::fs::read_dir("/proc/self/task")
            .unwrap()
            .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
            .filter(|comm| comm.trim_end() == "agentmux-beat")
            .count()
    };
    assert_eq!(drivers(), 1, "heartbeat threads for 50 registrations");
    // That one thread renews each on its schedule, each renewal at least an
    // interval after the registration's write.
    for guard in &guards {
        let id = &guard.entry().agent_id;
        assert!(guard.wait_for_renewals(2, GIVE_UP_AFTER) >= 2, "{id}");
        let entry = registry.lookup(id).await.unwrap().expect(id);
        assert_eq!(entry.registration_nonce, guard.nonce(), "{id}");
        assert!(entry.updated_at > guard.entry().updated_at, "{id} renewed");
    }
    assert_eq!(drivers(), 1, "heartbeat threads after the beats");
    guards.clear();
    assert_eq!(registry.heartbeat_count(), 0);
    assert!(registry.list().await.unwrap().is_empty());
}

/// Issue: a NUL in the id panicked (the heartbeat thread's name) after the
/// entry was written, leaving an orphan.
#[tokio::test(flavor = "current_thread")]
async fn an_id_with_a_nul_registers_and_unregisters() {
    let (_tmp, registry) = open();
    let guard = Registration::register(
        &registry,
        fields("a\0b", "u", "b", 0, "k"),
        Duration::from_millis(50),
    )
    .await
    .unwrap();
    assert!(registry.lookup("a\0b").await.unwrap().is_some());
    assert!(guard.unregister().await.unwrap());
    assert!(registry.list().await.unwrap().is_empty());
}

/// Issue: an owner in another pid namespace (or hidden by `hidepid`) was
/// judged dead and its live entry swept.
#[cfg(target_os = "linux")]
#[tokio::test(flavor = "current_thread")]
async fn an_owner_this_process_cannot_see_is_never_swept_as_dead() {
    let (tmp, registry) = open();
    let mut child = std::process::Command::new("true").spawn().unwrap();
    let invisible = child.id();
    child.wait().unwrap();
    let here = pid_namespace().expect("Linux has pid namespaces");
    for (id, ns) in [
        ("other-ns", Some(here + 1)),
        ("unrecorded-ns", None),
        ("this-ns", Some(here)),
    ] {
        let mut raw = serde_json::to_value(SeedEntry {
            pid: invisible,
            ..SeedEntry::new(id, now_ms())
        })
        .unwrap();
        if let Some(ns) = ns {
            raw["pid_ns"] = ns.into();
        }
        std::fs::write(
            tmp.path().join(format!("agents/{id}.json")),
            raw.to_string(),
        )
        .unwrap();
    }
    let liveness = |id: &str| {
        let entry = agentmux_registry::AgentEntry::parse(
            &std::fs::read(tmp.path().join(format!("agents/{id}.json"))).unwrap(),
        )
        .unwrap();
        owner_liveness(&entry)
    };
    assert_eq!(liveness("other-ns"), Liveness::Unknown);
    assert_eq!(liveness("unrecorded-ns"), Liveness::Unknown);
    assert_eq!(liveness("this-ns"), Liveness::Dead);
    assert_eq!(registry.cleanup_dead_owners().await.unwrap(), 1);
    let left: Vec<String> = registry
        .list()
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.agent_id)
        .collect();
    assert_eq!(left, ["other-ns", "unrecorded-ns"]);
    // Entries this host writes record its namespace, so they can be judged.
    let me = std::process::id();
    let written = registry
        .write(fields("mine", "u", "b", me, "k"))
        .await
        .unwrap();
    assert_eq!(written.pid_namespace, Some(here));
    assert_eq!(owner_liveness(&written), Liveness::Alive);
}

/// Issue: `/proc` reports start times on the *reader's* boot-time clock, so
/// an owner in another time namespace (a container's, a CRIU restore's)
/// looked like a reused pid to everyone outside it: judged Dead and swept
/// while it ran. Here the owner registers itself from a time namespace whose
/// boot time is 1,000,000 s ahead (`unshare --time`, which needs root).
#[cfg(target_os = "linux")]
#[test]
fn an_owner_in_another_time_namespace_is_never_judged_dead() {
    use std::io::{BufRead, Write};

    const CHILD: &str = "AGENTMUX_TEST_TIMENS_OWNER";
    const READY: &str = "timens-owner-registered";
    if let Some(data_dir) = std::env::var_os(CHILD) {
        // The owner: registered until the test closes its stdin.
        let registry = Registry::open(data_dir).unwrap();
        let guard = blocking_register(&registry, "timens", Duration::from_secs(60));
        println!("{READY}");
        std::io::stdout().flush().unwrap();
        std::io::Read::read_to_end(&mut std::io::stdin(), &mut Vec::new()).unwrap();
        drop(guard);
        return;
    }
    let unshare = ["--time", "--boottime", "1000000"];
    let usable = std::process::Command::new("unshare")
        .args(unshare)
        .arg("true")
        .status()
        .is_ok_and(|s| s.success());
    if !usable {
        eprintln!("skipped: `unshare --time` is missing or not permitted here");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let registry = blocking::Registry::open(tmp.path()).unwrap();
    let name = "lifecycle::an_owner_in_another_time_namespace_is_never_judged_dead";
    let mut owner = std::process::Command::new("unshare")
        .args(unshare)
        .arg(std::env::current_exe().unwrap())
        .args(["--exact", name, "--nocapture", "--test-threads=1"])
        .env(CHILD, tmp.path())
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = std::io::BufReader::new(owner.stdout.take().unwrap());
    let mut text = String::new();
    while !text.contains(READY) {
        assert_ne!(out.read_line(&mut text).unwrap(), 0, "owner ended: {text}");
    }

    let entry = registry
        .lookup("timens")
        .unwrap()
        .expect("the owner's entry");
    let pid = entry.pid;
    let ns = |who: &str| std::fs::read_link(format!("/proc/{who}/ns/time")).unwrap();
    assert_ne!(
        ns(&pid.to_string()),
        ns("self"),
        "the owner runs in another time namespace"
    );
    assert_ne!(
        entry.pid_started,
        agentmux_registry::liveness::process_start(pid),
        "its recorded start time is on another clock than the one read here"
    );
    assert_eq!(owner_liveness(&entry), Liveness::Unknown);
    assert!(registry.lookup_live("timens").unwrap().is_some());
    assert_eq!(registry.cleanup_dead_owners().unwrap(), 0);
    assert!(registry.lookup("timens").unwrap().is_some(), "not swept");

    // Once the owner is gone, its pid is free: that still proves it dead.
    drop(owner.stdin.take());
    std::io::Read::read_to_string(&mut out, &mut text).unwrap();
    assert!(owner.wait().unwrap().success(), "{text}");
    assert!(text.contains("1 passed"), "{text}");
    assert_eq!(owner_liveness(&entry), Liveness::Dead);
}

/// Issue: only `agents` was re-checked, through the old data-dir handle, so
/// after the data dir itself was replaced writes went to the old one.
/// (Windows does not let the data dir move while it is open: see below.)
#[cfg(unix)]
#[tokio::test(flavor = "current_thread")]
async fn a_replaced_data_dir_is_followed() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let registry = Registry::open(&data).unwrap();
    registry
        .write(fields("before", "u", "b", 1, "k"))
        .await
        .unwrap();
    std::fs::rename(&data, tmp.path().join("data.old")).unwrap();
    let newcomer = Registry::open(&data).unwrap();
    registry
        .write(fields("after", "u", "b", 1, "k"))
        .await
        .unwrap();
    assert!(
        newcomer.lookup("after").await.unwrap().is_some(),
        "written where the path leads now"
    );
    assert!(!tmp.path().join("data.old/agents/after.json").exists());
    assert!(registry.lookup("before").await.unwrap().is_none());
}

/// On Windows the agents directory is held open without delete sharing, so
/// neither it nor the data dir can be moved or removed while a registry has
/// it open: there is no replaced directory to follow.
#[cfg(windows)]
#[test]
fn windows_keeps_an_open_data_dir_in_place() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let registry = blocking::Registry::open(&data).unwrap();
    registry.write(fields("here", "u", "b", 1, "k")).unwrap();
    assert!(std::fs::rename(&data, tmp.path().join("data.old")).is_err());
    assert!(std::fs::rename(data.join("agents"), tmp.path().join("agents.old")).is_err());
    assert!(registry.lookup("here").unwrap().is_some());
    drop(registry);
    std::fs::rename(&data, tmp.path().join("data.old")).expect("movable once closed");
}
