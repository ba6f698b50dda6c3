//! Health graded by the registry: a registration records its beat interval,
//! so any reader counts missed beats; a provably dead owner is dead; what
//! records neither is unknown. Transitions are driven by a given clock.

use std::time::Duration;

use agentmux_registry::blocking::Registry;
use agentmux_registry::liveness::health_at;
use agentmux_registry::{Health, Registration};
use agentmux_registry_tests::{fields, Fixture, SeedEntry};

#[tokio::test(flavor = "current_thread")]
async fn a_registration_records_its_beat_and_turns_stale_after_three_missed_beats() {
    let fixture = Fixture::new();
    let registry = agentmux_registry::Registry::open(fixture.data_dir()).unwrap();
    // A beat far longer than the test: no renewal moves the entry.
    let guard = Registration::register(
        &registry,
        fields("beating", "http://127.0.0.1:1", "b", 0, "k"),
        Duration::from_secs(20),
    )
    .await
    .unwrap();
    let graded = registry
        .lookup_graded("beating")
        .await
        .unwrap()
        .expect("registered");
    assert_eq!(graded.entry.beat_interval_ms, Some(20_000));
    assert_eq!(graded.health, Health::Fresh);
    let on_disk: serde_json::Value =
        serde_json::from_str(&fixture.read_raw("beating.json")).unwrap();
    assert_eq!(on_disk["beat_interval_ms"], 20_000, "{on_disk}");

    let written = graded.entry.updated_at;
    let at = |ms: u64| health_at(&graded.entry, written + ms);
    assert_eq!(at(59_999), Health::Fresh, "two beats missed");
    assert_eq!(at(60_000), Health::Fresh, "the third beat just due");
    assert_eq!(at(60_001), Health::Stale, "three beats missed");
    // The owner (this process) is alive: staleness is the entry's, not a
    // death.
    assert_eq!(at(3_600_000), Health::Stale);
    drop(guard);
}

#[tokio::test(flavor = "current_thread")]
async fn a_registration_records_its_beat_in_whole_milliseconds_rounded_up() {
    let fixture = Fixture::new();
    let registry = agentmux_registry::Registry::open(fixture.data_dir()).unwrap();
    for (beat, recorded) in [
        (Duration::from_micros(1_500), Some(2)),
        (Duration::from_secs(3_600), Some(3_600_000)),
        (Duration::from_secs(86_400), Some(86_400_000)),
        // Longer than any reader counts: no schedule recorded.
        (Duration::from_secs(86_401), None),
        (Duration::MAX, None),
    ] {
        let guard = Registration::register(
            &registry,
            fields("sub-ms", "http://127.0.0.1:1", "b", 0, "k"),
            beat,
        )
        .await
        .unwrap();
        assert_eq!(guard.entry().beat_interval_ms, recorded, "{beat:?}");
        drop(guard);
    }
}

#[cfg(any(target_os = "linux", windows))]
#[test]
fn an_entry_whose_owner_is_provably_gone_is_dead_however_recent() {
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
    let fixture = Fixture::new();
    let registry = Registry::open(fixture.data_dir()).unwrap();
    registry
        .write(agentmux_registry::EntryFields {
            pid_namespace: agentmux_registry::liveness::pid_namespace(),
            beat_interval_ms: Some(20_000),
            ..fields("gone", "http://127.0.0.1:1", "b", dead_pid, "k")
        })
        .unwrap();
    let listed = registry.list_graded().unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].health, Health::Dead, "{listed:?}");
    let all = registry.lookup_all_graded("gone").unwrap();
    assert_eq!(all[0].health, Health::Dead);
}

#[test]
fn an_entry_without_a_beat_or_a_provable_death_is_unknown() {
    let fixture = Fixture::new();
    // As the original module writes it: no beat recorded, and an owner no
    // reader can judge (pid 0).
    let old = SeedEntry {
        pid: 0,
        ..SeedEntry::new("old", 1)
    };
    fixture.write_raw("old.json", old.to_json());
    let registry = Registry::open(fixture.data_dir()).unwrap();
    let graded = registry.lookup_graded("old").unwrap().expect("readable");
    assert_eq!(graded.health, Health::Unknown);
    assert_eq!(health_at(&graded.entry, u64::MAX), Health::Unknown);
}

#[test]
fn old_readers_ignore_the_beat_interval() {
    let fixture = Fixture::new();
    let registry = Registry::open(fixture.data_dir()).unwrap();
    registry
        .write(agentmux_registry::EntryFields {
            beat_interval_ms: Some(20_000),
            ..fields("new", "http://127.0.0.1:1", "b", 0, "k")
        })
        .unwrap();
    let read: SeedEntry = serde_json::from_str(&fixture.read_raw("new.json")).unwrap();
    assert_eq!(read.agent_id, "new");
}

#[test]
fn a_beat_interval_out_of_range_is_refused_on_write() {
    let fixture = Fixture::new();
    let registry = Registry::open(fixture.data_dir()).unwrap();
    for ms in [0, agentmux_registry_core::health::MAX_BEAT_INTERVAL_MS + 1] {
        let refused = registry.write(agentmux_registry::EntryFields {
            beat_interval_ms: Some(ms),
            ..fields("zero", "http://127.0.0.1:1", "b", 0, "k")
        });
        assert!(
            matches!(&refused, Err(agentmux_registry::Error::InvalidField(m)) if m.contains("beat_interval_ms")),
            "{ms}: {refused:?}"
        );
    }
}

/// Another writer's beat interval that is not a whole number of
/// milliseconds is ignored: the entry stays readable, and no sweep removes
/// it as malformed.
#[test]
fn a_malformed_beat_interval_from_another_writer_keeps_the_entry() {
    let fixture = Fixture::new();
    for (i, value) in ["20000.0", "\"20000\"", "-1"].iter().enumerate() {
        let mut raw: serde_json::Value = serde_json::from_str(
            &SeedEntry::new(&format!("odd-{i}"), agentmux_registry_tests::now_ms()).to_json(),
        )
        .unwrap();
        raw["beat_interval_ms"] = serde_json::from_str(value).unwrap();
        fixture.write_raw(&format!("odd-{i}.json"), raw.to_string());
    }
    let registry = Registry::open(fixture.data_dir()).unwrap();
    assert_eq!(registry.list().unwrap().len(), 3);
    assert_eq!(
        registry.cleanup_stale(Duration::from_secs(3600)).unwrap(),
        0
    );
    let graded = registry.lookup_graded("odd-0").unwrap().expect("kept");
    assert_eq!(graded.entry.beat_interval_ms, None);
}
