//! Cross-process churn: registrations taken over, dropped and made again in
//! several processes while others look the ids up, judged against the owners'
//! own logs (`tests/churn_worker.rs` describes the logs).
//!
//! Roles, over [`IDS`] agent ids that every process shares:
//! - [`OWNERS`] owner processes register ids with a fast heartbeat, take them
//!   over from each other (and from themselves), keep each for a random short
//!   time, unregister them, and log every registration, unregistration and
//!   supersession they see, with `CLOCK_MONOTONIC` times (one clock for all
//!   processes);
//! - [`READERS`] reader processes look the ids up and log each answer;
//! - this test sweeps at the minimum safe age (three heartbeats) all along,
//!   and stops owner processes (SIGSTOP) for at most one heartbeat at a time.
//!
//! Judgments, made afterwards from the logs. A registration is live from the
//! end of its register call until its unregister call starts. The state of an
//! id is unsettled (and no lookup of it is judged) from the start of an
//! unregistration that removed an entry, or of a sweep that removed one,
//! until a registration begun after it has completed, or a lookup begun after
//! it has found the newest registration's entry.
//! - miss: a lookup found nothing while at every moment of its call some
//!   registration of the id was live and the id settled;
//! - older-owner answer: a lookup found registration R while a registration
//!   begun after R's completed had completed before the lookup began;
//! - takeback: a lookup found R after an earlier lookup (any reader) had found
//!   a registration begun after R's completed, with no unsettling in between;
//! - false supersede: an owner saw its registration X superseded with no other
//!   registration of the id begun before that and ended after X began, and no
//!   sweep that removed an entry meanwhile;
//! - lost: at the end, after everything settled, a registration its owner
//!   still holds and that is not superseded is not what a lookup finds.
//!
//! Length: `AGENTMUX_CHURN_SECS` seconds of churn (default 20), then about a
//! second to settle and judge. `AGENTMUX_CHURN_BEAT_MS` sets the heartbeat
//! (default 5 ms); the sweeps' age and the stops follow it. The logs go to
//! a temporary directory, or to `AGENTMUX_CHURN_LOGS` when set (kept).

use std::collections::HashMap;
use std::io::{BufRead as _, BufReader, Write as _};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use agentmux_registry::blocking::Registry;
use rustix::process::{kill_process, Pid, Signal};

const OWNERS: usize = 3;
const READERS: usize = 2;
const IDS: usize = 4;

/// Nanoseconds of `CLOCK_MONOTONIC`, the clock the workers log with.
fn now() -> u64 {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
    t.tv_sec as u64 * 1_000_000_000 + t.tv_nsec as u64
}

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

/// The workers; any still running when this is dropped (a failed assertion)
/// are continued and killed.
struct Children(Vec<Child>);

impl Drop for Children {
    fn drop(&mut self) {
        for child in &mut self.0 {
            if let Ok(None) = child.try_wait() {
                let _ = kill_process(Pid::from_child(child), Signal::CONT);
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }
}

struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

#[test]
fn live_registrations_are_always_found_under_churn() {
    let _heavy = agentmux_registry_tests::one_heavy_test_at_a_time();
    let secs = env_u64("AGENTMUX_CHURN_SECS", 20);
    let beat_ms = env_u64("AGENTMUX_CHURN_BEAT_MS", 5).max(1);
    let beat_ns = beat_ms * 1_000_000;
    let sweep_age = Duration::from_millis(3 * beat_ms);
    let settle_ns = (40 * beat_ns).max(300_000_000);

    let tmp = tempfile::tempdir().unwrap();
    let data_dir = tmp.path().join("data");
    let registry = Registry::open(&data_dir).unwrap();
    let logs = match std::env::var_os("AGENTMUX_CHURN_LOGS") {
        Some(dir) => std::path::PathBuf::from(dir),
        None => tmp.path().join("logs"),
    };
    std::fs::create_dir_all(&logs).unwrap();
    let log_of = |role: &str, n: usize| logs.join(format!("{role}-{n}.log"));

    let start = now();
    let end = start + secs * 1_000_000_000;
    let worker = || {
        let mut command = Command::new(env!("CARGO_BIN_EXE_registry-churn-worker"));
        command.stderr(Stdio::inherit());
        command
    };
    let mut children = Children(Vec::new());
    for n in 0..OWNERS {
        let child = worker()
            .arg("owner")
            .arg(&data_dir)
            .args([
                IDS.to_string(),
                n.to_string(),
                (beat_ms * 1000).to_string(),
                end.to_string(),
                settle_ns.to_string(),
            ])
            .arg(log_of("owner", n))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        children.0.push(child);
    }
    for n in 0..READERS {
        let child = worker()
            .arg("reader")
            .arg(&data_dir)
            .args([IDS.to_string(), n.to_string(), end.to_string()])
            .arg(log_of("reader", n))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        children.0.push(child);
    }
    let owner_pids: Vec<u32> = children.0[..OWNERS].iter().map(Child::id).collect();

    // The sweeper: at the minimum safe age, all along.
    let sweeper = {
        let registry = registry.clone();
        std::thread::spawn(move || {
            let mut sweeps = Sweeps::default();
            while now() < end {
                let t0 = now();
                let result = registry.cleanup_stale(sweep_age);
                let t1 = now();
                sweeps.count += 1;
                match result {
                    Ok(0) => {}
                    Ok(n) => {
                        sweeps.removed += n;
                        sweeps.removals.push((t0, t1));
                    }
                    Err(e) => sweeps.errors.push(e.to_string()),
                }
                std::thread::sleep(Duration::from_nanos(beat_ns / 2));
            }
            sweeps
        })
    };

    // Stop an owner now and then, for at most one heartbeat.
    let mut rng = Rng(start | 1);
    let (mut stops, mut longest_stop) = (0u64, 0u64);
    // This test's own log: `P <owner> <t0> <t1>` for each stop.
    let mut own_log = String::new();
    while now() < end {
        std::thread::sleep(Duration::from_micros(2000 + rng.below(18_000)));
        let owner = rng.below(OWNERS as u64) as usize;
        let pid = Pid::from_child(&children.0[owner]);
        let length = beat_ns / 4 + rng.below(beat_ns * 3 / 4);
        let t0 = now();
        kill_process(pid, Signal::STOP).unwrap();
        std::thread::sleep(Duration::from_nanos(length));
        kill_process(pid, Signal::CONT).unwrap();
        let t1 = now();
        longest_stop = longest_stop.max(t1 - t0);
        stops += 1;
        own_log.push_str(&format!("P {owner} {t0} {t1}\n"));
    }
    let sweeps = sweeper.join().unwrap();
    // ... and `W <t0> <t1>` for each sweep that removed an entry.
    for (t0, t1) in &sweeps.removals {
        own_log.push_str(&format!("W {t0} {t1}\n"));
    }
    std::fs::write(logs.join("test.log"), own_log).unwrap();

    // Every owner has settled and logged what it holds: look each id up.
    let (ready, readiness) = std::sync::mpsc::channel();
    for (n, child) in children.0[..OWNERS].iter_mut().enumerate() {
        let stdout = child.stdout.take().unwrap();
        let ready = ready.clone();
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = BufReader::new(stdout).read_line(&mut line);
            let _ = ready.send((n, line));
        });
    }
    for _ in 0..OWNERS {
        let (n, line) = readiness
            .recv_timeout(Duration::from_secs(60))
            .expect("an owner did not settle within a minute");
        assert_eq!(line.trim(), "ready", "owner {n} ended early");
    }
    let final_tokens: Vec<Option<String>> = (0..IDS)
        .map(|id| {
            registry
                .lookup(&format!("churn-{id}"))
                .unwrap()
                .map(|e| e.registration_nonce.to_string())
        })
        .collect();
    for child in &mut children.0[..OWNERS] {
        drop(child.stdin.take());
    }
    let deadline = now() + 60_000_000_000;
    for (n, child) in children.0.iter_mut().enumerate() {
        let status = loop {
            if let Some(status) = child.try_wait().unwrap() {
                break status;
            }
            assert!(now() < deadline, "worker {n} did not end within a minute");
            std::thread::sleep(Duration::from_millis(10));
        };
        assert!(status.success(), "worker {n} failed: {status}");
    }
    let left_behind = registry.list().unwrap().len();

    let run = Run::read(&logs, &owner_pids, &sweeps);
    let judged = run.judge(&final_tokens);
    let c = &judged.counts;
    let summary = format!(
        "churn: {secs}s, {OWNERS} owner and {READERS} reader processes on {IDS} ids, \
         beat {beat_ms} ms, sweeps at {} ms: lookups judged={} misses={} older_owner_answers={} \
         takebacks={} false_supersedes={} lost={} | wrong_entries={} lookup_errors={} \
         register_errors={} unregister_errors={} sweep_errors={} left_behind={left_behind} | \
         lookups={} unsettled={} registrations={} takeovers={} self_replacements={} \
         drops={} superseded_seen={} stops={stops} (longest {:.1} ms) sweeps={} swept={}",
        3 * beat_ms,
        c.judged,
        c.misses,
        c.older_owner_answers,
        c.takebacks,
        c.false_supersedes,
        c.lost,
        c.wrong_entries,
        c.lookup_errors,
        c.register_errors,
        c.unregister_errors,
        sweeps.errors.len(),
        c.lookups,
        c.unsettled,
        c.registrations,
        c.takeovers,
        c.self_replacements,
        c.drops,
        c.superseded_seen,
        longest_stop as f64 / 1e6,
        sweeps.count,
        sweeps.removed,
    );
    // Written to the real stderr so that it shows in CI logs on success too.
    let mut stderr = std::io::stderr().lock();
    let _ = writeln!(stderr, "{summary}");
    for example in judged.examples.iter() {
        let _ = writeln!(stderr, "  {example}");
    }
    if let Some(e) = sweeps.errors.first() {
        let _ = writeln!(stderr, "  first sweep error: {e}");
    }
    drop(stderr);

    // Enough happened for the judgments to mean something.
    let enough = [
        ("lookups judged", c.judged, 150 * secs),
        ("takeovers", c.takeovers, 3 * secs),
        ("drops", c.drops, 3 * secs),
        ("superseded_seen", c.superseded_seen, 3 * secs),
        ("stops", stops, 5 * secs),
    ];
    for (what, got, least) in enough {
        assert!(
            got >= least,
            "too little work: {what} {got} < {least}: {summary}"
        );
    }
    let must_be_zero = [
        ("misses", c.misses),
        ("older_owner_answers", c.older_owner_answers),
        ("takebacks", c.takebacks),
        ("false_supersedes", c.false_supersedes),
        ("lost", c.lost),
        ("wrong_entries", c.wrong_entries),
        ("lookup_errors", c.lookup_errors),
        ("register_errors", c.register_errors),
        ("unregister_errors", c.unregister_errors),
        ("sweep_errors", sweeps.errors.len() as u64),
        ("left_behind", left_behind as u64),
    ];
    let failed: Vec<String> = must_be_zero
        .iter()
        .filter(|(_, n)| *n != 0)
        .map(|(what, n)| format!("{what}={n}"))
        .collect();
    assert!(failed.is_empty(), "{}: {summary}", failed.join(" "));
}

#[derive(Default)]
struct Sweeps {
    count: u64,
    /// Entries removed, in all.
    removed: u64,
    /// When each sweep that removed an entry ran.
    removals: Vec<(u64, u64)>,
    errors: Vec<String>,
}

struct Reg {
    id: usize,
    owner: usize,
    token: String,
    auth_key: String,
    /// The register call.
    start: u64,
    end: u64,
    /// The unregister call, and whether it removed the entry (`None`: failed).
    unreg: Option<(u64, u64, Option<bool>)>,
    superseded_at: Option<u64>,
    /// At the end: whether it was superseded (`None`: not held then).
    final_superseded: Option<bool>,
}

struct Lookup {
    id: usize,
    t0: u64,
    t1: u64,
    /// The registration found, by index; `Err` for an entry no owner logged
    /// (or with the wrong fields).
    found: Option<Result<usize, String>>,
}

/// Everything the workers logged.
struct Run<'a> {
    regs: Vec<Reg>,
    /// Failed register calls: (id, t0, t1).
    register_errors: Vec<(usize, u64, u64)>,
    unregister_errors: u64,
    lookups: Vec<Lookup>,
    lookup_errors: u64,
    sweeps: &'a Sweeps,
    start: u64,
}

#[derive(Default)]
struct Counts {
    lookups: u64,
    judged: u64,
    /// Lookups not judged because the id was unsettled meanwhile.
    unsettled: u64,
    misses: u64,
    older_owner_answers: u64,
    takebacks: u64,
    false_supersedes: u64,
    lost: u64,
    wrong_entries: u64,
    lookup_errors: u64,
    register_errors: u64,
    unregister_errors: u64,
    registrations: u64,
    takeovers: u64,
    self_replacements: u64,
    drops: u64,
    superseded_seen: u64,
}

struct Judged {
    counts: Counts,
    /// A few violations, described.
    examples: Vec<String>,
}

fn num(field: Option<&str>, line: &str) -> u64 {
    field
        .and_then(|f| f.parse().ok())
        .unwrap_or_else(|| panic!("malformed log line {line:?}"))
}

/// Sorts and merges half-open intervals.
fn merge(mut intervals: Vec<(u64, u64)>) -> Vec<(u64, u64)> {
    intervals.retain(|(a, b)| a < b);
    intervals.sort_unstable();
    let mut merged: Vec<(u64, u64)> = Vec::with_capacity(intervals.len());
    for (a, b) in intervals {
        match merged.last_mut() {
            Some(last) if a <= last.1 => last.1 = last.1.max(b),
            _ => merged.push((a, b)),
        }
    }
    merged
}

/// `from` minus `minus`; both merged.
fn subtract(from: &[(u64, u64)], minus: &[(u64, u64)]) -> Vec<(u64, u64)> {
    let mut out = Vec::new();
    for &(mut a, b) in from {
        for &(c, d) in minus {
            if d <= a || c >= b {
                continue;
            }
            if c > a {
                out.push((a, c));
            }
            a = a.max(d);
            if a >= b {
                break;
            }
        }
        if a < b {
            out.push((a, b));
        }
    }
    out
}

/// Whether `[t0, t1]` lies within one of the merged `intervals`.
fn within(intervals: &[(u64, u64)], t0: u64, t1: u64) -> bool {
    let i = intervals.partition_point(|&(a, _)| a <= t0);
    i > 0 && t1 < intervals[i - 1].1
}

/// Whether `[t0, t1]` meets one of the merged `intervals`.
fn meets(intervals: &[(u64, u64)], t0: u64, t1: u64) -> bool {
    let i = intervals.partition_point(|&(_, b)| b <= t0);
    i < intervals.len() && intervals[i].0 <= t1
}

impl<'a> Run<'a> {
    fn read(logs: &Path, owner_pids: &[u32], sweeps: &'a Sweeps) -> Run<'a> {
        let mut run = Run {
            regs: Vec::new(),
            register_errors: Vec::new(),
            unregister_errors: 0,
            lookups: Vec::new(),
            lookup_errors: 0,
            sweeps,
            start: u64::MAX,
        };
        let mut by_token: HashMap<String, usize> = HashMap::new();
        for owner in 0..OWNERS {
            let text = std::fs::read_to_string(logs.join(format!("owner-{owner}.log"))).unwrap();
            for line in text.lines() {
                let mut f = line.split_whitespace();
                let kind = f.next();
                let reg_of = |token: Option<&str>| -> usize {
                    *by_token
                        .get(token.unwrap_or_default())
                        .unwrap_or_else(|| panic!("unknown registration in {line:?}"))
                };
                match kind {
                    Some("R") => {
                        let id = num(f.next(), line) as usize;
                        let token = f.next().unwrap().to_owned();
                        let auth_key = f.next().unwrap().to_owned();
                        let (start, end) = (num(f.next(), line), num(f.next(), line));
                        run.start = run.start.min(start);
                        by_token.insert(token.clone(), run.regs.len());
                        run.regs.push(Reg {
                            id,
                            owner,
                            token,
                            auth_key,
                            start,
                            end,
                            unreg: None,
                            superseded_at: None,
                            final_superseded: None,
                        });
                    }
                    Some("RE") => {
                        let id = num(f.next(), line) as usize;
                        run.register_errors
                            .push((id, num(f.next(), line), num(f.next(), line)));
                    }
                    Some("S") => {
                        let r = reg_of(f.next());
                        run.regs[r].superseded_at = Some(num(f.next(), line));
                    }
                    Some("U") => {
                        let r = reg_of(f.next());
                        let (t0, t1) = (num(f.next(), line), num(f.next(), line));
                        run.regs[r].unreg = Some((t0, t1, Some(num(f.next(), line) == 1)));
                    }
                    Some("UE") => {
                        let r = reg_of(f.next());
                        let (t0, t1) = (num(f.next(), line), num(f.next(), line));
                        run.regs[r].unreg = Some((t0, t1, None));
                        run.unregister_errors += 1;
                    }
                    Some("F") => {
                        let r = reg_of(f.next());
                        run.regs[r].final_superseded = Some(num(f.next(), line) == 1);
                    }
                    _ => panic!("malformed log line {line:?}"),
                }
            }
        }
        for reader in 0..READERS {
            let text = std::fs::read_to_string(logs.join(format!("reader-{reader}.log"))).unwrap();
            for line in text.lines() {
                let mut f = line.split_whitespace();
                match f.next() {
                    Some("L") => {
                        let id = num(f.next(), line) as usize;
                        let (t0, t1) = (num(f.next(), line), num(f.next(), line));
                        let token = f.next().unwrap();
                        let pid = num(f.next(), line) as u32;
                        let auth_key = f.next().unwrap();
                        let found = (token != "-").then(|| match by_token.get(token) {
                            Some(&r) => {
                                let reg = &run.regs[r];
                                if reg.id == id
                                    && reg.auth_key == auth_key
                                    && owner_pids[reg.owner] == pid
                                {
                                    Ok(r)
                                } else {
                                    Err(format!("{line:?}: not the fields registered"))
                                }
                            }
                            None => Err(format!("{line:?}: a token no owner logged")),
                        });
                        run.lookups.push(Lookup { id, t0, t1, found });
                    }
                    Some("LE") => run.lookup_errors += 1,
                    _ => panic!("malformed log line {line:?}"),
                }
            }
        }
        run
    }

    fn ms(&self, t: u64) -> String {
        format!("{:.3} ms", t.saturating_sub(self.start) as f64 / 1e6)
    }

    fn judge(&self, final_tokens: &[Option<String>]) -> Judged {
        let mut c = Counts {
            lookups: self.lookups.len() as u64,
            lookup_errors: self.lookup_errors,
            register_errors: self.register_errors.len() as u64,
            unregister_errors: self.unregister_errors,
            registrations: self.regs.len() as u64,
            ..Counts::default()
        };
        let mut examples = Vec::new();
        let mut example = |kind: &str, counter: u64, what: String| {
            if counter <= 3 {
                examples.push(format!("{kind}: {what}"));
            }
        };

        // Per id: registrations by start, with the earliest end of any begun
        // later (what settles the id after a time), and by end, with the
        // latest start of any ended so far (the newest registration then).
        let mut by_start: Vec<Vec<usize>> = vec![Vec::new(); IDS];
        for (r, reg) in self.regs.iter().enumerate() {
            by_start[reg.id].push(r);
        }
        let mut settle_suffix: Vec<Vec<u64>> = Vec::new();
        let mut by_end: Vec<Vec<usize>> = Vec::new();
        let mut newest_start: Vec<Vec<u64>> = Vec::new();
        for regs in &mut by_start {
            regs.sort_by_key(|&r| self.regs[r].start);
            let mut suffix = vec![u64::MAX; regs.len() + 1];
            for i in (0..regs.len()).rev() {
                suffix[i] = suffix[i + 1].min(self.regs[regs[i]].end);
            }
            settle_suffix.push(suffix);
            let mut ends = regs.clone();
            ends.sort_by_key(|&r| self.regs[r].end);
            let mut newest = Vec::with_capacity(ends.len());
            let mut max = 0;
            for &r in &ends {
                max = max.max(self.regs[r].start);
                newest.push(max);
            }
            by_end.push(ends);
            newest_start.push(newest);
        }
        // The latest start of the registrations completed before `t`: the
        // newest registration then.
        let newest_at = |id: usize, t: u64| -> u64 {
            let ended = by_end[id].partition_point(|&r| self.regs[r].end < t);
            if ended == 0 {
                0
            } else {
                newest_start[id][ended - 1]
            }
        };
        let mut lookups_of: Vec<Vec<usize>> = vec![Vec::new(); IDS];
        for (l, lookup) in self.lookups.iter().enumerate() {
            lookups_of[lookup.id].push(l);
        }
        for lookups in &mut lookups_of {
            lookups.sort_by_key(|&l| self.lookups[l].t0);
        }
        // When an id whose entry may have been removed up to `after` is
        // settled again: once a registration begun after that completed, or
        // once a lookup begun after it found the newest registration's entry
        // (which only a removal can take away again).
        let settled_after = |id: usize, after: u64| -> u64 {
            let i = by_start[id].partition_point(|&r| self.regs[r].start <= after);
            let registered = settle_suffix[id][i];
            let lookups = &lookups_of[id];
            let first = lookups.partition_point(|&l| self.lookups[l].t0 <= after);
            lookups[first..]
                .iter()
                .map(|&l| &self.lookups[l])
                .take_while(|l| l.t0 < registered)
                .find(
                    |l| matches!(l.found, Some(Ok(r)) if self.regs[r].start >= newest_at(id, l.t0)),
                )
                .map_or(registered, |l| l.t1)
        };

        // Unsettled times per id.
        let mut unsettled: Vec<Vec<(u64, u64)>> = vec![Vec::new(); IDS];
        for reg in &self.regs {
            if let Some((t0, t1, removed)) = reg.unreg {
                if removed != Some(false) {
                    unsettled[reg.id].push((t0, settled_after(reg.id, t1)));
                }
            }
        }
        for &(id, t0, t1) in &self.register_errors {
            unsettled[id].push((t0, settled_after(id, t1)));
        }
        for &(t0, t1) in &self.sweeps.removals {
            for (id, times) in unsettled.iter_mut().enumerate() {
                times.push((t0, settled_after(id, t1)));
            }
        }
        let unsettled: Vec<Vec<(u64, u64)>> = unsettled.into_iter().map(merge).collect();
        // When each id must be found: some registration live, and settled.
        let required: Vec<Vec<(u64, u64)>> = (0..IDS)
            .map(|id| {
                let live = merge(
                    by_start[id]
                        .iter()
                        .map(|&r| {
                            let reg = &self.regs[r];
                            (reg.end, reg.unreg.map_or(u64::MAX, |u| u.0))
                        })
                        .collect(),
                );
                subtract(&live, &unsettled[id])
            })
            .collect();

        // Lookups: misses, wrong entries, older-owner answers.
        let mut settled_lookups: Vec<Vec<(usize, usize)>> = vec![Vec::new(); IDS];
        for (l, lookup) in self.lookups.iter().enumerate() {
            let (id, t0, t1) = (lookup.id, lookup.t0, lookup.t1);
            let unsettled_then = meets(&unsettled[id], t0, t1);
            c.unsettled += u64::from(unsettled_then);
            if within(&required[id], t0, t1) {
                c.judged += 1;
                if lookup.found.is_none() {
                    c.misses += 1;
                    let holder = by_end[id].partition_point(|&r| self.regs[r].end <= t0);
                    let holder = &self.regs[by_end[id][holder - 1]];
                    example(
                        "miss",
                        c.misses,
                        format!(
                            "churn-{id} absent during [{}, {}] while live (newest: owner {}'s, registered at {})",
                            self.ms(t0),
                            self.ms(t1),
                            holder.owner,
                            self.ms(holder.end)
                        ),
                    );
                }
            }
            let r = match &lookup.found {
                None => continue,
                Some(Err(what)) => {
                    c.wrong_entries += 1;
                    example("wrong entry", c.wrong_entries, what.clone());
                    continue;
                }
                Some(Ok(r)) => *r,
            };
            if unsettled_then {
                continue;
            }
            settled_lookups[id].push((l, r));
            let found = &self.regs[r];
            let newest = newest_at(id, t0);
            if newest > found.end {
                c.older_owner_answers += 1;
                example(
                    "older-owner answer",
                    c.older_owner_answers,
                    format!(
                        "churn-{id} during [{}, {}]: owner {}'s registration of {}, replaced by one begun at {}",
                        self.ms(t0),
                        self.ms(t1),
                        found.owner,
                        self.ms(found.end),
                        self.ms(newest)
                    ),
                );
            }
        }

        // Takebacks: per id and settled stretch, an answer older than one
        // already seen.
        for (id, found) in settled_lookups.iter().enumerate() {
            let stretch = |t0: u64| unsettled[id].partition_point(|&(_, b)| b <= t0);
            let mut seen: Vec<(usize, u64, usize)> = found
                .iter()
                .map(|&(l, r)| (stretch(self.lookups[l].t0), self.lookups[l].t1, r))
                .collect();
            seen.sort_unstable();
            let mut asked: Vec<(usize, u64, usize)> = found
                .iter()
                .map(|&(l, r)| (stretch(self.lookups[l].t0), self.lookups[l].t0, r))
                .collect();
            asked.sort_unstable();
            let (mut i, mut newest, mut current) = (0, 0u64, usize::MAX);
            for &(s, t0, r) in &asked {
                if s != current {
                    current = s;
                    newest = 0;
                    while i < seen.len() && seen[i].0 < s {
                        i += 1;
                    }
                }
                while i < seen.len() && seen[i].0 == s && seen[i].1 < t0 {
                    newest = newest.max(self.regs[seen[i].2].start);
                    i += 1;
                }
                let reg = &self.regs[r];
                if newest > reg.end {
                    c.takebacks += 1;
                    example(
                        "takeback",
                        c.takebacks,
                        format!(
                            "churn-{id} at {}: owner {}'s registration of {} again, after one begun at {} was found",
                            self.ms(t0),
                            reg.owner,
                            self.ms(reg.end),
                            self.ms(newest)
                        ),
                    );
                }
            }
        }

        // Owners' own view: supersessions, and what they hold at the end.
        for (x, reg) in self.regs.iter().enumerate() {
            let Some(t) = reg.superseded_at else { continue };
            c.superseded_seen += 1;
            let successor = by_start[reg.id].iter().any(|&y| {
                let other = &self.regs[y];
                y != x && other.end > reg.start && other.start < t
            }) || self
                .register_errors
                .iter()
                .any(|&(id, t0, t1)| id == reg.id && t1 > reg.start && t0 < t);
            let swept = self
                .sweeps
                .removals
                .iter()
                .any(|&(t0, t1)| t1 > reg.start && t0 < t);
            if !successor && !swept {
                c.false_supersedes += 1;
                example(
                    "false supersede",
                    c.false_supersedes,
                    format!(
                        "owner {}'s registration of churn-{} (at {}) saw itself superseded at {}, with no successor",
                        reg.owner,
                        reg.id,
                        self.ms(reg.end),
                        self.ms(t)
                    ),
                );
            }
        }
        for reg in &self.regs {
            if reg.final_superseded != Some(false) {
                continue;
            }
            if final_tokens[reg.id].as_deref() != Some(reg.token.as_str()) {
                c.lost += 1;
                example(
                    "lost",
                    c.lost,
                    format!(
                        "owner {}'s registration of churn-{} (at {}) is held and not superseded, but a lookup finds {:?}",
                        reg.owner,
                        reg.id,
                        self.ms(reg.end),
                        final_tokens[reg.id]
                    ),
                );
            }
        }

        // What happened, for the summary.
        for regs in &by_end {
            for (i, &x) in regs.iter().enumerate() {
                let reg = &self.regs[x];
                // The newest registration completed before this one began.
                let before = regs[..i].partition_point(|&p| self.regs[p].end < reg.start);
                let Some(&p) = regs[..before].last() else {
                    continue;
                };
                let prev = &self.regs[p];
                let held = prev.unreg.is_none_or(|u| u.0 > reg.start)
                    && prev.superseded_at.is_none_or(|s| s > reg.start);
                if held && prev.owner != reg.owner {
                    c.takeovers += 1;
                } else if held {
                    c.self_replacements += 1;
                }
            }
        }
        c.drops = self
            .regs
            .iter()
            .filter(|reg| matches!(reg.unreg, Some((_, _, Some(true)))))
            .count() as u64;
        Judged {
            counts: c,
            examples,
        }
    }
}
