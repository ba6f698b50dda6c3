//! Reachability under renewal: how many lookups of live, registered agents
//! find nothing while their heartbeats run, at several beat intervals.
//!
//! Eight agents are registered through `Registration` with the beat under
//! test; two reader threads look them up in turn for the whole run, and a
//! sweeper removes entries older than three beats (the minimum safe age)
//! every 20 ms (one run at 1 ms goes without it, to tell the renewals'
//! misses from the sweeps'). A lookup that finds nothing, or another registration's
//! entry, is a miss: every agent is registered and live throughout.
//!
//! `cargo bench -p agentmux-registry --bench reachability` prints, per beat,
//! lookups, renewals, misses and misses per million lookups. Set
//! `AGENTMUX_REACH_SECS` for the seconds per beat (default 5) and
//! `AGENTMUX_BENCH_DIR` for where entries live (default /dev/shm when
//! present).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use agentmux_registry::{EntryFields, Registration, Registry};

const AGENTS: usize = 8;
const READERS: usize = 2;

fn bench_root() -> std::path::PathBuf {
    if let Some(dir) = std::env::var_os("AGENTMUX_BENCH_DIR") {
        return dir.into();
    }
    let shm = std::path::Path::new("/dev/shm");
    if shm.is_dir() {
        shm.into()
    } else {
        std::env::temp_dir()
    }
}

struct Outcome {
    lookups: u64,
    misses: u64,
    renewals: u64,
    /// Entries the sweeper removed: a live agent's entry swept because its
    /// renewals fell more than three beats behind (the driver renews one
    /// agent after another; at a 1 ms beat on a busy machine it cannot
    /// keep up). Misses that follow are the sweep's, not a renewal's.
    swept: u64,
}

fn run(beat: Duration, sweep: bool, length: Duration) -> Outcome {
    let tmp = tempfile::tempdir_in(bench_root()).unwrap();
    let registry = Registry::open(tmp.path()).unwrap();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let guards: Vec<Registration> = (0..AGENTS)
        .map(|i| {
            let fields = EntryFields {
                agent_id: format!("agent-{i}"),
                local_url: "http://127.0.0.1:1".into(),
                block_id: "b".into(),
                auth_key: "k".into(),
                ..EntryFields::default()
            };
            runtime
                .block_on(Registration::register(&registry, fields, beat))
                .unwrap()
        })
        .collect();
    let nonces: Arc<Vec<u64>> = Arc::new(guards.iter().map(|g| g.nonce()).collect());
    let stop = Arc::new(AtomicBool::new(false));
    let (lookups, misses) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let blocking = agentmux_registry::blocking::Registry::from(registry.clone());

    let readers: Vec<_> = (0..READERS)
        .map(|r| {
            let (registry, stop, nonces) = (blocking.clone(), stop.clone(), nonces.clone());
            let (lookups, misses) = (lookups.clone(), misses.clone());
            std::thread::spawn(move || {
                let mut i = r;
                while !stop.load(Ordering::Relaxed) {
                    let agent = i % AGENTS;
                    let found = registry.lookup(&format!("agent-{agent}")).unwrap();
                    if found.map(|e| e.registration_nonce) != Some(nonces[agent]) {
                        misses.fetch_add(1, Ordering::Relaxed);
                    }
                    lookups.fetch_add(1, Ordering::Relaxed);
                    i += 1;
                }
            })
        })
        .collect();
    let sweeper = {
        let (registry, stop) = (blocking.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut swept = 0;
            while sweep && !stop.load(Ordering::Relaxed) {
                swept += registry.cleanup_stale(beat * 3).unwrap();
                std::thread::sleep(Duration::from_millis(20));
            }
            swept
        })
    };

    // Renewals are counted by the entries' time stamps moving on.
    let started = Instant::now();
    let mut renewals = 0u64;
    let mut last: Vec<u64> = vec![0; AGENTS];
    while started.elapsed() < length {
        for (i, seen) in last.iter_mut().enumerate() {
            if let Some(entry) = blocking.lookup(&format!("agent-{i}")).unwrap() {
                if entry.updated_at > *seen {
                    renewals += u64::from(*seen != 0);
                    *seen = entry.updated_at;
                }
            }
        }
        std::thread::sleep(beat.min(Duration::from_millis(50)));
    }
    stop.store(true, Ordering::Relaxed);
    for reader in readers {
        reader.join().unwrap();
    }
    let swept = sweeper.join().unwrap();
    drop(guards);
    Outcome {
        lookups: lookups.load(Ordering::Relaxed),
        misses: misses.load(Ordering::Relaxed),
        renewals,
        swept,
    }
}

fn main() {
    // `cargo bench` passes `--bench`; `cargo test --benches` does not run
    // this harness-less bench for long.
    let secs: u64 = std::env::var("AGENTMUX_REACH_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(5);
    let length = if std::env::args().any(|a| a == "--bench") {
        Duration::from_secs(secs)
    } else {
        Duration::from_millis(300)
    };
    println!(
        "{AGENTS} agents, {READERS} reader threads, a sweep at 3 beats every 20 ms, {} s per beat",
        length.as_secs_f64()
    );
    println!("beat      sweeps  lookups   renewals   swept   misses   misses per million");
    for (beat_ms, sweep) in [(1u64, false), (1, true), (5, true), (50, true), (500, true)] {
        let o = run(Duration::from_millis(beat_ms), sweep, length);
        println!(
            "{:<8}  {:<6}  {:>8}  {:>9}  {:>6}  {:>7}  {:>10.1}",
            format!("{beat_ms} ms"),
            if sweep { "yes" } else { "no" },
            o.lookups,
            o.renewals,
            o.swept,
            o.misses,
            o.misses as f64 * 1e6 / o.lookups.max(1) as f64
        );
    }
}
