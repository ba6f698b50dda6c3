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
use agentmux_registry::{EntryFields, Owner, Renewal};
use agentmux_registry_tests::SeedEntry;
use serde_json::{json, Value};

/// Above Linux's largest pid, so the Rust host records no start time or pid
/// namespace either.
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
        Setup::with(hosts, false)
    }

    /// A shared registry's root as the preopen.
    fn new_shared(hosts: &[Host]) -> Setup {
        Setup::with(hosts, true)
    }

    fn with(hosts: &[Host], shared: bool) -> Setup {
        let tmp = tempfile::tempdir().unwrap();
        let wasm = tmp.path().join("registry.wasm");
        std::fs::write(&wasm, agentmux_registry::component_bytes()).unwrap();
        let registry = if shared {
            Registry::open_shared(tmp.path().join("reactive")).unwrap()
        } else {
            Registry::open(tmp.path().join("data")).unwrap()
        };
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
    /// Arguments are strings, as the drivers take them:
    /// - `write`/`renew`: agent-id, local-url, block-id, pid, auth-key, then
    ///   optionally the registration nonce, `pid-started=N`,
    ///   `pid-namespace=N`, `beat-interval-ms=N`, `channel=NAME` and any
    ///   `extra:KEY=JSON`;
    /// - `remove-owned`: agent-id, pid, auth-key, optionally the nonce;
    /// - `list-entries`: max-entries; `cleanup-stale`: max-age-ms;
    /// - `lookup`, `remove`, `entry-file-name`: agent-id.
    ///
    /// The wasmtime CLI is driven in command mode (`--json`), so it offers the
    /// commands (plain write, remove, lookup, list, cleanup) only; see
    /// `the_wasmtime_cli_runs_command_mode_and_invokes_every_function` for
    /// the rest through `--invoke`.
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
            ("write", _) => r.write(entry_fields(args)).map(|e| json!(e)),
            ("renew", _) => r.renew(entry_fields(args)).map(|renewal| {
                let case = match renewal {
                    Renewal::Refreshed => "refreshed",
                    Renewal::Restored => "restored",
                    Renewal::Superseded => "superseded",
                };
                json!(case)
            }),
            ("lookup", [id]) => r.lookup(id).map(|e| json!(e)),
            ("remove", [id]) => r.remove(id).map(|b| json!(b)),
            ("remove-owned", [id, pid, key, nonce @ ..]) => {
                let owner = Owner {
                    pid: pid.parse().unwrap(),
                    auth_key: key.to_string(),
                    registration_nonce: nonce.first().map_or(0, |n| n.parse().unwrap()),
                };
                r.remove_owned(id, &owner).map(|b| json!(b))
            }
            // The Rust API lists everything, sorted: list-entries is its head.
            ("list-entries", [max]) => r.list().map(|mut l| {
                l.truncate(max.parse().unwrap());
                json!(l)
            }),
            ("cleanup-stale", [ms]) => r
                .cleanup_stale(std::time::Duration::from_millis(ms.parse().unwrap()))
                .map(|n| json!(n)),
            ("entry-file-name", [id]) => r.entry_file_name(id).map(|n| json!(n)),
            ("write-shared", _) => r.write(entry_fields(args)).map(|e| json!(e)),
            ("remove-shared", [id, channel]) => r.remove_channel(id, channel).map(|b| json!(b)),
            ("remove-owned-shared", [id, pid, key, nonce]) => {
                let owner = Owner {
                    pid: pid.parse().unwrap(),
                    auth_key: key.to_string(),
                    registration_nonce: nonce.parse().unwrap(),
                };
                r.remove_owned(id, &owner).map(|b| json!(b))
            }
            ("evict-shared", [entry]) => {
                let mut value: Value = serde_json::from_str(entry).unwrap();
                // Printed with every known key; unset ones as the format omits them.
                let map = value.as_object_mut().unwrap();
                map.retain(|_, v| !v.is_null());
                let judged = agentmux_registry::AgentEntry::parse(value.to_string().as_bytes());
                r.evict(&judged.unwrap()).map(|b| json!(b))
            }
            ("lookup-all-shared", [id]) => r.lookup_all(id).map(|e| json!(e)),
            ("agent-dir-name", [id]) => r.entry_file_name(id).map(|n| json!(n)),
            other => panic!("no such call {other:?}"),
        };
        let (tag, message) = match result {
            Ok(v) => return json!({ "ok": normalise(v) }),
            Err(Error::InvalidAgentId(m)) => ("invalid-agent-id", m),
            Err(Error::InvalidField(m)) => ("invalid-field", m),
            Err(Error::Conflict(m)) => ("conflict", m),
            Err(Error::Io(m)) => ("io", m),
            Err(e) => panic!("{e}"),
        };
        json!({ "err": { "tag": tag, "val": message } })
    }

    fn call_cli(&self, function: &str, args: &[&str]) -> Value {
        let mut cmd = Command::new("wasmtime");
        cmd.arg("run")
            .arg("--dir")
            .arg(format!("{}::/", self.agents.display()))
            .arg(&self.wasm);
        cmd.arg("--json");
        let mut max_entries = None;
        let write = |[id, url, block, pid, key]: [&str; 5]| {
            [
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
            ]
            .map(String::from)
        };
        match (function, args) {
            ("write", [id, url, block, pid, key]) => cmd.args(write([id, url, block, pid, key])),
            ("lookup", [id]) => cmd.args(["lookup", id]),
            ("remove", [id]) => cmd.args(["remove", id]),
            // `list` prints every entry sorted by id: list-entries is its head.
            ("list-entries", [max]) => {
                max_entries = Some(max.parse::<usize>().unwrap());
                cmd.arg("list")
            }
            ("cleanup-stale", [ms]) => cmd.args(["cleanup", "--max-age-ms", ms]),
            ("write-shared", [id, url, block, pid, key, channel]) => cmd
                .args([
                    "--shared",
                    "--channel",
                    channel.strip_prefix("channel=").unwrap(),
                ])
                .args(write([id, url, block, pid, key])),
            ("lookup-all-shared", [id]) => cmd.args(["--shared", "lookup", id]),
            ("remove-shared", [id, channel]) => {
                cmd.args(["--shared", "--channel", channel, "remove", id])
            }
            other => panic!("command mode has no {other:?}"),
        };
        let out = cmd.output().unwrap();
        let stdout: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
        let ok = match function {
            "remove" | "remove-shared" | "cleanup-stale" => stdout["removed"].clone(),
            "list-entries" => match stdout {
                Value::Array(mut entries) => {
                    entries.truncate(max_entries.unwrap());
                    Value::Array(entries)
                }
                other => other,
            },
            _ => stdout,
        };
        if (function == "lookup" && ok.is_null())
            || (function == "lookup-all-shared" && ok == json!([]))
        {
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

/// `write`/`renew` arguments (see [`Setup::call`]) as [`EntryFields`].
fn entry_fields(args: &[&str]) -> EntryFields {
    let [id, url, block, pid, key, rest @ ..] = args else {
        panic!("write/renew need agent-id, local-url, block-id, pid, auth-key: {args:?}");
    };
    let mut fields = EntryFields {
        agent_id: id.to_string(),
        local_url: url.to_string(),
        block_id: block.to_string(),
        pid: pid.parse().unwrap(),
        auth_key: key.to_string(),
        ..EntryFields::default()
    };
    let mut nonce = false;
    for arg in rest {
        if let Some(n) = arg.strip_prefix("pid-started=") {
            fields.pid_started = Some(n.parse().unwrap());
        } else if let Some(n) = arg.strip_prefix("pid-namespace=") {
            fields.pid_namespace = Some(n.parse().unwrap());
        } else if let Some(n) = arg.strip_prefix("beat-interval-ms=") {
            fields.beat_interval_ms = Some(n.parse().unwrap());
        } else if let Some(channel) = arg.strip_prefix("channel=") {
            fields.channel = channel.into();
        } else if let Some((key, value)) =
            arg.strip_prefix("extra:").and_then(|a| a.split_once('='))
        {
            fields.extra.push((key.into(), value.into()));
        } else {
            assert!(!nonce, "unexpected argument {arg:?}");
            fields.registration_nonce = arg.parse().unwrap();
            nonce = true;
        }
    }
    fields
}

/// Entries as the drivers print them: every known key present, in the
/// on-disk order (an empty channel, a 0 nonce, null when no start time,
/// namespace or beat interval), then the extra keys (the on-disk format and the Rust host
/// leave unset keys out).
fn normalise(v: Value) -> Value {
    match v {
        Value::Object(mut map) if map.contains_key("agent_id") => {
            let mut out = serde_json::Map::new();
            for key in agentmux_registry_core::entry::KNOWN_KEYS {
                let unset = match key {
                    "channel" => json!(""),
                    "registration_nonce" => json!(0),
                    _ => Value::Null,
                };
                out.insert(key.into(), map.remove(key).unwrap_or(unset));
            }
            out.extend(map);
            Value::Object(out)
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
    for host in usable(&[Host::Rust, Host::Node, Host::Python]) {
        let s = Setup::new(&[host]);
        let call = |f: &str, a: &[&str]| s.call(host, f, a);
        let written = call("write", &["a1", "http://127.0.0.1:9", "blk", PID, "key-1"]);
        assert_eq!(
            ok(&written),
            &json!({
                "agent_id": "a1",
                "local_url": "http://127.0.0.1:9",
                "block_id": "blk",
                "pid": 4_000_000_000_u32,
                "updated_at": ok(&written)["updated_at"].as_u64().unwrap(),
                "auth_key": "key-1",
                "channel": "",
                "registration_nonce": 0,
                "pid_started": null,
                "pid_ns": null,
                "beat_interval_ms": null
            }),
            "{host:?}"
        );
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
            call("write", &["", "http://127.0.0.1:9", "blk", PID, "k"])["err"]["tag"],
            "invalid-agent-id",
            "{host:?}"
        );
        let long_block = "b".repeat(257);
        assert_eq!(
            call(
                "write",
                &["a9", "http://127.0.0.1:9", long_block.as_str(), PID, "k"]
            )["err"]["tag"],
            "invalid-field",
            "{host:?}"
        );
        assert_eq!(
            ok(&call("entry-file-name", &["a.b"])),
            "a%2Eb.json",
            "{host:?}"
        );

        // Every field of entry-fields reaches the file and comes back.
        let full = call(
            "write",
            &[
                "a0",
                "http://127.0.0.1:9",
                "blk",
                PID,
                "key-0",
                "10",
                "pid-started=11",
                "pid-namespace=4026531836",
                "beat-interval-ms=20000",
                "channel=dev-a",
                r#"extra:uid="u-1""#,
                r#"extra:keys={"b":[1,2.5],"a":null}"#,
            ],
        );
        assert_eq!(ok(&full)["pid_started"], 11, "{host:?}");
        assert_eq!(ok(&full)["beat_interval_ms"], 20_000, "{host:?}");
        assert_eq!(ok(&full)["pid_ns"], 4026531836_u64, "{host:?}");
        assert_eq!(ok(&full)["registration_nonce"], 10, "{host:?}");
        assert_eq!(ok(&full)["channel"], "dev-a", "{host:?}");
        assert_eq!(
            ok(&call("lookup", &["A0"])),
            ok(&full),
            "{host:?}: any case"
        );
        let raw = std::fs::read_to_string(s.agents.join("a0.json")).unwrap();
        assert!(
            raw.ends_with(
                r#","channel":"dev-a","registration_nonce":10,"pid_started":11,"pid_ns":4026531836,"beat_interval_ms":20000,"uid":"u-1","keys":{"b":[1,2.5],"a":null}}"#
            ),
            "{host:?}: {raw}"
        );
        // An extra key the registry writes itself is refused.
        assert_eq!(
            call(
                "write",
                &["a9", "http://127.0.0.1:9", "blk", PID, "k", "extra:pid=1"]
            )["err"]["tag"],
            "invalid-field",
            "{host:?}"
        );

        // list-entries: sorted by id, at most max-entries.
        let listed = call("list-entries", &["10"]);
        let ids: Vec<&str> = ok(&listed)
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["agent_id"].as_str().unwrap())
            .collect();
        assert_eq!(ids, ["a0", "a1"], "{host:?}");
        let first = call("list-entries", &["1"]);
        assert_eq!(ok(&first), &json!([ok(&full)]), "{host:?}");

        // remove-owned: pid, auth key and a nonce other than 0 must all match.
        for args in [
            ["a0", PID, "other-key", "10"],
            ["a0", "7", "key-0", "10"],
            ["a0", PID, "key-0", "11"],
            ["a0", PID, "key-0", "0"],
        ] {
            assert_eq!(
                ok(&call("remove-owned", &args)),
                false,
                "{host:?}: {args:?}"
            );
        }
        assert_eq!(
            ok(&call("remove-owned", &["a1", PID, "key-1"])),
            false,
            "{host:?}: a plain write is never removed conditionally"
        );
        assert_eq!(
            ok(&call("remove-owned", &["a0", PID, "key-0", "10"])),
            true,
            "{host:?}"
        );
        assert_eq!(ok(&call("remove", &["a1"])), true, "{host:?}");

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
fn every_host_renews_a_registration_until_it_is_superseded() {
    for host in usable(&[Host::Rust, Host::Node, Host::Python]) {
        let s = Setup::new(&[host]);
        let call = |f: &str, a: &[&str]| s.call(host, f, a);
        let mine = |nonce: &str| {
            s.call(
                host,
                "renew",
                &[
                    "r1",
                    "http://127.0.0.1:9",
                    "blk",
                    PID,
                    "key-r",
                    nonce,
                    "extra:jekt_public_key=\"cHVi\"",
                ],
            )
        };

        // No entry yet: restored.
        assert_eq!(ok(&mine("1")), "restored", "{host:?}");
        let first = ok(&call("lookup", &["r1"])).clone();
        assert_eq!(first["registration_nonce"], 1, "{host:?}");
        std::thread::sleep(std::time::Duration::from_millis(5));

        // Still this registration's: refreshed, with a later updated_at, and
        // its extra keys kept.
        assert_eq!(ok(&mine("1")), "refreshed", "{host:?}");
        let refreshed = ok(&call("lookup", &["r1"])).clone();
        assert!(
            refreshed["updated_at"].as_u64() > first["updated_at"].as_u64(),
            "{host:?}: {first} then {refreshed}"
        );
        assert_eq!(refreshed["jekt_public_key"], "cHVi", "{host:?}");

        // Another registration of the id: superseded, nothing changes.
        assert_eq!(ok(&mine("2")), "superseded", "{host:?}");
        assert_eq!(ok(&call("lookup", &["r1"])), &refreshed, "{host:?}");

        // A plain write (nonce 0) by someone else supersedes too.
        call(
            "write",
            &["r1", "http://127.0.0.1:10", "blk", PID, "other-key"],
        );
        assert_eq!(ok(&mine("1")), "superseded", "{host:?}");
        assert_eq!(
            ok(&call("lookup", &["r1"]))["auth_key"],
            "other-key",
            "{host:?}"
        );

        // Removed (say, swept while the owner stalled): restored.
        assert_eq!(ok(&call("remove", &["r1"])), true, "{host:?}");
        assert_eq!(ok(&mine("1")), "restored", "{host:?}");
        assert_eq!(
            ok(&call("remove-owned", &["r1", PID, "key-r", "1"])),
            true,
            "{host:?}"
        );

        // Only a registration can be renewed.
        assert_eq!(
            call("renew", &["r1", "http://127.0.0.1:9", "blk", PID, "key-r"])["err"]["tag"],
            "invalid-field",
            "{host:?}"
        );
        assert!(s.registry.list().unwrap().is_empty(), "{host:?}");
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

    // --invoke: each exported function by name, arguments in WAVE syntax
    // (records as `{field: value, ...}`, options as `none`/`some(...)`). The
    // result is printed in WAVE too: `ok(...)` or `err(...)`, exit status 0
    // either way.
    let invoke_raw = |call: &str| {
        Command::new("wasmtime")
            .args(["run", "--dir", &dir, "--invoke", call])
            .arg(&s.wasm)
            .output()
            .unwrap()
    };
    let invoke = |call: &str| {
        let out = invoke_raw(call);
        assert!(
            out.status.success(),
            "{call}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        text(&out)
    };
    let written = invoke(
        r#"write({agent-id: "i1", local-url: "http://127.0.0.1:8", block-id: "b", pid: 7, auth-key: "key", channel: "", registration-nonce: 1, pid-started: none, pid-namespace: some(4026531836), extra: [("uid", "\"u-1\"")]})"#,
    );
    assert!(
        written.starts_with(r#"ok({agent-id: "i1", local-url: "http://127.0.0.1:8""#),
        "{written}"
    );
    assert!(
        written.contains(
            r#"registration-nonce: 1, pid-namespace: some(4026531836), extra: [("uid", "\"u-1\"")]"#
        ),
        "{written}"
    );
    assert_eq!(
        s.registry.lookup("i1").unwrap().unwrap().pid_namespace,
        Some(4026531836)
    );
    // Option fields that are none may be left out of a record.
    assert!(invoke(
        r#"write({agent-id: "i2", local-url: "http://127.0.0.1:8", block-id: "b", pid: 7, auth-key: "key", channel: "", registration-nonce: 0, extra: []})"#
    )
    .starts_with(r#"ok({agent-id: "i2""#));
    assert!(invoke(
        r#"write({agent-id: "", local-url: "u", block-id: "b", pid: 1, auth-key: "k", channel: "", registration-nonce: 0, extra: []})"#
    )
    .contains("err(invalid-agent-id("));
    let renew = |nonce: u64| {
        invoke(&format!(
            r#"renew({{agent-id: "i1", local-url: "http://127.0.0.1:8", block-id: "b", pid: 7, auth-key: "key", channel: "", registration-nonce: {nonce}, extra: []}})"#
        ))
    };
    assert_eq!(renew(1).trim(), "ok(refreshed)");
    assert_eq!(renew(2).trim(), "ok(superseded)");
    assert!(renew(0).contains("err(invalid-field("));
    assert!(invoke(r#"lookup("i1")"#).contains(r#"local-url: "http://127.0.0.1:8""#));
    assert_eq!(invoke(r#"lookup("nobody")"#).trim(), "ok(none)");
    assert!(invoke(r#"lookup("")"#).contains("invalid-agent-id"));
    let listed = invoke("list-entries(10)");
    for id in ["c1", "i1", "i2"] {
        assert!(listed.contains(&format!(r#"agent-id: "{id}""#)), "{listed}");
    }
    let first = invoke("list-entries(1)");
    assert!(
        first.contains(r#"agent-id: "c1""#) && !first.contains("i1"),
        "{first}"
    );
    let listed = run(&["--json", "list"]);
    assert!(listed.status.success());
    let listed: Vec<Value> = serde_json::from_slice(&listed.stdout).unwrap();
    assert!(listed.iter().any(|e| e["agent_id"] == "i1"), "{listed:?}");
    assert_eq!(
        invoke(r#"entry-file-name("a.b")"#).trim(),
        r#"ok("a%2Eb.json")"#
    );
    assert_eq!(
        invoke(r#"remove-owned("i1", {pid: 7, auth-key: "key", registration-nonce: 0})"#).trim(),
        "ok(false)"
    );
    assert_eq!(
        invoke(r#"remove-owned("i1", {pid: 7, auth-key: "key", registration-nonce: 1})"#).trim(),
        "ok(true)"
    );
    assert_eq!(renew(1).trim(), "ok(restored)");
    assert_eq!(invoke(r#"remove("i1")"#).trim(), "ok(true)");
    assert_eq!(invoke(r#"remove("i1")"#).trim(), "ok(false)");
    std::thread::sleep(std::time::Duration::from_millis(5));
    assert_eq!(invoke("cleanup-stale(0)").trim(), "ok(2)", "c1 and i2");
    assert_eq!(invoke("list-entries(10)").trim(), "ok([])");

    // The resources (entry-listing, sweep) are not reachable: wasmtime 48's
    // --invoke names functions only, and neither a constructor nor a method
    // parses as one.
    for call in [
        "[constructor]entry-listing()",
        "[method]entry-listing.next-batch(1)",
    ] {
        let out = invoke_raw(call);
        assert!(!out.status.success(), "{call} now works: update the README");
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("Failed to parse invoke"),
            "{call}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let out = invoke_raw("entry-listing()");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("No exported func named `entry-listing`"));
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
                "channel",
                "local_url",
                "pid",
                "registration_nonce",
                "updated_at"
            ],
            "{writer:?}: {raw}"
        );
        let seed: SeedEntry = serde_json::from_value(value).unwrap();
        assert_eq!(
            raw,
            seed.to_json()
                .replace('}', r#","channel":"","registration_nonce":0}"#),
            "{writer:?} writes agentmux-srv's exact bytes"
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

#[test]
fn a_registration_written_by_each_host_is_renewed_and_removed_by_the_others() {
    let hosts = usable(&ALL);
    let s = Setup::new(&hosts);
    // The wasmtime CLI's command mode writes plain entries only; it reads.
    let writers: Vec<Host> = hosts
        .iter()
        .copied()
        .filter(|&h| h != Host::WasmtimeCli)
        .collect();
    for &writer in &writers {
        let id = format!("reg-{writer:?}").to_lowercase();
        let token = format!("{}", 1000 + writer as u64);
        let args = |token: &str| -> Vec<String> {
            [
                id.as_str(),
                "http://127.0.0.1:4100",
                "blk",
                PID,
                "key",
                token,
            ]
            .into_iter()
            .chain([
                "pid-started=11",
                "pid-namespace=4026531836",
                "channel=stable",
                r#"extra:uid_public_key={"alg":"ed25519","key":"cHVi"}"#,
            ])
            .map(String::from)
            .collect()
        };
        let call = |host: Host, f: &str, a: Vec<String>| {
            s.call(host, f, &a.iter().map(String::as_str).collect::<Vec<_>>())
        };
        let written = call(writer, "write", args(&token));
        let raw = std::fs::read_to_string(s.agents.join(format!("{id}.json"))).unwrap();
        let stored = s.registry.lookup(&id).unwrap().expect("written");
        assert_eq!(
            raw,
            serde_json::to_string(&stored).unwrap(),
            "{writer:?} writes the on-disk key order"
        );
        assert!(
            raw.ends_with(&format!(
                r#","channel":"stable","registration_nonce":{token},"pid_started":11,"pid_ns":4026531836,"uid_public_key":{{"alg":"ed25519","key":"cHVi"}}}}"#
            )),
            "{writer:?}: {raw}"
        );

        for &other in &hosts {
            let read = s.call(other, "lookup", &[&id]);
            assert_eq!(
                ok(&read),
                ok(&written),
                "{other:?} reading {writer:?}'s entry"
            );
        }
        for &other in writers.iter().filter(|&&h| h != writer) {
            assert_eq!(
                ok(&call(other, "renew", args(&token))),
                "refreshed",
                "{other:?} renewing {writer:?}'s registration"
            );
            assert_eq!(
                ok(&call(other, "renew", args("999"))),
                "superseded",
                "{other:?} renewing {writer:?}'s id as another registration"
            );
            assert_eq!(
                ok(&s.call(other, "remove-owned", &[&id, PID, "key"])),
                false,
                "{other:?}: removing {writer:?}'s registration without its nonce"
            );
        }
        let remover = *writers.iter().find(|&&h| h != writer).unwrap_or(&writer);
        assert_eq!(
            ok(&s.call(remover, "remove-owned", &[&id, PID, "key", &token])),
            true,
            "{remover:?} removing {writer:?}'s registration"
        );
    }
    assert!(s.registry.list().unwrap().is_empty());
}

/// The shared registry through every host: entries per agent and channel,
/// lookup-all freshest first, agentmux-srv's names, and the conditional
/// removals, on the same files as the Rust host.
#[test]
fn every_host_serves_the_shared_registry() {
    for host in usable(&[Host::Rust, Host::Node, Host::Python]) {
        let s = Setup::new_shared(&[host]);
        let call = |f: &str, a: &[&str]| s.call(host, f, a);
        let write = |id: &str, channel: &str, extra: &[&str]| {
            let args = [
                &[id, "http://127.0.0.1:9", "blk", PID, "key"][..],
                extra,
                &[channel],
            ]
            .concat();
            call("write-shared", &args)
        };
        let stable = write("My.Agent", "channel=stable", &["5", r#"extra:uid="u-1""#]);
        assert_eq!(ok(&stable)["channel"], "stable", "{host:?}");
        std::thread::sleep(std::time::Duration::from_millis(2));
        let dev = write("my.agent", "channel=dev-a", &[]);
        assert_eq!(
            ok(&call("agent-dir-name", &["My.Agent"])),
            "my%2Eagent",
            "{host:?}"
        );
        assert!(
            s.agents.join("my%2Eagent/stable.json").is_file(),
            "{host:?}"
        );
        let all = call("lookup-all-shared", &["MY.AGENT"]);
        assert_eq!(
            ok(&all),
            &json!([ok(&dev), ok(&stable)]),
            "{host:?}: freshest first"
        );
        assert_eq!(ok(&all)[1]["uid"], "u-1", "{host:?}");
        assert_eq!(
            write("a", "channel=", &[])["err"]["tag"],
            "invalid-field",
            "{host:?}: a channel is needed"
        );
        // What the Rust host reads is what this host wrote.
        assert_eq!(
            s.registry.lookup_all("my.agent").unwrap().len(),
            2,
            "{host:?}"
        );

        assert_eq!(
            ok(&call("remove-owned-shared", &["my.agent", PID, "key", "6"])),
            false,
            "{host:?}"
        );
        assert_eq!(
            ok(&call("remove-owned-shared", &["my.agent", PID, "key", "5"])),
            true,
            "{host:?}"
        );
        let judged = ok(&call("lookup-all-shared", &["my.agent"]))[0].to_string();
        assert_eq!(ok(&call("evict-shared", &[&judged])), true, "{host:?}");
        assert_eq!(
            ok(&call("lookup-all-shared", &["my.agent"])),
            &json!([]),
            "{host:?}"
        );
        assert!(
            !s.agents.join("my%2Eagent").exists(),
            "{host:?}: the empty dir goes"
        );

        write("b", "channel=stable", &[]);
        assert_eq!(
            ok(&call("remove-shared", &["B", "STABLE"])),
            true,
            "{host:?}"
        );
        assert_eq!(
            ok(&call("remove-shared", &["b", "stable"])),
            false,
            "{host:?}"
        );
    }
}

#[test]
fn the_wasmtime_cli_serves_the_shared_registry_in_command_mode() {
    if usable(&[Host::WasmtimeCli]).is_empty() {
        return;
    }
    let s = Setup::new_shared(&[]);
    let cli = |f: &str, a: &[&str]| s.call(Host::WasmtimeCli, f, a);
    cli(
        "write-shared",
        &[
            "AgentX",
            "http://127.0.0.1:9",
            "blk",
            PID,
            "k",
            "channel=stable",
        ],
    );
    std::thread::sleep(std::time::Duration::from_millis(2));
    s.registry
        .write(EntryFields {
            channel: "dev-a".into(),
            ..entry_fields(&["agentx", "http://127.0.0.1:10", "blk", PID, "k"])
        })
        .unwrap();
    let all = ok(&cli("lookup-all-shared", &["agentx"])).clone();
    let channels: Vec<&str> = all
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["channel"].as_str().unwrap())
        .collect();
    assert_eq!(channels, ["dev-a", "stable"]);
    assert_eq!(ok(&cli("remove-shared", &["AGENTX", "dev-a"])), true);
    assert_eq!(s.registry.lookup_all("agentx").unwrap().len(), 1);
    assert_eq!(ok(&cli("lookup-all-shared", &["nobody"])), &json!([]));
}
