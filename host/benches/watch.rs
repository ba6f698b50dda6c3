//! The change feed and lookups served from notifications (Linux):
//!
//! - how long after another process's write completes a watcher has the
//!   change (median and p99 over 1,000 writes);
//! - the CPU an idle watcher uses;
//! - the memory the feed holds per entry.
//!
//! The lookup and list ratios against the native baseline are in the
//! `registry` bench ("lookup hit" is served from notifications there; the
//! "reading the file" rows are the same registry with that turned off).

use std::io::{BufRead, Write};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use agentmux_registry::blocking::Registry;
use agentmux_registry::watch::{Change, Start};

fn now_ns() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos()
}

fn bench_root() -> std::path::PathBuf {
    match std::env::var_os("AGENTMUX_BENCH_DIR") {
        Some(dir) => dir.into(),
        None if std::path::Path::new("/dev/shm").is_dir() => "/dev/shm".into(),
        None => std::env::temp_dir(),
    }
}

/// The writer process: for each line on stdin, writes `probe` (the line as
/// its block id), then prints the time the write returned.
fn writer(data_dir: &str) {
    let registry = Registry::open(data_dir).unwrap();
    let mut out = std::io::stdout().lock();
    for line in std::io::stdin().lock().lines() {
        let k = line.unwrap();
        registry
            .write(agentmux_registry::EntryFields {
                agent_id: "probe".into(),
                local_url: "http://127.0.0.1:1".into(),
                block_id: k,
                ..Default::default()
            })
            .unwrap();
        writeln!(out, "{}", now_ns()).unwrap();
        out.flush().unwrap();
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

/// Latency from a write completed in another process to its change here.
fn latency() {
    let tmp = tempfile::tempdir_in(bench_root()).unwrap();
    let registry = Registry::open(tmp.path()).unwrap();
    let mut watch = registry.watch(Start::Now).unwrap();
    let mut child = std::process::Command::new(std::env::current_exe().unwrap())
        .env("AGENTMUX_BENCH_CHILD", "writer")
        .env("AGENTMUX_BENCH_DATA", tmp.path())
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut ask = child.stdin.take().unwrap();
    let mut done = std::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let mut latencies = Vec::new();
    for k in 0..1_000 {
        writeln!(ask, "{k}").unwrap();
        ask.flush().unwrap();
        // Waits for the change, then for the writer to say when its write
        // returned: the change cannot have come before the write completed.
        loop {
            if let Change::Put(entry) = watch.next().unwrap().unwrap() {
                if entry.block_id == k.to_string() {
                    break;
                }
            }
        }
        let seen = now_ns();
        let written: u128 = done.next().unwrap().unwrap().parse().unwrap();
        latencies.push(Duration::from_nanos(seen.saturating_sub(written) as u64));
    }
    drop(ask);
    child.wait().unwrap();
    latencies.sort();
    println!(
        "event latency after another process's write returned: median {:?}, p99 {:?}, max {:?} (1,000 writes; {:?})",
        percentile(&latencies, 0.5),
        percentile(&latencies, 0.99),
        latencies[latencies.len() - 1],
        watch.notifications()
    );
}

/// This process's CPU time (user and system), from `/proc/self/stat`, in
/// clock ticks of 10 ms.
fn process_cpu() -> Duration {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap();
    let after_comm = &stat[stat.rfind(')').unwrap() + 2..];
    let fields: Vec<&str> = after_comm.split_whitespace().collect();
    // utime and stime are fields 14 and 15 overall, 12 and 13 after comm.
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    Duration::from_millis(ticks * 10)
}

/// The CPU a watcher waiting for changes uses: this process's CPU over a
/// quiet window with a registry open, without and then with a watch.
fn idle_cpu() {
    let tmp = tempfile::tempdir_in(bench_root()).unwrap();
    let registry = Registry::open(tmp.path()).unwrap();
    registry.lookup("warm").unwrap();
    let window = Duration::from_secs(5);
    let quiet = |what: &str| {
        let before = process_cpu();
        std::thread::sleep(window);
        let used = process_cpu() - before;
        println!(
            "idle, {what}: {used:?} CPU over {window:?} ({:.2}% of a core)",
            used.as_secs_f64() / window.as_secs_f64() * 100.0
        );
    };
    quiet("a registry open, no watch");
    let stream_registry = registry.as_async().clone();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let stream = runtime.block_on(stream_registry.watch(Start::Now)).unwrap();
    quiet("the same with an async watch waiting");
    drop(stream);
}

/// This process's resident memory, from `/proc/self/status`.
fn rss_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    let kib: u64 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
    kib * 1024
}

/// Memory per entry a feed holds (lookups served from notifications).
fn memory_per_entry() {
    const N: usize = 20_000;
    let tmp = tempfile::tempdir_in(bench_root()).unwrap();
    let registry = Registry::open(tmp.path()).unwrap();
    for i in 0..N {
        registry
            .write(agentmux_registry::EntryFields {
                agent_id: format!("agent-{i:06}"),
                local_url: "http://127.0.0.1:4100".into(),
                block_id: "block-1".into(),
                auth_key: "key-0123456789abcdef".into(),
                ..Default::default()
            })
            .unwrap();
    }
    // Warm: one lookup reading the file, so only the feed differs below.
    let reading = Registry::open_with(
        tmp.path(),
        agentmux_registry::Options::new().lookups_from_notifications(false),
    )
    .unwrap();
    reading.lookup("agent-000001").unwrap();
    let before = rss_bytes();
    assert!(registry.serve_lookups_from_notifications_now());
    let after = rss_bytes();
    println!(
        "memory the feed holds: {} bytes per entry ({N} entries, RSS {} -> {} KiB)",
        (after.saturating_sub(before)) / N as u64,
        before / 1024,
        after / 1024
    );
}

fn main() {
    if std::env::var("AGENTMUX_BENCH_CHILD").is_ok_and(|v| v == "writer") {
        return writer(&std::env::var("AGENTMUX_BENCH_DATA").unwrap());
    }
    if !cfg!(target_os = "linux") {
        println!("the watch bench measures inotify: Linux only");
        return;
    }
    latency();
    idle_cpu();
    memory_per_entry();
}
