//! How `list` and `cleanup` scale: 1,000 to 1,000,000 entries on a tmpfs,
//! time per entry and the process's peak memory.
//!
//! `cargo bench -p agentmux-registry --bench scale` runs one child process
//! per size (so each peak is that size's alone) and prints a table. Each
//! child fills a fresh agents directory with N entries in the seed format,
//! then measures, in order:
//! - `listing`: a pass through `Registry::listing()` that counts entries
//!   without keeping them (the flat-memory path);
//! - `list`: `Registry::list()`, which returns all N entries sorted (its
//!   result alone grows with N);
//! - `cleanup`: `Registry::cleanup_stale` removing all N (every entry is
//!   stale), in batches from one call.
//!
//! Every size sweeps with the component's memory capped at 16 MiB, and
//! lists with it capped at 48 MiB: a listing keeps a hash of every name it
//! returned (so that it returns each once), which takes about 19 bytes an
//! entry and twice that while its table grows.
//! Peak memory is the child's `VmHWM` (peak resident set) after `listing`,
//! and again at the end. Set `AGENTMUX_SCALE_SIZES` (comma-separated) to
//! choose sizes and `AGENTMUX_BENCH_DIR` to choose where entries live
//! (default /dev/shm).

use std::path::PathBuf;
use std::time::{Duration, Instant};

use agentmux_registry::blocking::Registry;
use agentmux_registry::Options;

const CHILD: &str = "AGENTMUX_SCALE_CHILD";
/// The component's memory limit for sweeping, at every size.
const GUEST_MEMORY_CAP: usize = 16 << 20;
/// The component's memory limit for listing, at every size.
const GUEST_LISTING_MEMORY_CAP: usize = 48 << 20;

fn main() {
    if let Ok(n) = std::env::var(CHILD) {
        child(n.parse().expect("size"));
        return;
    }
    let sizes: Vec<usize> = std::env::var("AGENTMUX_SCALE_SIZES")
        .unwrap_or_else(|_| "1000,10000,100000,1000000".into())
        .split(',')
        .map(|s| s.trim().parse().expect("a size"))
        .collect();
    println!("| entries | listing µs/entry | list µs/entry | cleanup µs/entry | peak RSS after listing | peak RSS at end |");
    println!("|---:|---:|---:|---:|---:|---:|");
    for n in sizes {
        let out = std::process::Command::new(std::env::current_exe().unwrap())
            .env(CHILD, n.to_string())
            .output()
            .expect("running a child");
        assert!(
            out.status.success(),
            "size {n}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        print!("{}", String::from_utf8_lossy(&out.stdout));
    }
}

fn bench_root() -> PathBuf {
    match std::env::var_os("AGENTMUX_BENCH_DIR") {
        Some(dir) => PathBuf::from(dir),
        None if std::path::Path::new("/dev/shm").is_dir() => PathBuf::from("/dev/shm"),
        None => std::env::temp_dir(),
    }
}

/// Peak resident set size of this process, in MiB (Linux; 0 elsewhere).
fn peak_rss_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            let line = s.lines().find(|l| l.starts_with("VmHWM:"))?;
            line.split_whitespace().nth(1)?.parse::<f64>().ok()
        })
        .map_or(0.0, |kib| kib / 1024.0)
}

fn per_entry(d: Duration, n: usize) -> f64 {
    d.as_secs_f64() * 1e6 / n as f64
}

fn child(n: usize) {
    let root = tempfile::tempdir_in(bench_root()).unwrap();
    // The component's memory is capped (the default is 256 MiB): every size
    // must pass under the same small caps.
    let sweeper =
        Registry::open_with(root.path(), Options::new().memory_limit(GUEST_MEMORY_CAP)).unwrap();
    let registry = Registry::open_with(
        root.path(),
        Options::new().memory_limit(GUEST_LISTING_MEMORY_CAP),
    )
    .unwrap();
    let agents = root.path().join("agents");
    // Four days old: every entry is stale for the sweep below.
    let old = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
        - 4 * 24 * 3600 * 1000;
    for i in 0..n {
        let id = format!("agent-{i:07}");
        let json = format!(
            r#"{{"agent_id":"{id}","local_url":"http://127.0.0.1:4100","block_id":"block-1","pid":42,"updated_at":{old},"auth_key":"key-0123456789abcdef"}}"#
        );
        std::fs::write(agents.join(format!("{id}.json")), json).unwrap();
    }

    let start = Instant::now();
    let mut seen = 0;
    for batch in registry.listing() {
        seen += batch.unwrap().len();
    }
    let listing = start.elapsed();
    assert_eq!(seen, n);
    let peak_after_listing = peak_rss_mib();

    let start = Instant::now();
    let all = registry.list().unwrap();
    let list = start.elapsed();
    assert_eq!(all.len(), n);
    drop(all);

    let start = Instant::now();
    let removed = sweeper.cleanup_stale(Duration::from_secs(3600)).unwrap();
    let cleanup = start.elapsed();
    assert_eq!(removed as usize, n);

    println!(
        "| {n} | {:.1} | {:.1} | {:.1} | {:.0} MiB | {:.0} MiB |",
        per_entry(listing, n),
        per_entry(list, n),
        per_entry(cleanup, n),
        peak_after_listing,
        peak_rss_mib()
    );
}
