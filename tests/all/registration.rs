//! The `Registration` guard (heartbeat, compare-and-remove on drop) and the
//! liveness-aware calls.

use std::time::Duration;

#[cfg(target_os = "linux")]
use agentmux_registry::liveness::process_start;
#[cfg(any(target_os = "linux", windows))]
use agentmux_registry::liveness::{
    owner_liveness, pid_namespace, should_evict_after_failed_forward, Liveness,
};
use agentmux_registry::{Registration, Registry};
#[cfg(target_os = "linux")]
use agentmux_registry_tests::SeedEntry;
use agentmux_registry_tests::{fields, now_ms, wait_until, GIVE_UP_AFTER};

fn open() -> (tempfile::TempDir, Registry) {
    let tmp = tempfile::tempdir().unwrap();
    let registry = Registry::open(tmp.path()).unwrap();
    (tmp, registry)
}

/// Sets the stored `updated_at` of `agent_id` to `ms`, as a stalled owner's
/// entry would have aged, leaving everything else as it is.
fn age(tmp: &tempfile::TempDir, agent_id: &str, ms: u64) -> std::io::Result<()> {
    let path = tmp.path().join(format!("agents/{agent_id}.json"));
    let mut raw: serde_json::Value = serde_json::from_slice(&std::fs::read(&path)?)?;
    raw["updated_at"] = ms.into();
    std::fs::write(&path, raw.to_string())
}

#[tokio::test(flavor = "current_thread")]
async fn the_heartbeat_keeps_the_entry_fresh_and_drop_removes_it() {
    let (tmp, registry) = open();
    let guard = Registration::register(
        &registry,
        fields("hb", "http://127.0.0.1:1", "b", 0, "key"),
        Duration::from_millis(20),
    )
    .await
    .unwrap();
    let first = guard.entry().updated_at;
    assert_eq!(guard.entry().pid, std::process::id());
    // Two beats on the driver's own schedule, each at least an interval
    // after the write.
    assert!(
        guard.wait_for_renewals(2, GIVE_UP_AFTER) >= 2,
        "no heartbeat"
    );
    // Looked up from the blocking side while the heartbeat runs.
    let blocking = agentmux_registry::blocking::Registry::from(registry.clone());
    let now = blocking.lookup("hb").unwrap().expect("the entry");
    assert_eq!(now.registration_nonce, guard.nonce());
    assert!(
        now.updated_at > first,
        "refreshed: {first} -> {}",
        now.updated_at
    );

    // The entry aged an hour, as after a long stall of its owner, beside a
    // plain entry just as old. (A renewal may replace the file while it is
    // aged, or Windows refuse to write it while a renewal reads it: age it
    // again until a lookup sees it aged.)
    let hour_ago = now_ms() - 3_600_000;
    assert!(wait_until(|| {
        age(&tmp, "hb", hour_ago).is_ok()
            && blocking
                .lookup("hb")
                .unwrap()
                .is_some_and(|e| e.updated_at == hour_ago)
    }));
    registry
        .write(fields("plain", "http://127.0.0.1:2", "b", 0, "k"))
        .await
        .unwrap();
    age(&tmp, "plain", hour_ago).unwrap();
    // The next renewal makes it fresh again: a sweep of entries older than
    // a minute takes only the plain one.
    assert!(guard.beat_now(GIVE_UP_AFTER), "no heartbeat");
    let renewed = registry.lookup("hb").await.unwrap().expect("the entry");
    assert!(renewed.updated_at >= now.updated_at, "{renewed:?}");
    assert_eq!(
        registry
            .cleanup_stale(Duration::from_secs(60))
            .await
            .unwrap(),
        1
    );
    assert_eq!(registry.lookup("plain").await.unwrap(), None);
    assert!(registry.lookup("hb").await.unwrap().is_some());

    drop(guard);
    assert_eq!(registry.lookup("hb").await.unwrap(), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drop_and_heartbeat_leave_a_successors_registration_alone() {
    let (_tmp, registry) = open();
    let guard = Registration::register(
        &registry,
        fields("succ", "http://127.0.0.1:1", "b", 0, "old-key"),
        Duration::from_millis(20),
    )
    .await
    .unwrap();
    // Another instance re-registers the same id.
    registry
        .write(fields(
            "succ",
            "http://127.0.0.1:2",
            "b",
            999_999,
            "new-key",
        ))
        .await
        .unwrap();
    // The first renewal that began after that write finds the successor's
    // entry: the heartbeat stops and leaves it.
    assert!(guard.beat_now(GIVE_UP_AFTER));
    assert!(guard.is_superseded());
    assert_eq!(registry.heartbeat_count(), 0, "its heartbeat stopped");
    assert_eq!(
        registry.lookup("succ").await.unwrap().unwrap().auth_key,
        "new-key",
        "heartbeat did not take it back"
    );
    drop(guard);
    let left = registry.lookup("succ").await.unwrap();
    assert_eq!(
        left.map(|e| e.auth_key).as_deref(),
        Some("new-key"),
        "drop did not remove it"
    );
}

#[tokio::test(flavor = "current_thread")]
async fn unregister_removes_its_own_entry_once() {
    let (_tmp, registry) = open();
    let guard = Registration::register(
        &registry,
        fields("un", "u", "b", 0, "k"),
        Duration::from_secs(60),
    )
    .await
    .unwrap();
    assert!(guard.unregister().await.unwrap());
    assert_eq!(registry.lookup("un").await.unwrap(), None);
}

// Dead needs a pid namespace to match (Linux) or is proven by the OS alone;
// this test plants Linux facts (`pid_ns`, start ticks).
#[cfg(target_os = "linux")]
#[tokio::test(flavor = "current_thread")]
async fn dead_owners_are_skipped_by_lookup_live_and_swept() {
    let (tmp, registry) = open();
    let mut child = std::process::Command::new("true").spawn().unwrap();
    let dead_pid = child.id();
    child.wait().unwrap();
    // What its owner wrote while it ran: pid and namespace.
    let mut dead = serde_json::to_value(SeedEntry {
        pid: dead_pid,
        ..SeedEntry::new("dead", now_ms())
    })
    .unwrap();
    dead["pid_ns"] = pid_namespace().unwrap().into();
    std::fs::write(tmp.path().join("agents/dead.json"), dead.to_string()).unwrap();
    let me = std::process::id();
    registry
        .write(fields("alive", "http://127.0.0.1:2", "b", me, "k"))
        .await
        .unwrap();
    // Same pid as a live process, but another start time: the pid was reused.
    let reused = SeedEntry {
        pid: me,
        ..SeedEntry::new("reused", now_ms())
    };
    let mut raw: serde_json::Value = serde_json::to_value(&reused).unwrap();
    raw["pid_started"] = (process_start(me).unwrap() + 1).into();
    raw["pid_ns"] = pid_namespace().unwrap().into();
    std::fs::write(tmp.path().join("agents/reused.json"), raw.to_string()).unwrap();

    assert!(registry.lookup("dead").await.unwrap().is_some());
    assert_eq!(registry.lookup_live("dead").await.unwrap(), None);
    assert_eq!(registry.lookup_live("reused").await.unwrap(), None);
    assert!(registry.lookup_live("alive").await.unwrap().is_some());

    assert_eq!(registry.cleanup_dead_owners().await.unwrap(), 2);
    let left: Vec<String> = registry
        .list()
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.agent_id)
        .collect();
    assert_eq!(left, ["alive"]);
}

#[cfg(any(target_os = "linux", windows))]
#[test]
fn eviction_after_a_failed_forward_needs_a_dead_owner_or_an_entry_older_than_the_grace() {
    let mut child = if cfg!(windows) {
        std::process::Command::new("cmd")
            .args(["/C", "exit"])
            .spawn()
            .unwrap()
    } else {
        std::process::Command::new("true").spawn().unwrap()
    };
    let dead_pid = child.id();
    child.wait().unwrap();
    let entry = |pid: u32, updated_at: u64| agentmux_registry::AgentEntry {
        agent_id: "a".into(),
        local_url: "http://127.0.0.1:1".into(),
        block_id: "b".into(),
        pid,
        updated_at,
        auth_key: "k".into(),
        pid_started: None,
        pid_namespace: pid_namespace(),
        ..Default::default()
    };
    let grace = Duration::from_secs(10);
    assert_eq!(owner_liveness(&entry(dead_pid, now_ms())), Liveness::Dead);
    assert!(
        should_evict_after_failed_forward(&entry(dead_pid, now_ms()), grace),
        "dead owner: evict"
    );
    // A live owner process proves nothing about one of its agents: an entry
    // it has not renewed within the grace goes.
    assert!(
        should_evict_after_failed_forward(&entry(std::process::id(), now_ms() - 60_000), grace),
        "live owner, older than the grace: evict"
    );
    assert!(
        !should_evict_after_failed_forward(&entry(std::process::id(), now_ms()), grace),
        "live owner, within the grace: keep"
    );
    // An entry that records no pid namespace (as agentmux-srv writes them) is
    // judged as agentmux-srv judges it: a pid no process here has is dead.
    let unrecorded = |pid: u32| agentmux_registry::AgentEntry {
        pid_namespace: None,
        pid_started: None,
        ..entry(pid, now_ms())
    };
    assert!(
        should_evict_after_failed_forward(&unrecorded(dead_pid), grace),
        "no namespace recorded, pid not running: evict"
    );
    assert!(
        !should_evict_after_failed_forward(&unrecorded(std::process::id()), grace),
        "no namespace recorded, pid running, fresh: keep"
    );
    // pid 0 stands for an owner whose liveness cannot be told.
    assert!(
        !should_evict_after_failed_forward(&entry(0, now_ms()), grace),
        "unknown, just registered: keep"
    );
    assert!(
        should_evict_after_failed_forward(&entry(0, now_ms() - 60_000), grace),
        "unknown, older: evict"
    );
}

/// Issue: `Registration::register(.., Duration::MAX)` panicked (`Instant`
/// overflow) after the entry was written. Any interval is accepted: one the
/// clock cannot reach never comes due, and the registry's other
/// registrations keep beating beside it.
#[tokio::test(flavor = "current_thread")]
async fn any_heartbeat_interval_is_accepted() {
    let (_tmp, registry) = open();
    let intervals = [
        Duration::MAX,
        Duration::from_secs(u64::MAX),
        // Fits in an `Instant` on Linux, so it is waited for, not skipped.
        Duration::from_secs(u64::MAX / 4),
    ];
    let mut guards = Vec::new();
    for (i, interval) in intervals.into_iter().enumerate() {
        let id = format!("long-{i}");
        let guard = Registration::register(&registry, fields(&id, "u", "b", 0, "k"), interval)
            .await
            .unwrap_or_else(|e| panic!("{interval:?}: {e}"));
        assert!(registry.lookup(&id).await.unwrap().is_some(), "{id}");
        guards.push(guard);
    }
    let short = Registration::register(
        &registry,
        fields("short", "u", "b", 0, "k"),
        Duration::from_millis(20),
    )
    .await
    .unwrap();
    assert_eq!(registry.heartbeat_count(), 4);
    // The short one is still driven on its own schedule: the renewals after
    // its entry was removed restore it (the first may have begun before).
    assert!(registry.remove("short").await.unwrap());
    let then = short.renewals();
    assert!(
        short.wait_for_renewals(then + 2, GIVE_UP_AFTER) >= then + 2,
        "the short heartbeat stopped"
    );
    assert!(registry.lookup("short").await.unwrap().is_some());
    assert!(guards.iter().all(|g| g.renewals() == 0), "never due");
    for (i, guard) in guards.iter().enumerate() {
        assert!(!guard.is_superseded());
        let id = format!("long-{i}");
        let entry = registry
            .lookup(&id)
            .await
            .unwrap()
            .expect("still registered");
        assert_eq!(entry.registration_nonce, guard.nonce(), "{id}");
    }
    drop((guards, short));
    assert_eq!(registry.heartbeat_count(), 0);
    assert!(registry.list().await.unwrap().is_empty());
}
