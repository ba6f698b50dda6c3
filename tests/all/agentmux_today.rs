//! Interoperating with agentmux-srv as its 0.55 line keeps its registry
//! (`../shared/seed/agentmux-today.md`): its files, byte for byte, are found
//! by every operation; this crate's entries are found by a reader that
//! follows its rules (written here from those facts); and each side's
//! conditional removals respect the other's registrations.

use std::path::{Path, PathBuf};
use std::time::Duration;

use agentmux_registry::blocking::Registry;
use agentmux_registry::{compat, EntryFields, Owner, Registration};
use agentmux_registry_tests::{fields, now_ms, wait_past_ms};

/// A pid no process can have, so liveness never keeps an entry alive.
const NO_PID: u32 = 4_000_000_000;

/// agentmux-srv's file name rule: lowercase (`str::to_lowercase`), then
/// every character other than letters, digits, `-` and `_` becomes `_`.
fn server_name(id: &str) -> String {
    id.to_lowercase()
        .chars()
        .map(|c| {
            if c.is_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// What agentmux-srv's `lookup` returns for `id` in `agents_dir`: the JSON
/// object of `{server_name}.json`, every key after `updated_at` optional.
fn server_lookup(agents_dir: &Path, id: &str) -> Option<serde_json::Value> {
    let text =
        std::fs::read_to_string(agents_dir.join(format!("{}.json", server_name(id)))).ok()?;
    let value: serde_json::Value = serde_json::from_str(&text).ok()?;
    for key in ["agent_id", "local_url", "block_id", "pid", "updated_at"] {
        value.get(key)?;
    }
    Some(value)
}

/// agentmux-srv's `remove_if_nonce`: removes only when the stored nonce is
/// the given one, and never for 0.
fn server_remove_if_nonce(agents_dir: &Path, id: &str, nonce: u64) -> bool {
    let stored = server_lookup(agents_dir, id)
        .and_then(|v| v.get("registration_nonce").and_then(|n| n.as_u64()))
        .unwrap_or(0);
    if nonce == 0 || stored != nonce {
        return false;
    }
    std::fs::remove_file(agents_dir.join(format!("{}.json", server_name(id)))).is_ok()
}

/// An entry as agentmux-srv writes it: its key order, `channel` and
/// `registration_nonce` always present, then identity keys.
fn server_entry(id: &str, channel: &str, nonce: u64, updated_at: u64) -> String {
    format!(
        r#"{{"agent_id":"{id}","local_url":"http://127.0.0.1:7001","block_id":"blk","pid":{NO_PID},"updated_at":{updated_at},"auth_key":"srv-key","channel":"{channel}","registration_nonce":{nonce},"jekt_public_key":"cHVia2V5","uid":"u-42","uid_public_key":"dWlka2V5"}}"#
    )
}

struct Dir {
    _tmp: tempfile::TempDir,
    data: PathBuf,
}

impl Dir {
    fn new() -> Dir {
        let tmp = tempfile::tempdir().unwrap();
        let data = tmp.path().join("data");
        std::fs::create_dir_all(data.join("agents")).unwrap();
        Dir { _tmp: tmp, data }
    }

    fn agents(&self) -> PathBuf {
        self.data.join("agents")
    }
}

#[test]
fn entries_todays_server_wrote_are_found_by_every_operation_and_kept_byte_for_byte() {
    let dir = Dir::new();
    let t = now_ms();
    let mixed = server_entry("AgentX", "", 0, t);
    let dotted = server_entry("My.Agent", "", 9, t);
    std::fs::write(dir.agents().join("agentx.json"), &mixed).unwrap();
    std::fs::write(dir.agents().join("my_agent.json"), &dotted).unwrap();
    let registry = Registry::open(&dir.data).unwrap();

    for spelling in ["AgentX", "agentx", "AGENTX"] {
        let found = registry.lookup(spelling).unwrap().expect(spelling);
        assert_eq!(found.agent_id, "AgentX");
    }
    let found = registry.lookup("my.agent").unwrap().unwrap();
    assert_eq!(found.registration_nonce, 9);
    assert_eq!(found.extra_value("uid"), Some(r#""u-42""#));
    // Every key kept, in order: written back as the server wrote it.
    assert_eq!(serde_json::to_string(&found).unwrap(), dotted);
    let ids: Vec<String> = registry
        .list()
        .unwrap()
        .into_iter()
        .map(|e| e.agent_id)
        .collect();
    assert_eq!(ids, ["AgentX", "My.Agent"]);
    assert_eq!(registry.lookup("my_agent").unwrap(), None, "another id");

    // Conditional removal: a wrong nonce leaves it, the right one removes it.
    let owner = Owner::of(&found);
    let wrong = Owner {
        registration_nonce: 10,
        ..owner.clone()
    };
    assert!(!registry.remove_owned("My.Agent", &wrong).unwrap());
    assert!(registry.remove_owned("MY.AGENT", &owner).unwrap());
    assert!(!dir.agents().join("my_agent.json").exists());
    // A nonce-0 entry is never removed conditionally; evict and remove are.
    let agentx = registry.lookup("agentx").unwrap().unwrap();
    assert!(!registry
        .remove_owned("agentx", &Owner::of(&agentx))
        .unwrap());
    assert!(registry.evict(&agentx).unwrap());
    std::fs::write(dir.agents().join("agentx.json"), &mixed).unwrap();
    assert!(registry.remove("AgentX").unwrap());
    assert!(registry.list().unwrap().is_empty());
}

#[test]
fn entries_this_crate_writes_are_found_by_the_servers_rules() {
    let dir = Dir::new();
    let registry = Registry::open(&dir.data).unwrap();
    let written = registry
        .write(EntryFields {
            registration_nonce: 77,
            extra: vec![("jekt_public_key".into(), r#""cHVi""#.into())],
            ..fields("MixedCase-1", "http://127.0.0.1:7002", "blk", NO_PID, "k")
        })
        .unwrap();
    let read = server_lookup(&dir.agents(), "mixedcase-1").expect("found by the server");
    assert_eq!(read["agent_id"], "MixedCase-1");
    assert_eq!(read["local_url"], "http://127.0.0.1:7002");
    assert_eq!(read["updated_at"], written.updated_at);
    assert_eq!(read["registration_nonce"], 77);
    assert_eq!(read["jekt_public_key"], "cHVi");
    // An id with other characters is escaped here, so the server, which
    // would look for `a_b.json`, does not find it (README says so).
    registry
        .write(fields("a.b", "http://127.0.0.1:7003", "blk", NO_PID, "k"))
        .unwrap();
    assert_eq!(server_lookup(&dir.agents(), "a.b"), None);
}

/// A `Registration`'s nonce is one the server's counter never hands out, so
/// the server's `remove_if_nonce` leaves it; the right nonce removes it.
#[test]
fn the_servers_conditional_removal_respects_this_crates_registrations() {
    let dir = Dir::new();
    let registry = Registry::open(&dir.data).unwrap();
    let guard = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap()
        .block_on(Registration::register(
            registry.as_async(),
            fields("reg-1", "http://127.0.0.1:7004", "blk", 0, "k"),
            Duration::from_secs(3600),
        ))
        .unwrap();
    assert!(guard.nonce() >= 1 << 52 && guard.nonce() < 1 << 53);
    for counter in 0..10_000 {
        assert!(!server_remove_if_nonce(&dir.agents(), "reg-1", counter));
    }
    assert!(registry.lookup("reg-1").unwrap().is_some());
    assert!(server_remove_if_nonce(
        &dir.agents(),
        "reg-1",
        guard.nonce()
    ));
    drop(guard);
}

#[test]
fn compat_speaks_todays_per_channel_and_shared_calls() {
    let dir = Dir::new();
    let shared = dir.data.join("shared/agents/reactive");
    compat::init_local_auth_key("compat-key");
    compat::write_with_nonce(&dir.data, "Comp-1", "http://127.0.0.1:7005", "blk", 5);
    let entry = compat::lookup(&dir.data, "comp-1").unwrap();
    assert_eq!((entry.registration_nonce, entry.channel.as_str()), (5, ""));
    compat::remove_if_nonce(&dir.data, "comp-1", 0);
    compat::remove_if_nonce(&dir.data, "comp-1", 6);
    assert!(
        compat::lookup(&dir.data, "comp-1").is_some(),
        "0 and a wrong nonce keep it"
    );
    compat::remove_if_nonce(&dir.data, "comp-1", 5);
    assert!(compat::lookup(&dir.data, "comp-1").is_none());

    compat::write_shared_with_nonce(
        &shared,
        "Comp-1",
        "http://127.0.0.1:7005",
        "blk",
        "stable",
        3,
    );
    std::thread::sleep(Duration::from_millis(2));
    compat::write_shared(&shared, "comp-1", "http://127.0.0.1:7006", "blk", "dev-a");
    let all = compat::lookup_all_shared(&shared, "COMP-1");
    let channels: Vec<&str> = all.iter().map(|e| e.channel.as_str()).collect();
    assert_eq!(channels, ["dev-a", "stable"], "freshest first");
    assert_eq!(compat::list_all_shared(&shared).len(), 2);
    compat::remove_shared_if_nonce(&shared, "comp-1", "stable", 4);
    assert_eq!(compat::lookup_all_shared(&shared, "comp-1").len(), 2);
    compat::remove_shared_if_nonce(&shared, "comp-1", "stable", 3);
    compat::remove_shared(&shared, "comp-1", "dev-a");
    assert!(compat::list_all_shared(&shared).is_empty());
    assert!(!shared.join("comp-1").exists());

    // Startup sweep: an entry whose owner is provably dead goes whatever its
    // age; one agentmux-srv wrote (no pid namespace recorded, so on Linux its
    // owner cannot be proven dead) goes by age only.
    std::fs::create_dir_all(shared.join("srv")).unwrap();
    std::fs::write(
        shared.join("srv/stable.json"),
        server_entry("srv", "stable", 2, now_ms()),
    )
    .unwrap();
    compat::write_shared(&shared, "alive", "http://127.0.0.1:7007", "blk", "stable");
    #[cfg(target_os = "linux")]
    {
        let mut owner = std::process::Command::new("sleep")
            .arg("60")
            .spawn()
            .unwrap();
        Registry::open_shared(&shared)
            .unwrap()
            .write(EntryFields {
                channel: "stable".into(),
                ..fields("dead", "http://127.0.0.1:7008", "blk", owner.id(), "k")
            })
            .unwrap();
        owner.kill().unwrap();
        owner.wait().unwrap();
    }
    compat::cleanup_stale_shared(&shared, 4 * 3600 * 1000);
    let left: Vec<String> = compat::list_all_shared(&shared)
        .into_iter()
        .map(|e| e.agent_id)
        .collect();
    // Windows has no pid namespaces: there the server's entry, whose pid no
    // process has, is provably dead too.
    let expected: &[&str] = if cfg!(windows) {
        &["alive"]
    } else {
        &["alive", "srv"]
    };
    assert_eq!(left, expected);
    wait_past_ms(now_ms());
    compat::cleanup_stale_shared(&shared, 0);
    assert!(compat::list_all_shared(&shared).is_empty());
    assert_eq!(
        std::fs::read_dir(&shared).unwrap().count(),
        0,
        "empty dirs removed"
    );
    compat::write_shared(&shared, "alive", "http://127.0.0.1:7007", "blk", "stable");

    let mut fresh = compat::lookup_all_shared(&shared, "alive").remove(0);
    assert!(
        !compat::should_evict_on_forward_failure(&fresh),
        "live and fresh"
    );
    #[cfg(any(target_os = "linux", windows))]
    {
        // The server's rule: a pid not running, however fresh the entry.
        let mut child = if cfg!(windows) {
            std::process::Command::new("cmd")
                .args(["/C", "exit"])
                .spawn()
                .unwrap()
        } else {
            std::process::Command::new("true").spawn().unwrap()
        };
        let dead = compat::AgentEntry {
            pid: child.id(),
            ..fresh.clone()
        };
        child.wait().unwrap();
        assert!(
            compat::should_evict_on_forward_failure(&dead),
            "dead, fresh"
        );
    }
    fresh.updated_at -= compat::FORWARD_FAILURE_GRACE_MS + 1;
    assert!(
        compat::should_evict_on_forward_failure(&fresh),
        "live, older than the grace"
    );
}
