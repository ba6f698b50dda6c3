//! Two real `agentmux-mini` processes on loopback sharing one data dir: an
//! inject that reaches the wrong instance is forwarded to the owner with the
//! owner's key; forged forwards are refused; a SIGKILLed owner's entry is
//! evicted on the next inject; a restarted owner takes over cleanly.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use agentmux_registry::blocking::Registry;
use serde_json::{json, Value};

struct Server {
    child: Child,
    url: String,
    key: String,
}

impl Server {
    fn start(data_dir: &std::path::Path, key: &str) -> Server {
        let mut child = Command::new(env!("CARGO_BIN_EXE_agentmux-mini"))
            .arg("--data-dir")
            .arg(data_dir)
            .env("AGENTMUX_AUTH_KEY", key)
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let url = line
            .strip_prefix("listening on ")
            .and_then(|rest| rest.split_whitespace().next())
            .unwrap_or_else(|| panic!("unexpected first line: {line:?}"))
            .to_string();
        Server {
            child,
            url,
            key: key.into(),
        }
    }

    fn post(&self, path: &str, key: Option<&str>, body: Value) -> (u16, Value) {
        request(&self.url, "POST", path, key, &body.to_string(), &[])
    }

    fn inject(&self, agent_id: &str, message: &str) -> (u16, Value) {
        self.post(
            "/agentmux/reactive/inject",
            Some(&self.key),
            json!({ "agent_id": agent_id, "message": message }),
        )
    }

    fn register(&self, agent_id: &str) {
        let (status, body) = self.post(
            "/agentmux/reactive/register",
            Some(&self.key),
            json!({ "agent_id": agent_id, "block_id": "blk" }),
        );
        assert_eq!(status, 200, "{body}");
    }

    fn inbox(&self, agent_id: &str) -> Vec<String> {
        let (status, body) = request(
            &self.url,
            "GET",
            &format!("/agentmux/reactive/inbox/{agent_id}"),
            Some(&self.key),
            "",
            &[],
        );
        assert_eq!(status, 200, "{body}");
        serde_json::from_value(body["messages"].clone()).unwrap()
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One HTTP/1.1 exchange on loopback; returns the status and JSON body.
fn request(
    base: &str,
    method: &str,
    path: &str,
    key: Option<&str>,
    body: &str,
    extra: &[(&str, &str)],
) -> (u16, Value) {
    let authority = base.strip_prefix("http://").unwrap();
    let mut stream = TcpStream::connect(authority).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut head =
        format!("{method} {path} HTTP/1.1\r\nHost: {authority}\r\nConnection: close\r\n");
    if let Some(key) = key {
        head += &format!("X-AuthKey: {key}\r\n");
    }
    for (name, value) in extra {
        head += &format!("{name}: {value}\r\n");
    }
    if method == "POST" {
        head += &format!(
            "Content-Type: application/json\r\nContent-Length: {}\r\n",
            body.len()
        );
    }
    stream
        .write_all(format!("{head}\r\n{body}").as_bytes())
        .unwrap();
    let mut raw = String::new();
    stream.read_to_string(&mut raw).unwrap();
    let (head, body) = raw.split_once("\r\n\r\n").unwrap();
    let status = head.split_whitespace().nth(1).unwrap().parse().unwrap();
    (status, serde_json::from_str(body).unwrap_or(Value::Null))
}

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
    // fast, evicts it and says the agent is unreachable.
    a.child.kill().unwrap();
    a.child.wait().unwrap();
    assert!(
        registry.lookup("agent-1").unwrap().is_some(),
        "SIGKILL leaves the entry behind"
    );
    let started = Instant::now();
    let (status, body) = b.inject("agent-1", "to a dead owner");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "fails fast: {:?}",
        started.elapsed()
    );
    assert_eq!(status, 502, "{body}");
    assert_eq!(body["error"], "agent unreachable");
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
