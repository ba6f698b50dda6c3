//! One process of the watch test (`tests/all/watch.rs`): creates, renews,
//! removes and sweeps entries of a data dir shared with other workers.
//!
//! Usage: `registry-watch-worker <data_dir> <worker> <operations>`
//!    or: `registry-watch-worker probe <data_dir> <trials>` (see [`probe`])
//!
//! Ids: `own-{w}-{k}` (this worker's, registered and renewed under its own
//! nonce) and `any-{k}` (written and removed by every worker). One in 50
//! operations sweeps entries older than 20 ms, whoever wrote them. It prints
//! the number of operations that failed (there should be none).

use agentmux_registry::blocking::Registry;
use agentmux_registry_tests::fields;

/// The writer of the staleness test: for each trial k, writes the entry
/// `probe` with block `k` (a temporary file renamed into place, as every
/// writer does), says `k` on stdout, and waits for a line on stdin before
/// the next. Every 20,000 trials it first floods the directory with more
/// notifications than the kernel queues (files created and removed), and
/// every 25,000 (from 12,500) it replaces the agents directory by a new one.
fn probe(data_dir: &str, trials: u64) {
    use std::io::{BufRead, Write};
    let agents = std::path::Path::new(data_dir).join("agents");
    let max_queued: u64 = std::fs::read_to_string("/proc/sys/fs/inotify/max_queued_events")
        .map_or(16_384, |s| s.trim().parse().unwrap_or(16_384));
    let mut acks = std::io::stdin().lock().lines();
    let mut out = std::io::stdout().lock();
    for k in 1..=trials {
        if k % 20_000 == 0 {
            for i in 0..max_queued / 3 + 100 {
                let junk = agents.join(format!("junk-{i}.json"));
                std::fs::write(&junk, b"not an entry").unwrap();
                std::fs::remove_file(&junk).unwrap();
            }
        }
        if k % 25_000 == 12_500 {
            let aside = agents.with_file_name(format!("agents-aside-{k}"));
            std::fs::rename(&agents, &aside).unwrap();
            std::fs::create_dir(&agents).unwrap();
            #[cfg(unix)]
            {
                use std::os::unix::fs::PermissionsExt;
                std::fs::set_permissions(&agents, std::fs::Permissions::from_mode(0o700)).unwrap();
            }
        }
        let entry = format!(
            r#"{{"agent_id":"probe","local_url":"http://127.0.0.1:1","block_id":"{k}","pid":0,"updated_at":{k},"auth_key":"k"}}"#
        );
        let temp = agents.join(".tmp-probe");
        std::fs::write(&temp, entry).unwrap();
        std::fs::rename(&temp, agents.join("probe.json")).unwrap();
        writeln!(out, "{k}").unwrap();
        out.flush().unwrap();
        if acks.next().is_none() {
            return;
        }
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("probe") {
        return probe(&args[2], args[3].parse().unwrap());
    }
    let [_, dir, worker, operations] = &args[..] else {
        panic!("usage: registry-watch-worker <data_dir> <worker> <operations>");
    };
    let worker: u64 = worker.parse().unwrap();
    let operations: u64 = operations.parse().unwrap();
    let registry = Registry::open(dir).unwrap();
    let mut state = 0x9e37_79b9_7f4a_7c15_u64 ^ (worker + 1).wrapping_mul(0x2545_f491_4f6c_dd1d);
    let mut next = |n: u64| {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state % n
    };
    let mut failed = 0u64;
    for op in 0..operations {
        let k = next(8);
        let own = format!("own-{worker}-{k}");
        let nonce = (1 << 52) + worker * 100 + k;
        let result = match next(50) {
            0 => registry
                .cleanup_stale(std::time::Duration::from_millis(20))
                .map(|_| ()),
            1..15 => {
                let mut f = fields(&own, "http://127.0.0.1:1", &op.to_string(), 0, "k");
                f.registration_nonce = nonce;
                registry.write(f).map(|_| ())
            }
            15..25 => {
                let mut f = fields(&own, "http://127.0.0.1:1", &op.to_string(), 0, "k");
                f.registration_nonce = nonce;
                registry.renew(f).map(|_| ())
            }
            25..32 => registry.remove(&own).map(|_| ()),
            32..44 => registry
                .write(fields(
                    &format!("any-{k}"),
                    "http://127.0.0.1:2",
                    &op.to_string(),
                    0,
                    "k",
                ))
                .map(|_| ()),
            _ => registry.remove(&format!("ANY-{k}")).map(|_| ()),
        };
        if let Err(e) = result {
            eprintln!("worker {worker}: {e}");
            failed += 1;
        }
    }
    println!("{failed}");
}
