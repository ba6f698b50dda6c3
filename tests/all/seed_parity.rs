//! Each behaviour of the original in-process registry, through the component.

use std::time::Duration;

use agentmux_registry::Error;
use agentmux_registry_tests::{fields, listed_ids, now_ms, Fixture, SeedEntry};

#[test]
fn write_creates_the_entry_file_and_returns_the_stored_entry() {
    let fx = Fixture::new();
    let before = now_ms();
    let entry = fx
        .registry
        .write(fields(
            "agent-1",
            "http://127.0.0.1:8123",
            "block-7",
            1234,
            "secret",
        ))
        .unwrap();
    let after = now_ms();
    assert_eq!(entry.agent_id, "agent-1");
    assert_eq!(entry.local_url, "http://127.0.0.1:8123");
    assert_eq!(entry.block_id, "block-7");
    assert_eq!(entry.pid, 1234);
    assert_eq!(entry.auth_key, "secret");
    assert!(
        (before..=after).contains(&entry.updated_at),
        "{before} <= {} <= {after}",
        entry.updated_at
    );
    assert_eq!(fx.names(), ["agent-1.json"]);
    let on_disk: SeedEntry = serde_json::from_str(&fx.read_raw("agent-1.json")).unwrap();
    assert_eq!(on_disk.updated_at, entry.updated_at);
}

#[test]
fn write_replaces_an_existing_entry() {
    let fx = Fixture::new();
    fx.registry
        .write(fields("a1", "http://127.0.0.1:1", "b1", 1, "k1"))
        .unwrap();
    fx.registry
        .write(fields("a1", "http://127.0.0.1:2", "b2", 2, "k2"))
        .unwrap();
    let entry = fx.registry.lookup("a1").unwrap().unwrap();
    assert_eq!(
        (entry.local_url.as_str(), entry.block_id.as_str(), entry.pid),
        ("http://127.0.0.1:2", "b2", 2)
    );
    assert_eq!(fx.names(), ["a1.json"], "no temporary file is left behind");
}

#[test]
fn lookup_returns_what_was_written() {
    let fx = Fixture::new();
    let written = fx
        .registry
        .write(fields("a1", "http://127.0.0.1:9", "b", 7, "k"))
        .unwrap();
    assert_eq!(fx.registry.lookup("a1").unwrap(), Some(written));
}

#[test]
fn lookup_of_a_missing_agent_is_none() {
    let fx = Fixture::new();
    assert_eq!(fx.registry.lookup("nobody").unwrap(), None);
}

#[test]
fn lookup_of_a_malformed_entry_is_none() {
    let fx = Fixture::new();
    for (i, junk) in ["", "{", "not json", "[]", r#"{"agent_id":"m0"}"#]
        .iter()
        .enumerate()
    {
        let id = format!("m{i}");
        fx.write_raw(&format!("{id}.json"), junk);
        assert_eq!(fx.registry.lookup(&id).unwrap(), None, "content {junk:?}");
    }
}

#[test]
fn an_entry_without_auth_key_reads_with_an_empty_key() {
    let fx = Fixture::new();
    fx.write_raw(
        "old.json",
        r#"{"agent_id":"old","local_url":"http://127.0.0.1:5","block_id":"b","pid":9,"updated_at":1}"#,
    );
    let entry = fx.registry.lookup("old").unwrap().unwrap();
    assert_eq!(entry.auth_key, "");
    assert_eq!(entry.pid, 9);
}

#[test]
fn unknown_keys_in_an_entry_are_ignored() {
    let fx = Fixture::new();
    fx.write_raw(
        "new.json",
        r#"{"agent_id":"new","local_url":"u","block_id":"b","pid":9,"updated_at":1,"auth_key":"k","later":{"x":1}}"#,
    );
    assert_eq!(fx.registry.lookup("new").unwrap().unwrap().auth_key, "k");
}

#[test]
fn remove_deletes_the_entry_and_reports_it() {
    let fx = Fixture::new();
    fx.registry.write(fields("a1", "u", "b", 1, "k")).unwrap();
    assert!(fx.registry.remove("a1").unwrap());
    assert!(fx.names().is_empty());
    assert_eq!(fx.registry.lookup("a1").unwrap(), None);
}

#[test]
fn remove_of_a_missing_entry_is_not_an_error() {
    let fx = Fixture::new();
    assert!(!fx.registry.remove("never-registered").unwrap());
}

#[test]
fn cleanup_removes_old_and_malformed_entries_and_keeps_fresh_ones() {
    let fx = Fixture::new();
    let now = now_ms();
    let hour = 60 * 60 * 1000;
    fx.write_raw("old.json", SeedEntry::new("old", now - 5 * hour).to_json());
    fx.write_raw("fresh.json", SeedEntry::new("fresh", now - hour).to_json());
    fx.write_raw("broken.json", "{ not an entry");
    fx.write_raw("notes.txt", "not an entry file name: left alone");
    fx.registry.write(fields("live", "u", "b", 1, "k")).unwrap();

    let removed = fx
        .registry
        .cleanup_stale(Duration::from_millis(4 * hour))
        .unwrap();

    assert_eq!(removed, 2);
    assert_eq!(fx.names(), ["fresh.json", "live.json", "notes.txt"]);
}

#[test]
fn cleanup_with_zero_max_age_removes_every_entry_written_before_it() {
    let fx = Fixture::new();
    fx.registry.write(fields("a", "u", "b", 1, "k")).unwrap();
    std::thread::sleep(Duration::from_millis(5));
    assert_eq!(fx.registry.cleanup_stale(Duration::ZERO).unwrap(), 1);
    assert!(fx.names().is_empty());
}

#[test]
fn list_returns_every_valid_entry_sorted() {
    let fx = Fixture::new();
    fx.registry.write(fields("b", "u", "b", 1, "k")).unwrap();
    fx.registry.write(fields("a", "u", "b", 1, "k")).unwrap();
    fx.write_raw("c.json", SeedEntry::new("c", 1).to_json());
    fx.write_raw("junk.json", "junk");
    assert_eq!(listed_ids(&fx.registry), ["a", "b", "c"]);
}

#[test]
fn an_invalid_agent_id_is_an_error_and_touches_nothing() {
    let fx = Fixture::new();
    let too_long = "x".repeat(10_000);
    for id in ["", too_long.as_str()] {
        let err = fx.registry.write(fields(id, "u", "b", 1, "k")).unwrap_err();
        assert!(matches!(err, Error::InvalidAgentId(_)), "{id:.20?}: {err}");
        assert!(matches!(
            fx.registry.lookup(id),
            Err(Error::InvalidAgentId(_))
        ));
        assert!(matches!(
            fx.registry.remove(id),
            Err(Error::InvalidAgentId(_))
        ));
    }
    assert!(fx.names().is_empty());
}

#[test]
fn over_long_fields_are_refused_with_the_field_named() {
    let fx = Fixture::new();
    let long = "u".repeat(2049);
    match fx.registry.write(fields("a", &long, "b", 1, "k")) {
        Err(Error::InvalidField(msg)) => assert!(msg.contains("local-url"), "{msg}"),
        other => panic!("expected invalid-field, got {other:?}"),
    }
    assert!(fx.names().is_empty());
}
