//! Hostile agent ids and planted links cannot reach outside the agents dir.

use std::os::unix::fs::symlink;

use agentmux_registry::Error;
use agentmux_registry_tests::{fields, Fixture, SeedEntry};

const HOSTILE_IDS: &[&str] = &[
    "../x",
    "..",
    ".",
    "/etc/passwd",
    "a/b",
    "a\\b",
    "\0",
    "a\0b",
    "",
    "Ünïcødé-ИД-代理",
    "..%2F..%2Fx",
    "~",
    "$HOME",
    "x.json",
];

#[test]
fn hostile_ids_are_rejected_or_contained() {
    let fx = Fixture::new();
    let outside_before = fx.outside_snapshot();
    let too_long = "a".repeat(10_000);
    let ids: Vec<&str> = HOSTILE_IDS
        .iter()
        .copied()
        .chain([too_long.as_str()])
        .collect();

    for id in &ids {
        match fx
            .registry
            .write(fields(id, "http://127.0.0.1:1", "b", 1, "k"))
        {
            Ok(entry) => {
                assert_eq!(entry.agent_id, *id);
                // Contained: it reads back as itself, from a file directly in
                // the agents dir.
                assert_eq!(fx.registry.lookup(id).unwrap().unwrap().agent_id, *id);
                let name = fx.registry.entry_file_name(id).unwrap();
                assert!(!name.contains('/') && name != "." && name != "..", "{name}");
                assert!(fx.path(&name).is_file(), "{id:?} -> {name}");
            }
            Err(Error::InvalidAgentId(_)) => {}
            Err(other) => panic!("{id:.20?}: unexpected error {other}"),
        }
    }
    // Every id that was accepted has its own file; nothing else is there.
    let accepted: Vec<&&str> = ids
        .iter()
        .filter(|id| fx.registry.lookup(id).is_ok_and(|e| e.is_some()))
        .collect();
    assert_eq!(fx.names().len(), accepted.len());
    assert_eq!(
        accepted.len(),
        ids.len() - 2,
        "only the empty and the 10,000-char ids are refused"
    );
    assert_eq!(
        fx.outside_snapshot(),
        outside_before,
        "nothing outside the agents dir changed"
    );

    for id in &accepted {
        assert!(fx.registry.remove(id).unwrap());
    }
    assert!(fx.names().is_empty());
    assert_eq!(fx.outside_snapshot(), outside_before);
}

#[test]
fn a_symlink_to_a_file_outside_is_neither_read_nor_written_through() {
    let fx = Fixture::new();
    let target = fx.tmp.path().join("victim-target.json");
    let secret = SeedEntry::new("victim", agentmux_registry_tests::now_ms()).to_json();
    std::fs::write(&target, &secret).unwrap();
    symlink(&target, fx.path("victim.json")).unwrap();

    assert_eq!(
        fx.registry.lookup("victim").unwrap(),
        None,
        "lookup must not follow the link"
    );
    assert!(
        fx.registry.list().unwrap().is_empty(),
        "list must not follow the link"
    );

    fx.registry
        .write(fields("victim", "http://127.0.0.1:2", "b", 1, "mine"))
        .unwrap();
    assert_eq!(
        std::fs::read_to_string(&target).unwrap(),
        secret,
        "write must not write through the link"
    );
    assert!(!std::fs::symlink_metadata(fx.path("victim.json"))
        .unwrap()
        .file_type()
        .is_symlink());
    assert_eq!(
        fx.registry.lookup("victim").unwrap().unwrap().auth_key,
        "mine"
    );
}

#[test]
fn a_symlink_to_a_directory_outside_is_not_entered() {
    let fx = Fixture::new();
    let outside_dir = fx.tmp.path().join("elsewhere");
    std::fs::create_dir(&outside_dir).unwrap();
    std::fs::write(outside_dir.join("x.json"), SeedEntry::new("x", 1).to_json()).unwrap();
    symlink(&outside_dir, fx.path("sub")).unwrap();
    let before = fx.outside_snapshot();

    assert_eq!(fx.registry.lookup("sub/x").unwrap(), None);
    fx.registry
        .write(fields("sub/x", "u", "b", 1, "k"))
        .unwrap();
    fx.registry
        .cleanup_stale(std::time::Duration::ZERO)
        .unwrap();

    assert_eq!(fx.outside_snapshot(), before);
}
