//! The component and the original in-process registry read each other's files.

use agentmux_registry_tests::{fields, now_ms, Fixture, SeedEntry};

/// Above Linux's largest pid: no process has it, so no start time is recorded.
const NO_SUCH_PID: u32 = 4_000_000_000;

#[test]
fn entries_in_the_seed_format_are_read_by_the_component() {
    let fx = Fixture::new();
    let seed = SeedEntry::new("agent-7", now_ms());
    fx.write_raw("agent-7.json", seed.to_json());

    let entry = fx.registry.lookup("agent-7").unwrap().unwrap();
    assert_eq!(
        SeedEntry {
            agent_id: entry.agent_id,
            local_url: entry.local_url,
            block_id: entry.block_id,
            pid: entry.pid,
            updated_at: entry.updated_at,
            auth_key: entry.auth_key,
        },
        seed
    );
    assert_eq!(fx.registry.list().unwrap().len(), 1);
}

#[test]
fn entries_written_by_the_component_are_the_seed_format_byte_for_byte() {
    let fx = Fixture::new();
    let entry = fx
        .registry
        .write(fields(
            "Agent_ü-9",
            "http://127.0.0.1:4100",
            "block \"q\"",
            NO_SUCH_PID,
            "k/ey",
        ))
        .unwrap();

    // Named by the lowercased id, as agentmux-srv names it today.
    let raw = fx.read_raw("agent_ü-9.json");
    let value: serde_json::Value = serde_json::from_str(&raw).unwrap();
    let keys: Vec<&str> = value
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    let mut sorted = keys.clone();
    sorted.sort();
    assert_eq!(
        sorted,
        [
            "agent_id",
            "auth_key",
            "block_id",
            "channel",
            "local_url",
            "pid",
            "registration_nonce",
            "updated_at"
        ]
    );

    let seed = SeedEntry {
        agent_id: "Agent_ü-9".into(),
        local_url: "http://127.0.0.1:4100".into(),
        block_id: "block \"q\"".into(),
        pid: NO_SUCH_PID,
        updated_at: entry.updated_at,
        auth_key: "k/ey".into(),
    };
    // The original module's six keys, then the two agentmux-srv writes
    // today (older readers ignore them).
    let today = seed
        .to_json()
        .replace('}', r#","channel":"","registration_nonce":0}"#);
    assert_eq!(raw, today, "the bytes agentmux-srv's serde_json writes");
    assert_eq!(
        serde_json::from_str::<SeedEntry>(&raw).unwrap().to_json(),
        seed.to_json(),
        "read by the original module as its own"
    );
}

#[test]
fn plain_ids_use_the_seed_file_name_and_others_do_not_collide() {
    let fx = Fixture::new();
    fx.registry
        .write(fields("a_b", "http://127.0.0.1:1", "b", 1, "k1"))
        .unwrap();
    fx.registry
        .write(fields("a.b", "http://127.0.0.1:2", "b", 2, "k2"))
        .unwrap();
    assert_eq!(fx.names(), ["a%2Eb.json", "a_b.json"]);
    assert_eq!(fx.registry.lookup("a_b").unwrap().unwrap().auth_key, "k1");
    assert_eq!(fx.registry.lookup("a.b").unwrap().unwrap().auth_key, "k2");
}

#[test]
fn a_live_owners_start_time_is_one_optional_trailing_key() {
    let fx = Fixture::new();
    let me = std::process::id();
    let entry = fx
        .registry
        .write(fields("live", "http://127.0.0.1:1", "b", me, "k"))
        .unwrap();
    let raw = fx.read_raw("live.json");
    if cfg!(target_os = "linux") {
        let started = entry
            .pid_started
            .expect("Linux always knows a live process's start time");
        let ns = entry.pid_namespace.expect("and its pid namespace");
        assert!(
            raw.ends_with(&format!(
                r#","auth_key":"k","channel":"","registration_nonce":0,"pid_started":{started},"pid_ns":{ns}}}"#
            )),
            "{raw}"
        );
    }
    // The original module's struct reads it, ignoring the extra key.
    let seed: SeedEntry = serde_json::from_str(&raw).unwrap();
    assert_eq!((seed.agent_id.as_str(), seed.pid), ("live", me));
}
