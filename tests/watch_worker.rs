//! One process of the watch test (`tests/all/watch.rs`): creates, renews,
//! removes and sweeps entries of a data dir shared with other workers.
//!
//! Usage: `registry-watch-worker <data_dir> <worker> <operations>`
//!
//! Ids: `own-{w}-{k}` (this worker's, registered and renewed under its own
//! nonce) and `any-{k}` (written and removed by every worker). One in 50
//! operations sweeps entries older than 20 ms, whoever wrote them. It prints
//! the number of operations that failed (there should be none).

use agentmux_registry::blocking::Registry;
use agentmux_registry_tests::fields;

fn main() {
    let args: Vec<String> = std::env::args().collect();
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
