//! Two real `agentmux-mini` processes on loopback sharing one data dir: an
//! inject that reaches the wrong instance is forwarded to the owner with the
//! owner's key; forged forwards are refused; a SIGKILLed owner's entry is
//! evicted on the next inject; a restarted owner takes over cleanly.

mod common;

use agentmux_registry::blocking::Registry;
use common::{request, Server};
use serde_json::json;

#[test]
fn forwarding_key_checks_eviction_and_takeover_between_two_instances() {
    let tmp = tempfile::tempdir().unwrap();
    let registry = Registry::open(tmp.path()).unwrap();
    let mut a = Server::start(tmp.path(), "key-of-a");
    let b = Server::start(tmp.path(), "key-of-b");

    // An agent hosted by A receives an inject sent to B.
    a.register("agent-1");
    let (status, body) = b.inject("agent-1", "hello via b");
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["delivered"], "forwarded");
    assert_eq!(body["via"], a.url.as_str());
    assert_eq!(a.inbox("agent-1"), ["hello via b"]);
    let entry = registry.lookup("agent-1").unwrap().unwrap();
    assert_eq!(
        (entry.pid, entry.auth_key.as_str(), entry.local_url.as_str()),
        (a.pid(), "key-of-a", a.url.as_str())
    );

    // A forward without A's key is refused by A, and delivers nothing.
    let inject = json!({ "agent_id": "agent-1", "message": "forged" });
    assert_eq!(
        a.post("/agentmux/reactive/inject", None, inject.clone()).0,
        401
    );
    assert_eq!(
        a.post("/agentmux/reactive/inject", Some("key-of-b"), inject)
            .0,
        401
    );
    assert_eq!(a.inbox("agent-1"), ["hello via b"]);

    // A request that was already forwarded once is not forwarded again.
    let (status, _) = request(
        &b.url,
        "POST",
        "/agentmux/reactive/inject",
        Some(&b.key),
        &json!({ "agent_id": "agent-1", "message": "loop" }).to_string(),
        &[("X-Agentmux-Hops", "1")],
    );
    assert_eq!(status, 404);

    // Entries pointing off loopback are never contacted.
    registry
        .write(agentmux_registry::EntryFields {
            agent_id: "remote".into(),
            local_url: "http://192.0.2.1:80".into(),
            block_id: "blk".into(),
            pid: a.pid(),
            auth_key: "k".into(),
            ..Default::default()
        })
        .unwrap();
    let (status, body) = b.inject("remote", "nope");
    assert_eq!(status, 502, "{body}");
    assert!(
        body["error"].as_str().unwrap().contains("non-loopback"),
        "{body}"
    );
    registry.remove("remote").unwrap();

    // A dies without cleaning up: its entry stays, but B's next inject fails
    // fast (the owner's pid is not running: B does not even try to forward),
    // evicts it and says the agent is unreachable, and why.
    a.child.kill().unwrap();
    a.child.wait().unwrap();
    assert!(
        registry.lookup("agent-1").unwrap().is_some(),
        "SIGKILL leaves the entry behind"
    );
    let (status, body) = b.inject("agent-1", "to a dead owner");
    assert_eq!(status, 502, "{body}");
    assert_eq!(body["error"], "agent unreachable");
    assert_eq!(
        (&body["reason"], &body["owner"]),
        (&json!("owner process is not running"), &json!(a.url)),
        "judged dead before any forward: {body}"
    );
    assert_eq!(
        registry.lookup("agent-1").unwrap(),
        None,
        "the stale entry was evicted"
    );
    let (status, _) = b.inject("agent-1", "again");
    assert_eq!(status, 404, "now simply not found");

    // A restarts with a new key and re-registers: delivery works again, and
    // nothing of the old entry remains.
    let a2 = Server::start(tmp.path(), "key-of-a-restarted");
    a2.register("agent-1");
    let (status, body) = b.inject("agent-1", "hello again");
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["via"], a2.url.as_str());
    assert_eq!(a2.inbox("agent-1"), ["hello again"]);
    let entry = registry.lookup("agent-1").unwrap().unwrap();
    assert_eq!(
        (entry.pid, entry.auth_key.as_str()),
        (a2.pid(), "key-of-a-restarted")
    );
    let names: Vec<String> = std::fs::read_dir(tmp.path().join("agents"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names, ["agent-1.json"]);

    // A clean shutdown removes the instance's own entries.
    rustix::process::kill_process(
        rustix::process::Pid::from_raw(a2.pid() as i32).unwrap(),
        rustix::process::Signal::TERM,
    )
    .unwrap();
    let mut a2 = a2;
    assert!(a2.child.wait().unwrap().success());
    assert_eq!(registry.lookup("agent-1").unwrap(), None);
}

/// Two instances of different channels, each with its own data dir, sharing
/// one shared root (as two agentmux installations on one host): each agent
/// is registered in both registries, and an inject for an agent of the other
/// channel is forwarded through the shared registry.
#[test]
fn instances_of_two_channels_find_each_others_agents_through_the_shared_registry() {
    let tmp = tempfile::tempdir().unwrap();
    let shared = tmp.path().join("shared");
    let (data_a, data_b) = (tmp.path().join("a"), tmp.path().join("b"));
    let a = Server::start_in(
        &data_a,
        &shared,
        "key-of-a",
        &[("AGENTMUX_CHANNEL", "stable")],
    );
    let b = Server::start_in(
        &data_b,
        &shared,
        "key-of-b",
        &[("AGENTMUX_CHANNEL", "dev-a")],
    );
    b.register("Agent-B");
    let per_channel = Registry::open(&data_b).unwrap();
    assert!(per_channel.lookup("agent-b").unwrap().is_some());
    let shared_registry = Registry::open_shared(&shared).unwrap();
    let entries = shared_registry.lookup_all("agent-b").unwrap();
    assert_eq!(entries.len(), 1);
    assert_eq!(
        (entries[0].channel.as_str(), entries[0].local_url.as_str()),
        ("dev-a", b.url.as_str())
    );

    // A's data dir knows nothing of it: found in the shared registry.
    assert!(Registry::open(&data_a)
        .unwrap()
        .lookup("agent-b")
        .unwrap()
        .is_none());
    let (status, body) = a.inject("agent-b", "across channels");
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["via"], b.url.as_str());
    assert_eq!(b.inbox("Agent-B"), ["across channels"]);

    // The same name in A's channel too: A delivers locally; B, whose own
    // data dir has its agent, delivers locally as well.
    a.register("agent-b");
    assert_eq!(shared_registry.lookup_all("agent-b").unwrap().len(), 2);
    assert_eq!(a.inject("agent-b", "local").1["delivered"], "local");

    // Unregistering removes the agent from both registries.
    assert_eq!(
        b.post(
            "/agentmux/reactive/unregister",
            Some("key-of-b"),
            json!({ "agent_id": "Agent-B" })
        )
        .0,
        200
    );
    assert!(per_channel.lookup("agent-b").unwrap().is_none());
    let left = shared_registry.lookup_all("agent-b").unwrap();
    assert_eq!(left.len(), 1);
    assert_eq!(left[0].channel, "stable");
}

/// Server-sent events of `GET /agentmux/registry/events`, one JSON value
/// each.
struct Events {
    lines: std::io::Lines<std::io::BufReader<std::net::TcpStream>>,
}

impl Events {
    fn open(server: &Server) -> Events {
        use std::io::{BufRead, Write};
        let mut stream = common::connect(&server.url);
        let head = common::request_head(
            "GET",
            "/agentmux/registry/events",
            server.authority(),
            Some(&server.key),
            &[],
        );
        stream.write_all(head.as_bytes()).unwrap();
        let mut lines = std::io::BufReader::new(stream).lines();
        let status = lines.next().unwrap().unwrap();
        assert!(status.starts_with("HTTP/1.1 200"), "{status}");
        let mut content_type = String::new();
        for line in lines.by_ref() {
            let line = line.unwrap();
            if line.is_empty() {
                break;
            }
            if line.to_ascii_lowercase().starts_with("content-type:") {
                content_type = line;
            }
        }
        assert!(content_type.contains("text/event-stream"), "{content_type}");
        Events { lines }
    }

    /// The next event's data (chunk sizes and keep-alive comments skipped).
    fn next(&mut self) -> serde_json::Value {
        loop {
            let line = self.lines.next().expect("the stream ended").unwrap();
            if let Some(data) = line.strip_prefix("data: ") {
                return serde_json::from_str(data).unwrap();
            }
        }
    }

    /// Events until one satisfies `wanted`, which is returned.
    fn until(&mut self, wanted: impl Fn(&serde_json::Value) -> bool) -> serde_json::Value {
        loop {
            let event = self.next();
            if wanted(&event) {
                return event;
            }
        }
    }
}

/// An instance's discovery follows another instance's agent through the
/// registries' change feeds: its registration, each renewal, and its
/// removal when that instance exits.
#[test]
fn discovery_follows_another_instance_s_register_renew_and_exit() {
    let tmp = tempfile::tempdir().unwrap();
    let a = Server::start_with(
        tmp.path(),
        "key-of-a",
        &[("AGENTMUX_MINI_CONNECTION_TIMEOUT_MS", "120000")],
    );
    let mut events = Events::open(&a);
    let snapshot = events.next();
    assert_eq!(snapshot, json!({ "event": "snapshot", "agents": [] }));

    let mut b = Server::start_with(
        tmp.path(),
        "key-of-b",
        &[("AGENTMUX_MINI_HEARTBEAT_MS", "200")],
    );
    b.register("agent-b");
    let put_in = |registry: &'static str| {
        move |e: &serde_json::Value| {
            e["event"] == "put"
                && e["change"]["registry"] == registry
                && e["change"]["entry"]["agent_id"] == "agent-b"
        }
    };
    let first = events.until(put_in("per-channel"));
    assert_eq!(first["change"]["health"], "fresh", "{first}");
    assert_eq!(first["change"]["entry"]["local_url"], b.url.as_str());
    assert_eq!(first["change"]["entry"]["beat_interval_ms"], 200);
    assert!(
        first["change"]["entry"].get("auth_key").is_none(),
        "auth keys are never served: {first}"
    );
    // Renewals: each a put of a newer entry.
    let renewed = events.until(put_in("per-channel"));
    assert!(
        renewed["change"]["entry"]["updated_at"].as_u64()
            > first["change"]["entry"]["updated_at"].as_u64(),
        "{first} then {renewed}"
    );
    // The shared registry's entry too, and the snapshot endpoint agrees.
    events.until(put_in("shared"));
    let (status, body) = a.discovery();
    assert_eq!(status, 200, "{body}");
    let agents = body["agents"].as_array().unwrap();
    let registries: Vec<&str> = agents
        .iter()
        .filter(|g| g["entry"]["agent_id"] == "agent-b")
        .map(|g| g["registry"].as_str().unwrap())
        .collect();
    assert_eq!(registries, ["per-channel", "shared"], "{body}");

    // B exits: its entries go, and A's discovery says so.
    rustix::process::kill_process(
        rustix::process::Pid::from_raw(b.pid() as i32).unwrap(),
        rustix::process::Signal::TERM,
    )
    .unwrap();
    assert!(b.child.wait().unwrap().success());
    // Both registries' entries are removed, in either order.
    let mut removed = std::collections::BTreeSet::new();
    while removed.len() < 2 {
        let event = events.next();
        if event["event"] == "removed" && event["agent_id"] == "agent-b" {
            removed.insert(event["registry"].as_str().unwrap().to_owned());
        }
    }
    let (_, body) = a.discovery();
    let left: Vec<_> = body["agents"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|g| g["entry"]["agent_id"] == "agent-b")
        .collect();
    assert!(left.is_empty(), "{body}");
}
