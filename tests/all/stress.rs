//! Several OS processes write, read, list, remove and sweep the same agents
//! dir at once (`stress_worker.rs` says what each does). Asserts that no read
//! is torn or fails, no lookup returns another agent's entry, no registration
//! goes missing while it is rewritten, and none is lost; prints the counts.
//!
//! Length: `AGENTMUX_STRESS_SECS` seconds (default 20), 4 processes.

use std::io::Write as _;
use std::process::{Command, Stdio};

use agentmux_registry::blocking::Registry;
use agentmux_registry_tests::fields;
use serde_json::Value;

const WORKERS: u32 = 4;
const PINNED_PER_WORKER: u32 = 3;
const REVIVED_PER_WORKER: u32 = 2;

#[test]
fn concurrent_processes_never_see_torn_wrong_or_missing_entries() {
    let _heavy = agentmux_registry_tests::one_heavy_test_at_a_time();
    let secs: u64 = std::env::var("AGENTMUX_STRESS_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20);
    let tmp = tempfile::tempdir().unwrap();
    let registry = Registry::open(tmp.path()).unwrap();
    for w in 0..WORKERS {
        for k in 0..PINNED_PER_WORKER {
            let id = format!("pin-{w}-{k}");
            registry
                .write(fields(
                    &id,
                    "http://127.0.0.1:1",
                    "0",
                    1,
                    &format!("{id}:0"),
                ))
                .unwrap();
        }
    }

    let children: Vec<_> = (0..WORKERS)
        .map(|w| {
            Command::new(env!("CARGO_BIN_EXE_registry-stress-worker"))
                .arg(tmp.path())
                .args([
                    w.to_string(),
                    WORKERS.to_string(),
                    (secs * 1000).to_string(),
                ])
                .stdout(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let reports: Vec<Value> = children
        .into_iter()
        .map(|child| {
            let out = child.wait_with_output().unwrap();
            assert!(out.status.success(), "worker failed: {}", out.status);
            serde_json::from_slice(&out.stdout).unwrap()
        })
        .collect();

    let sum = |key: &str| {
        reports
            .iter()
            .map(|r| r[key].as_u64().unwrap())
            .sum::<u64>()
    };
    // After the run: every pinned id holds its owner's last write, every
    // revived id is registered, and a sweep leaves no junk or temporaries.
    let mut lost = 0u64;
    for (w, report) in reports.iter().enumerate() {
        for k in 0..PINNED_PER_WORKER {
            let last = report["last_pinned"][k as usize].as_u64().unwrap();
            let id = format!("pin-{w}-{k}");
            match registry.lookup(&id).unwrap() {
                Some(e) if e.block_id == last.to_string() => {}
                other => {
                    eprintln!("lost: {id} expected seq {last}, found {other:?}");
                    lost += 1;
                }
            }
        }
        for k in 0..REVIVED_PER_WORKER {
            if registry.lookup(&format!("rev-{w}-{k}")).unwrap().is_none() {
                lost += 1;
            }
        }
    }
    registry
        .cleanup_stale(std::time::Duration::from_secs(3600))
        .unwrap();
    let leftovers: Vec<String> = std::fs::read_dir(tmp.path().join("agents"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("junk-") || n.starts_with(".tmp-"))
        .collect();

    let summary = format!(
        "stress: {WORKERS} processes x {secs}s: ops={} reads={} torn_or_failed_reads={} wrong_entry={} \
         missing_while_rewritten={} lost={lost} write_errors={} leftover_junk_or_temp={} \
         (informational: revived entry absent right after its write={})",
        sum("ops"),
        sum("reads"),
        sum("torn_or_failed_reads"),
        sum("wrong_entry"),
        sum("missing_while_rewritten"),
        sum("write_errors"),
        leftovers.len(),
        sum("revive_absent_right_after_write"),
    );
    // Written to the real stderr so that it shows in CI logs on success too.
    let _ = writeln!(std::io::stderr().lock(), "{summary}");

    assert!(
        sum("ops") >= 1000 && sum("reads") >= 300,
        "too little work to mean anything: {summary}"
    );
    assert_eq!(sum("torn_or_failed_reads"), 0, "{summary}");
    assert_eq!(sum("wrong_entry"), 0, "{summary}");
    assert_eq!(sum("missing_while_rewritten"), 0, "{summary}");
    assert_eq!(lost, 0, "{summary}");
    assert_eq!(sum("write_errors"), 0, "{summary}");
    assert!(leftovers.is_empty(), "{summary}: {leftovers:?}");
}
