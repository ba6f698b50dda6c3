//! One component, every host: the `.wasm` this crate embeds, run by the
//! wasmtime CLI, by Node.js (jco + the preview2 shim) and by Python (the
//! `wasmtime` package), on the same files as the Rust host.
//!
//! A host that is not installed is skipped with a note, unless
//! `AGENTMUX_REQUIRE_HOSTS=1` (as `.ci/run` sets), which makes it a failure.
//! Drivers: `tests/hosts/node/registry-host.mjs`, `tests/hosts/python/registry_host.py`.

use std::path::{Path, PathBuf};
use std::process::Command;

use agentmux_registry::blocking::Registry;
use agentmux_registry_tests::SeedEntry;
use serde_json::{json, Value};

/// Above Linux's largest pid, so the Rust host records no start time either.
const PID: &str = "4000000000";

#[derive(Clone, Copy, Debug, PartialEq)]
enum Host {
    Rust,
    WasmtimeCli,
    Node,
    Python,
}

const ALL: [Host; 4] = [Host::Rust, Host::WasmtimeCli, Host::Node, Host::Python];

fn hosts_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("hosts")
}

fn succeeds(cmd: &mut Command) -> Option<String> {
    let out = cmd.output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Why `host` cannot run here, if it cannot.
fn missing(host: Host) -> Option<String> {
    match host {
        Host::Rust => None,
        Host::WasmtimeCli => match succeeds(Command::new("wasmtime").arg("--version")) {
            Some(v) if v.contains("48.") => None,
            Some(v) => Some(format!("wasmtime CLI is {}, not 48.x", v.trim())),
            None => Some("no wasmtime CLI on PATH".into()),
        },
        Host::Node => {
            let jco = hosts_dir().join("node/node_modules/@bytecodealliance/jco");
            if succeeds(Command::new("node").arg("--version")).is_none() {
                Some("no node on PATH".into())
            } else if !jco.is_dir() {
                Some("jco is not installed: run npm ci in tests/hosts/node".into())
            } else {
                None
            }
        }
        Host::Python => succeeds(Command::new("python3").args(["-c", "import wasmtime.component"]))
            .is_none()
            .then(|| "python3 cannot import wasmtime.component: pip install wasmtime".into()),
    }
}

/// The hosts that can run here; fails if a required one cannot.
fn usable(hosts: &[Host]) -> Vec<Host> {
    let required = std::env::var("AGENTMUX_REQUIRE_HOSTS").is_ok_and(|v| v == "1");
    hosts
        .iter()
        .copied()
        .filter(|&host| match missing(host) {
            None => true,
            Some(why) if required => {
                panic!("{host:?} is required (AGENTMUX_REQUIRE_HOSTS=1): {why}")
            }
            Some(why) => {
                eprintln!("note: skipping {host:?}: {why}");
                false
            }
        })
        .collect()
}

/// A data dir, the exported component, and (for Node) its transpiled form.
struct Setup {
    _tmp: tempfile::TempDir,
    _transpiled: Option<tempfile::TempDir>,
    wasm: PathBuf,
    agents: PathBuf,
    registry: Registry,
    transpiled: Option<PathBuf>,
}

impl Setup {
    fn new(hosts: &[Host]) -> Setup {
        let tmp = tempfile::tempdir().unwrap();
        let wasm = tmp.path().join("registry.wasm");
        std::fs::write(&wasm, agentmux_registry::component_bytes()).unwrap();
        let registry = Registry::open(tmp.path().join("data")).unwrap();
        let agents = registry.as_async().agents_dir();
        // The output must sit inside the npm project so that its imports of
        // the shim resolve.
        let transpiled_dir = hosts.contains(&Host::Node).then(|| {
            let dir = tempfile::Builder::new()
                .prefix(".transpiled-")
                .tempdir_in(hosts_dir().join("node"))
                .unwrap();
            let status = Command::new("npx")
                .current_dir(hosts_dir().join("node"))
                .args(["--no-install", "jco", "transpile"])
                .arg(&wasm)
                .arg("-o")
                .arg(dir.path())
                .args(["--name", "registry", "--quiet"])
                .status()
                .unwrap();
            assert!(status.success(), "jco transpile failed");
            dir
        });
        Setup {
            transpiled: transpiled_dir.as_ref().map(|d| d.path().to_path_buf()),
            _transpiled: transpiled_dir,
            _tmp: tmp,
            wasm,
            agents,
            registry,
        }
    }

    /// Calls `function` through `host`; `{"ok": …}` or `{"err": {"tag", "val"}}`.
    /// The wasmtime CLI is driven in command mode (`--json`), so it offers the
    /// commands (write, remove, lookup, list, cleanup-stale) only.
    fn call(&self, host: Host, function: &str, args: &[&str]) -> Value {
        match host {
            Host::Rust => self.call_rust(function, args),
            Host::WasmtimeCli => self.call_cli(function, args),
            Host::Node => self.driver(
                Command::new("node")
                    .arg(hosts_dir().join("node/registry-host.mjs"))
                    .arg(self.transpiled.as_ref().unwrap()),
                function,
                args,
            ),
            Host::Python => self.driver(
                Command::new("python3")
                    .arg(hosts_dir().join("python/registry_host.py"))
                    .arg(&self.wasm),
                function,
                args,
            ),
        }
    }

    fn driver(&self, cmd: &mut Command, function: &str, args: &[&str]) -> Value {
        let out = cmd
            .arg(&self.agents)
            .arg(function)
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{function}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stdout)))
    }

    fn call_rust(&self, function: &str, args: &[&str]) -> Value {
        use agentmux_registry::Error;
        let r = &self.registry;
        let result: Result<Value, Error> = match (function, args) {
            ("write", [id, url, block, pid, key]) => r
                .write(id, url, block, pid.parse().unwrap(), key)
                .map(|e| json!(e)),
            ("lookup", [id]) => r.lookup(id).map(|e| json!(e)),
            ("remove", [id]) => r.remove(id).map(|b| json!(b)),
            ("remove-owned", [id, pid, key]) => r
                .remove_owned(id, pid.parse().unwrap(), key)
                .map(|b| json!(b)),
            ("list", []) => r.list().map(|l| json!(l)),
            ("cleanup-stale", [ms]) => r
                .cleanup_stale(std::time::Duration::from_millis(ms.parse().unwrap()))
                .map(|n| json!(n)),
            ("entry-file-name", [id]) => r.entry_file_name(id).map(|n| json!(n)),
            other => panic!("no such call {other:?}"),
        };
        match result {
            Ok(v) => json!({ "ok": normalise(v) }),
            Err(Error::InvalidAgentId(m)) => {
                json!({ "err": { "tag": "invalid-agent-id", "val": m } })
            }
            Err(e) => panic!("{e}"),
        }
    }

    fn call_cli(&self, function: &str, args: &[&str]) -> Value {
        let mut cmd = Command::new("wasmtime");
        cmd.arg("run")
            .arg("--dir")
            .arg(format!("{}::/", self.agents.display()))
            .arg(&self.wasm);
        cmd.arg("--json");
        match (function, args) {
            ("write", [id, url, block, pid, key]) => cmd.args([
                "write",
                id,
                "--url",
                url,
                "--block",
                block,
                "--pid",
                pid,
                "--auth-key",
                key,
            ]),
            ("lookup", [id]) => cmd.args(["lookup", id]),
            ("remove", [id]) => cmd.args(["remove", id]),
            ("list", []) => cmd.arg("list"),
            ("cleanup-stale", [ms]) => cmd.args(["cleanup", "--max-age-ms", ms]),
            other => panic!("command mode has no {other:?}"),
        };
        let out = cmd.output().unwrap();
        let stdout: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
        let ok = match function {
            "remove" | "cleanup-stale" => stdout["removed"].clone(),
            _ => stdout,
        };
        if function == "lookup" && ok.is_null() {
            assert!(!out.status.success(), "a missing agent exits non-zero");
        } else {
            assert!(
                out.status.success(),
                "{function}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        json!({ "ok": normalise(ok) })
    }
}

/// Entries as the on-disk format has them: a missing `pid_started` is null.
fn normalise(v: Value) -> Value {
    match v {
        Value::Object(mut map) if map.contains_key("agent_id") => {
            map.entry("pid_started").or_insert(Value::Null);
            Value::Object(map)
        }
        Value::Array(items) => Value::Array(items.into_iter().map(normalise).collect()),
        other => other,
    }
}

fn ok(v: &Value) -> &Value {
    assert!(v.get("err").is_none(), "unexpected error: {v}");
    &v["ok"]
}

#[test]
fn every_host_calls_every_function() {
    for host in usable(&[Host::Node, Host::Python]) {
        let s = Setup::new(&[host]);
        let call = |f: &str, a: &[&str]| s.call(host, f, a);
        let written = call("write", &["a1", "http://127.0.0.1:9", "blk", PID, "key-1"]);
        assert_eq!(ok(&written)["agent_id"], "a1", "{host:?}");
        assert_eq!(
            ok(&call("lookup", &["a1"]))["auth_key"],
            "key-1",
            "{host:?}"
        );
        assert_eq!(ok(&call("lookup", &["nobody"])), &Value::Null, "{host:?}");
        assert_eq!(
            call("lookup", &[""])["err"]["tag"],
            "invalid-agent-id",
            "{host:?}"
        );
        assert_eq!(
            ok(&call("list", &[])).as_array().unwrap().len(),
            1,
            "{host:?}"
        );
        assert_eq!(
            ok(&call("entry-file-name", &["a.b"])),
            "a%2Eb.json",
            "{host:?}"
        );
        assert_eq!(
            ok(&call("remove-owned", &["a1", PID, "other-key"])),
            false,
            "{host:?}"
        );
        assert_eq!(
            ok(&call("remove-owned", &["a1", PID, "key-1"])),
            true,
            "{host:?}"
        );
        call("write", &["a2", "http://127.0.0.1:9", "blk", PID, "k"]);
        assert_eq!(ok(&call("remove", &["a2"])), true, "{host:?}");
        assert_eq!(ok(&call("remove", &["a2"])), false, "{host:?}");
        call("write", &["a3", "http://127.0.0.1:9", "blk", PID, "k"]);
        std::thread::sleep(std::time::Duration::from_millis(5));
        assert_eq!(ok(&call("cleanup-stale", &["0"])), 1, "{host:?}");
        assert!(
            s.registry.list().unwrap().is_empty(),
            "{host:?}: all on the same files"
        );
    }
}

#[test]
fn the_wasmtime_cli_runs_command_mode_and_invokes_every_function() {
    if usable(&[Host::WasmtimeCli]).is_empty() {
        return;
    }
    let s = Setup::new(&[]);
    let dir = format!("{}::/", s.agents.display());
    let run = |args: &[&str]| {
        Command::new("wasmtime")
            .args(["run", "--dir", &dir])
            .arg(&s.wasm)
            .args(args)
            .output()
            .unwrap()
    };
    let text = |out: &std::process::Output| String::from_utf8_lossy(&out.stdout).into_owned();

    // Command mode: the same output as the host CLI.
    let out = run(&[
        "write",
        "c1",
        "--url",
        "http://127.0.0.1:7",
        "--block",
        "b",
        "--auth-key",
        "k",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(text(&out), "registered c1 -> http://127.0.0.1:7\n");
    assert!(text(&run(&["lookup", "c1"])).contains("local-url:  http://127.0.0.1:7"));
    assert!(text(&run(&["list"])).starts_with("AGENT"));
    let missing = run(&["lookup", "nobody"]);
    assert!(!missing.status.success());
    assert!(String::from_utf8_lossy(&missing.stderr).contains("no entry for agent \"nobody\""));
    let bad = run(&["frobnicate"]);
    assert!(!bad.status.success());
    assert!(
        String::from_utf8_lossy(&bad.stderr).contains("usage:"),
        "usage text on bad arguments"
    );

    // --invoke: each exported function by name, arguments in WAVE syntax.
    let invoke = |call: &str| {
        let out = Command::new("wasmtime")
            .args(["run", "--dir", &dir, "--invoke", call])
            .arg(&s.wasm)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{call}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        text(&out)
    };
    assert!(
        invoke(r#"write("i1", "http://127.0.0.1:8", "b", 7, "key", none)"#)
            .contains(r#"agent-id: "i1""#)
    );
    assert!(invoke(r#"lookup("i1")"#).contains(r#"local-url: "http://127.0.0.1:8""#));
    assert!(invoke(r#"lookup("nobody")"#).contains("none"));
    assert!(invoke(r#"lookup("")"#).contains("invalid-agent-id"));
    // `list` is a WIT keyword: wasmtime 48's --invoke parser accepts neither
    // `list()` nor the escaped `%list()`, so it is listed in command mode.
    let listed = run(&["--json", "list"]);
    assert!(listed.status.success());
    let listed: Vec<Value> = serde_json::from_slice(&listed.stdout).unwrap();
    assert!(listed.iter().any(|e| e["agent_id"] == "i1"), "{listed:?}");
    assert!(invoke(r#"entry-file-name("a.b")"#).contains("a%2Eb.json"));
    assert!(invoke(r#"remove-owned("i1", 7, "wrong")"#).contains("false"));
    assert!(invoke(r#"remove("i1")"#).contains("true"));
    assert!(invoke("cleanup-stale(0)").contains("ok("));
}

#[test]
fn an_entry_written_by_each_host_is_read_by_every_other_in_the_seed_format() {
    let hosts = usable(&ALL);
    let s = Setup::new(&hosts);
    for &writer in &hosts {
        let id = format!("from-{writer:?}").to_lowercase();
        let key = format!("key-{id}");
        ok(&s.call(
            writer,
            "write",
            &[&id, "http://127.0.0.1:4100", "blk", PID, &key],
        ));
        let raw = std::fs::read_to_string(s.agents.join(format!("{id}.json"))).unwrap();
        let value: Value = serde_json::from_str(&raw).unwrap();
        let mut keys: Vec<&String> = value.as_object().unwrap().keys().collect();
        keys.sort();
        assert_eq!(
            keys,
            [
                "agent_id",
                "auth_key",
                "block_id",
                "local_url",
                "pid",
                "updated_at"
            ],
            "{writer:?}: {raw}"
        );
        let seed: SeedEntry = serde_json::from_value(value).unwrap();
        assert_eq!(
            raw,
            seed.to_json(),
            "{writer:?} writes the seed's exact bytes"
        );

        for &reader in &hosts {
            if reader == Host::WasmtimeCli && writer == reader {
                continue;
            }
            let read = s.call(reader, "lookup", &[&id]);
            let entry = ok(&read);
            assert_eq!(
                entry["agent_id"],
                id.as_str(),
                "{reader:?} reading {writer:?}'s entry"
            );
            assert_eq!(
                entry["auth_key"],
                key.as_str(),
                "{reader:?} reading {writer:?}'s entry"
            );
            assert_eq!(
                entry["updated_at"].as_u64(),
                Some(seed.updated_at),
                "{reader:?} reading {writer:?}'s entry"
            );
        }
    }
    eprintln!(
        "cross-host: {} hosts wrote and read each other's entries: {hosts:?}",
        hosts.len()
    );
}
