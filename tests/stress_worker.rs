//! One process of the multi-process stress test (`tests/all/stress.rs`).
//!
//! Usage: `registry-stress-worker <data_dir> <worker> <workers> <millis>`
//!
//! Ids it uses, over a data dir shared with the other workers:
//! - `pin-{w}-{k}`: registered before any worker starts and only ever
//!   rewritten by worker `w`, never removed: every read of one must find it;
//! - `churn-{k}`: written, removed and compare-and-removed by every worker;
//! - `rev-{w}-{k}`: worker `w` plants a stale raw entry and re-registers it
//!   while others sweep stale entries: the re-registration must survive.
//!
//! Every entry it writes is self-checking: `block_id` is a sequence number and
//! `auth_key` is `{agent_id}:{block_id}`, so a torn or mixed-up read shows.
//! It prints one JSON object of counts on stdout.

use std::time::{Duration, Instant};

use agentmux_registry::blocking::Registry;
use agentmux_registry::AgentEntry;
use agentmux_registry_tests::{fields, now_ms, owner, SeedEntry};
use serde_json::json;

const PINNED_PER_WORKER: u32 = 3;
const CHURN_IDS: u32 = 6;
const REVIVED_PER_WORKER: u32 = 2;

struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u32) -> u32 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 % u64::from(n)) as u32
    }
}

#[derive(Default)]
struct Counts {
    ops: u64,
    reads: u64,
    torn_or_failed_reads: u64,
    wrong_entry: u64,
    missing_while_rewritten: u64,
    write_errors: u64,
    revive_absent_right_after_write: u64,
}

fn key(agent_id: &str, seq: u64) -> String {
    format!("{agent_id}:{seq}")
}

impl Counts {
    /// Checks a read of `id`; `must_exist` for ids that are never removed.
    fn check(
        &mut self,
        id: &str,
        read: Result<Option<AgentEntry>, agentmux_registry::Error>,
        must_exist: bool,
    ) {
        self.reads += 1;
        match read {
            Err(e) => {
                report(&format!("read of {id} failed: {e}"));
                self.torn_or_failed_reads += 1
            }
            Ok(None) if must_exist => {
                report(&format!("{id} missing"));
                self.missing_while_rewritten += 1
            }
            Ok(None) => {}
            Ok(Some(e)) => self.check_entry(id, &e),
        }
    }

    fn check_entry(&mut self, id: &str, e: &AgentEntry) {
        if e.agent_id != id {
            self.wrong_entry += 1;
        } else if e.auth_key != format!("{}:{}", e.agent_id, e.block_id) {
            report(&format!("torn entry: {e:?}"));
            self.torn_or_failed_reads += 1;
        }
    }
}

/// Describes one failure on stderr (the first few only).
fn report(what: &str) {
    use std::sync::atomic::{AtomicU32, Ordering};
    static REPORTED: AtomicU32 = AtomicU32::new(0);
    if REPORTED.fetch_add(1, Ordering::Relaxed) < 5 {
        eprintln!("stress worker {}: {what}", std::process::id());
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let [_, data_dir, worker, workers, millis] = &args[..] else {
        eprintln!("usage: registry-stress-worker <data_dir> <worker> <workers> <millis>");
        std::process::exit(2);
    };
    let worker: u32 = worker.parse().unwrap();
    let workers: u32 = workers.parse().unwrap();
    let deadline = Instant::now() + Duration::from_millis(millis.parse().unwrap());
    let registry = Registry::open(data_dir).unwrap();
    let agents = std::path::Path::new(data_dir).join("agents");
    let pid = std::process::id();
    let mut rng = Rng(u64::from(pid).wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
    let mut c = Counts::default();
    let mut seq: u64 = 1_000_000 * u64::from(worker + 1);
    let mut last_pinned = vec![0u64; PINNED_PER_WORKER as usize];
    let mut junk = 0u64;

    let write = |c: &mut Counts, id: &str, seq: u64| {
        // Each write is a registration of its own (nonce `seq`), so a
        // compare-and-remove below can name it.
        let written = registry.write(agentmux_registry::EntryFields {
            registration_nonce: seq,
            ..fields(
                id,
                "http://127.0.0.1:1",
                &seq.to_string(),
                pid,
                &key(id, seq),
            )
        });
        if written.is_err() {
            c.write_errors += 1;
        }
        written.is_ok()
    };

    while Instant::now() < deadline {
        c.ops += 1;
        seq += 1;
        match rng.below(100) {
            // Rewrite one of our pinned entries.
            0..=24 => {
                let k = rng.below(PINNED_PER_WORKER);
                if write(&mut c, &format!("pin-{worker}-{k}"), seq) {
                    last_pinned[k as usize] = seq;
                }
            }
            // Read anyone's pinned entry: it must always be there, whole.
            25..=49 => {
                let id = format!(
                    "pin-{}-{}",
                    rng.below(workers),
                    rng.below(PINNED_PER_WORKER)
                );
                let read = registry.lookup(&id);
                c.check(&id, read, true);
            }
            // List: every entry whole, every pinned id present.
            50..=57 => match registry.list() {
                Err(e) => {
                    report(&format!("list failed: {e}"));
                    c.torn_or_failed_reads += 1
                }
                Ok(entries) => {
                    c.reads += 1;
                    for e in &entries {
                        let id = e.agent_id.clone();
                        c.check_entry(&id, e);
                    }
                    let pinned = entries
                        .iter()
                        .filter(|e| e.agent_id.starts_with("pin-"))
                        .count();
                    let expected = (workers * PINNED_PER_WORKER) as usize;
                    if pinned < expected {
                        report(&format!("list shows {pinned} of {expected} pinned entries"));
                    }
                    c.missing_while_rewritten += expected.saturating_sub(pinned) as u64;
                }
            },
            // Shared ids: write, remove, compare-and-remove, read.
            58..=71 => {
                let id = format!("churn-{}", rng.below(CHURN_IDS));
                match rng.below(4) {
                    0 => {
                        write(&mut c, &id, seq);
                    }
                    1 => {
                        let _ = registry.remove(&id);
                    }
                    2 => {
                        if write(&mut c, &id, seq) {
                            let _ = registry.remove_owned(&id, &owner(pid, &key(&id, seq), seq));
                        }
                    }
                    _ => {
                        let read = registry.lookup(&id);
                        c.check(&id, read, false);
                    }
                }
            }
            // Sweep: nothing here is older than an hour, so only junk goes.
            72..=81 => {
                if let Err(e) = registry.cleanup_stale(Duration::from_secs(3600)) {
                    report(&format!("cleanup failed: {e}"));
                    c.torn_or_failed_reads += 1;
                }
            }
            // Plant junk a sweep must remove: malformed entries.
            82..=89 => {
                junk += 1;
                let _ = std::fs::write(
                    agents.join(format!("junk-{worker}-{junk}.json")),
                    "{\"agent_id\":",
                );
            }
            // Plant a stale entry, then re-register it while others sweep.
            _ => {
                let id = format!("rev-{worker}-{}", rng.below(REVIVED_PER_WORKER));
                let stale = SeedEntry {
                    block_id: "0".into(),
                    auth_key: key(&id, 0),
                    ..SeedEntry::new(&id, now_ms() - 5 * 3600 * 1000)
                };
                let _ = std::fs::write(agents.join(format!("{id}.json")), stale.to_json());
                if rng.below(2) == 0 {
                    let _ = registry.cleanup_stale(Duration::from_secs(3600));
                }
                if write(&mut c, &id, seq) && !matches!(registry.lookup(&id), Ok(Some(_))) {
                    c.revive_absent_right_after_write += 1;
                }
            }
        }
    }
    // End every revived id on a fresh registration, so the parent can check none was lost.
    for k in 0..REVIVED_PER_WORKER {
        seq += 1;
        write(&mut c, &format!("rev-{worker}-{k}"), seq);
    }
    println!(
        "{}",
        json!({
            "worker": worker,
            "ops": c.ops,
            "reads": c.reads,
            "torn_or_failed_reads": c.torn_or_failed_reads,
            "wrong_entry": c.wrong_entry,
            "missing_while_rewritten": c.missing_while_rewritten,
            "write_errors": c.write_errors,
            "revive_absent_right_after_write": c.revive_absent_right_after_write,
            "last_pinned": last_pinned,
        })
    );
}
