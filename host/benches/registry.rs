//! The sandbox tax: each registry operation through the component (public
//! `Registry` API) against a native in-process implementation with the same
//! semantics, measured side by side in one run.
//!
//! `cargo bench -p agentmux-registry` prints, per operation and size, both
//! medians and `ratio = component / native`. Set `AGENTMUX_BENCH_DIR` to
//! choose where the entries live (default: /dev/shm when present, a tmpfs).

use std::hint::black_box;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use agentmux_registry::blocking::Registry;

mod native {
    //! The baseline: the registry's semantics written directly against the
    //! OS for this benchmark. It shares the pure rules (id mapping, entry
    //! format and limits) with the component through `agentmux-registry-core`;
    //! its file handling is its own, mirroring the component's: a claim file
    //! held around every change, temp + rename writes, stat-before-open,
    //! identity-checked removals, listings that compare the directory's
    //! modification time before and after and return each name once.
    use std::fs::File;
    use std::io::Read;
    use std::os::fd::OwnedFd;
    use std::path::Path;

    use agentmux_registry_core::entry::MAX_ENTRY_FILE_BYTES;
    use agentmux_registry_core::name::entry_file_name;
    use agentmux_registry_core::{Entry, EntryFields};
    use rustix::fs::{AtFlags, FileType, Mode, OFlags};

    pub struct Native {
        dir: OwnedFd,
    }

    struct Claim<'n> {
        native: &'n Native,
        name: String,
        ino: u64,
    }

    impl Claim<'_> {
        fn is_held(&self) -> bool {
            self.native.ino_at(&self.name) == Some(self.ino)
        }
    }

    impl Drop for Claim<'_> {
        fn drop(&mut self) {
            if self.is_held() {
                let _ = rustix::fs::unlinkat(&self.native.dir, &self.name, AtFlags::empty());
            }
        }
    }

    #[allow(clippy::large_enum_variant)] // as the component's own `Slot`
    enum Slot {
        Missing,
        Other,
        File {
            entry: Option<Entry>,
            ino: u64,
            current: bool,
        },
    }

    fn now_ms() -> u64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as u64
    }

    impl Native {
        pub fn open(agents: &Path) -> Native {
            let dir = rustix::fs::open(
                agents,
                OFlags::DIRECTORY | OFlags::RDONLY | OFlags::CLOEXEC,
                Mode::empty(),
            )
            .unwrap();
            Native { dir }
        }

        fn inspect(&self, name: &str) -> Slot {
            let Ok(st) = rustix::fs::statat(&self.dir, name, AtFlags::SYMLINK_NOFOLLOW) else {
                return Slot::Missing;
            };
            if FileType::from_raw_mode(st.st_mode) != FileType::RegularFile {
                return Slot::Other;
            }
            let Ok(fd) = rustix::fs::openat(
                &self.dir,
                name,
                OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                Mode::empty(),
            ) else {
                return Slot::Missing;
            };
            let st = rustix::fs::fstat(&fd).unwrap();
            if FileType::from_raw_mode(st.st_mode) != FileType::RegularFile {
                return Slot::Other;
            }
            let mut bytes = Vec::with_capacity(st.st_size as usize);
            File::from(fd)
                .take(MAX_ENTRY_FILE_BYTES + 1)
                .read_to_end(&mut bytes)
                .unwrap();
            let entry = if bytes.len() as u64 > MAX_ENTRY_FILE_BYTES {
                None
            } else {
                Entry::parse(&bytes)
            };
            Slot::File {
                entry,
                ino: st.st_ino,
                current: st.st_nlink > 0,
            }
        }

        /// Takes `name`'s claim (no waiting: the benchmark has no contention).
        fn claim(&self, name: &str) -> Claim<'_> {
            let claim = agentmux_registry_core::name::claim_file_name(name);
            let fd = rustix::fs::openat(
                &self.dir,
                &claim,
                OFlags::CREATE | OFlags::EXCL | OFlags::WRONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                Mode::from_raw_mode(0o600),
            )
            .unwrap();
            let ino = rustix::fs::fstat(&fd).unwrap().st_ino;
            Claim {
                native: self,
                name: claim,
                ino,
            }
        }

        fn ino_at(&self, name: &str) -> Option<u64> {
            rustix::fs::statat(&self.dir, name, AtFlags::SYMLINK_NOFOLLOW)
                .ok()
                .map(|st| st.st_ino)
        }

        pub fn write(
            &self,
            agent_id: &str,
            local_url: &str,
            block_id: &str,
            pid: u32,
            auth_key: &str,
        ) -> Entry {
            let name = entry_file_name(agent_id).unwrap();
            let fields = EntryFields {
                agent_id: agent_id.into(),
                local_url: local_url.into(),
                block_id: block_id.into(),
                pid,
                auth_key: auth_key.into(),
                ..EntryFields::default()
            };
            fields.check().unwrap();
            let claim = self.claim(&name);
            if let Slot::File { entry: Some(e), .. } = self.inspect(&name) {
                assert_eq!(e.agent_id, agent_id, "conflict");
            }
            let entry = fields.into_entry(now_ms());
            let temp = format!(".tmp-{:016x}", rand_u64());
            let fd = rustix::fs::openat(
                &self.dir,
                &temp,
                OFlags::CREATE | OFlags::EXCL | OFlags::WRONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                Mode::from_raw_mode(0o600),
            )
            .unwrap();
            rustix::io::write(&fd, &entry.to_json()).unwrap();
            drop(fd);
            assert!(claim.is_held());
            rustix::fs::renameat(&self.dir, &temp, &self.dir, &name).unwrap();
            entry
        }

        pub fn lookup(&self, agent_id: &str) -> Option<Entry> {
            match self.inspect(&entry_file_name(agent_id).unwrap()) {
                Slot::File { entry: Some(e), .. } if e.agent_id == agent_id => Some(e),
                _ => None,
            }
        }

        pub fn remove(&self, agent_id: &str) -> bool {
            let name = entry_file_name(agent_id).unwrap();
            let claim = self.claim(&name);
            match self.inspect(&name) {
                Slot::Missing => false,
                Slot::File { entry: Some(e), .. } if e.agent_id != agent_id => false,
                _ => {
                    claim.is_held()
                        && rustix::fs::unlinkat(&self.dir, &name, AtFlags::empty()).is_ok()
                }
            }
        }

        fn names(&self) -> Vec<String> {
            let mut dir = rustix::fs::Dir::read_from(&self.dir).unwrap();
            let mut names = Vec::new();
            while let Some(Ok(e)) = dir.read() {
                if let Ok(name) = e.file_name().to_str() {
                    names.push(name.to_owned());
                }
            }
            names
        }

        fn modified(&self) -> (i64, u64) {
            let st = rustix::fs::fstat(&self.dir).unwrap();
            (st.st_mtime, st.st_mtime_nsec as u64)
        }

        pub fn list(&self) -> Vec<Entry> {
            use std::hash::{BuildHasher, RandomState};
            let mut returned = std::collections::HashSet::new();
            let key = RandomState::new();
            let began = self.modified();
            let names = self.names();
            // One pass suffices when nothing changed meanwhile (no contention
            // here), as in the component.
            assert_eq!(self.modified(), began);
            let mut out: Vec<Entry> = names
                .into_iter()
                .filter(|n| is_entry_name(n))
                .filter(|n| returned.insert(key.hash_one(n)))
                .filter_map(|n| match self.inspect(&n) {
                    Slot::File { entry: Some(e), .. }
                        if entry_file_name(&e.agent_id).as_deref() == Ok(n.as_str()) =>
                    {
                        Some(e)
                    }
                    _ => None,
                })
                .collect();
            out.sort_by(|a, b| a.agent_id.cmp(&b.agent_id));
            out
        }

        pub fn cleanup_stale(&self, max_age_ms: u64) -> u64 {
            let cutoff = now_ms().saturating_sub(max_age_ms);
            let mut removed = 0;
            for name in self.names().into_iter().filter(|n| is_entry_name(n)) {
                let claim = self.claim(&name);
                if let Slot::File {
                    entry,
                    ino,
                    current: true,
                } = self.inspect(&name)
                {
                    if entry.is_none_or(|e| e.updated_at < cutoff)
                        && claim.is_held()
                        && self.ino_at(&name) == Some(ino)
                        && rustix::fs::unlinkat(&self.dir, &name, AtFlags::empty()).is_ok()
                    {
                        removed += 1;
                    }
                }
            }
            removed
        }
    }

    /// A name that can hold an entry (the rule the component follows).
    fn is_entry_name(name: &str) -> bool {
        name.ends_with(agentmux_registry_core::name::ENTRY_SUFFIX) && !name.starts_with('.')
    }

    fn rand_u64() -> u64 {
        use std::hash::{BuildHasher, RandomState};
        RandomState::new().hash_one(std::time::Instant::now())
    }
}

/// The owner pid every entry is written with: 0 (unknown), so that neither
/// side looks up a process (the host records a live owner's start time,
/// which the native side has no reason to).
const PID: u32 = 0;

fn bench_root() -> PathBuf {
    if let Some(dir) = std::env::var_os("AGENTMUX_BENCH_DIR") {
        return PathBuf::from(dir);
    }
    if Path::new("/dev/shm").is_dir() {
        return PathBuf::from("/dev/shm");
    }
    std::env::temp_dir()
}

/// Median of `samples` per-op times, each a batch of `batch` calls.
fn median_per_op(samples: usize, batch: usize, mut run_batch: impl FnMut(usize)) -> Duration {
    let mut times: Vec<Duration> = (0..samples)
        .map(|s| {
            let start = Instant::now();
            run_batch(s);
            start.elapsed() / batch as u32
        })
        .collect();
    times.sort();
    times[times.len() / 2]
}

fn fmt(d: Duration) -> String {
    let ns = d.as_nanos() as f64;
    if ns >= 1e6 {
        format!("{:.2} ms", ns / 1e6)
    } else {
        format!("{:.1} µs", ns / 1e3)
    }
}

fn report(op: &str, n: usize, native: Duration, component: Duration) {
    let ratio = component.as_secs_f64() / native.as_secs_f64();
    println!(
        "{op:<30} n={n:<6} native {:>10}   component {:>10}   ratio {ratio:.2}x",
        fmt(native),
        fmt(component)
    );
}

struct Pair {
    _tmp: tempfile::TempDir,
    native: native::Native,
    component: Registry,
    /// The same directory, every lookup and listing reading it.
    reading: Registry,
}

/// Two data dirs with `n` entries each: one for each implementation.
fn populate(n: usize) -> (Pair, tempfile::TempDir) {
    let root = bench_root();
    let component_dir = tempfile::tempdir_in(&root).unwrap();
    let native_dir = tempfile::tempdir_in(&root).unwrap();
    let component = Registry::open(component_dir.path()).unwrap();
    let reading = Registry::open_with(
        component_dir.path(),
        agentmux_registry::Options::new().lookups_from_notifications(false),
    )
    .unwrap();
    let agents = native_dir.path().join("agents");
    std::fs::create_dir(&agents).unwrap();
    let native = native::Native::open(&agents);
    for i in 0..n {
        let id = format!("agent-{i:06}");
        native.write(
            &id,
            "http://127.0.0.1:4100",
            "block-1",
            PID,
            "key-0123456789abcdef",
        );
        component
            .write(bench_fields(
                &id,
                "http://127.0.0.1:4100",
                "block-1",
                PID,
                "key-0123456789abcdef",
            ))
            .unwrap();
    }
    (
        Pair {
            _tmp: native_dir,
            native,
            component,
            reading,
        },
        component_dir,
    )
}

fn bench_ops(n: usize) {
    let (p, _component_dir) = populate(n);
    // The steady state: entries already read (a first lookup would start
    // that in the background, reading the files meanwhile).
    let served = p.component.serve_lookups_from_notifications_now();
    println!("lookups served from notifications: {served}");
    let ids: Vec<String> = (0..n).map(|i| format!("agent-{i:06}")).collect();
    let batch = 200;
    let samples = 41;
    let pick = |s: usize, k: usize| &ids[(s * batch + k * 7919) % n];

    let nat = median_per_op(samples, batch, |s| {
        for k in 0..batch {
            black_box(p.native.write(
                pick(s, k),
                "http://127.0.0.1:4100",
                "block-2",
                PID,
                "key-0123456789abcdef",
            ));
        }
    });
    let com = median_per_op(samples, batch, |s| {
        for k in 0..batch {
            black_box(
                p.component
                    .write(bench_fields(
                        pick(s, k),
                        "http://127.0.0.1:4100",
                        "block-2",
                        PID,
                        "key-0123456789abcdef",
                    ))
                    .unwrap(),
            );
        }
    });
    report("write", n, nat, com);

    // The fixed cost of one call into the component: a call that does no I/O.
    let nat = median_per_op(samples, batch, |s| {
        for k in 0..batch {
            black_box(agentmux_registry_core::name::entry_file_name(pick(s, k)).unwrap());
        }
    });
    let com = median_per_op(samples, batch, |s| {
        for k in 0..batch {
            black_box(p.component.entry_file_name(pick(s, k)).unwrap());
        }
    });
    report("null call", n, nat, com);

    let nat = median_per_op(samples, batch, |s| {
        for k in 0..batch {
            assert!(black_box(p.native.lookup(pick(s, k))).is_some());
        }
    });
    let com = median_per_op(samples, batch, |s| {
        for k in 0..batch {
            assert!(black_box(p.component.lookup(pick(s, k)).unwrap()).is_some());
        }
    });
    report("lookup hit", n, nat, com);
    let read = median_per_op(samples, batch, |s| {
        for k in 0..batch {
            assert!(black_box(p.reading.lookup(pick(s, k)).unwrap()).is_some());
        }
    });
    report("lookup hit, reading the file", n, nat, read);

    let nat = median_per_op(samples, batch, |s| {
        for k in 0..batch {
            assert!(black_box(p.native.lookup(&format!("missing-{s}-{k}"))).is_none());
        }
    });
    let com = median_per_op(samples, batch, |s| {
        for k in 0..batch {
            assert!(black_box(p.component.lookup(&format!("missing-{s}-{k}")).unwrap()).is_none());
        }
    });
    report("lookup miss", n, nat, com);
    let read = median_per_op(samples, batch, |s| {
        for k in 0..batch {
            assert!(black_box(p.reading.lookup(&format!("missing-{s}-{k}")).unwrap()).is_none());
        }
    });
    report("lookup miss, reading the file", n, nat, read);

    // Remove: each sample removes `batch` entries, re-created untimed after it.
    let mut nat_times = Vec::new();
    let mut com_times = Vec::new();
    for s in 0..samples {
        let victims: Vec<&String> = (0..batch).map(|k| &ids[(s * batch + k) % n]).collect();
        let start = Instant::now();
        for id in &victims {
            assert!(p.native.remove(id));
        }
        nat_times.push(start.elapsed() / batch as u32);
        let start = Instant::now();
        for id in &victims {
            assert!(p.component.remove(id).unwrap());
        }
        com_times.push(start.elapsed() / batch as u32);
        for id in &victims {
            p.native.write(
                id,
                "http://127.0.0.1:4100",
                "block-1",
                PID,
                "key-0123456789abcdef",
            );
            p.component
                .write(bench_fields(
                    id,
                    "http://127.0.0.1:4100",
                    "block-1",
                    PID,
                    "key-0123456789abcdef",
                ))
                .unwrap();
        }
    }
    nat_times.sort();
    com_times.sort();
    report("remove", n, nat_times[samples / 2], com_times[samples / 2]);

    let scans = if n >= 10_000 { 9 } else { 21 };
    let nat = median_per_op(scans, 1, |_| {
        assert_eq!(black_box(p.native.list()).len(), n)
    });
    let com = median_per_op(scans, 1, |_| {
        assert_eq!(black_box(p.component.list().unwrap()).len(), n)
    });
    report("list", n, nat, com);
    let read = median_per_op(scans, 1, |_| {
        assert_eq!(black_box(p.reading.list().unwrap()).len(), n)
    });
    report("list, reading the directory", n, nat, read);

    let nat = median_per_op(scans, 1, |_| {
        assert_eq!(p.native.cleanup_stale(3_600_000), 0)
    });
    let com = median_per_op(scans, 1, |_| {
        assert_eq!(
            p.component
                .cleanup_stale(Duration::from_secs(3600))
                .unwrap(),
            0
        )
    });
    report("cleanup", n, nat, com);
}

/// In a child process: open a registry and complete one call, print the time.
/// With `compile`, the component is compiled in the process (as before this
/// crate precompiled it at build time); needs the `custom-components` feature.
fn child_open(compile: bool) {
    let tmp = tempfile::tempdir_in(bench_root()).unwrap();
    let start = Instant::now();
    let registry = if compile {
        #[cfg(feature = "custom-components")]
        {
            let options =
                agentmux_registry::Options::new().component(agentmux_registry::component_bytes());
            Registry::open_with(tmp.path(), options).unwrap()
        }
        #[cfg(not(feature = "custom-components"))]
        {
            println!("0");
            return;
        }
    } else {
        Registry::open(tmp.path()).unwrap()
    };
    registry.lookup("a").unwrap();
    println!("{}", start.elapsed().as_nanos());
}

/// Open + first call in a fresh process, `runs` times; the median.
fn fresh_process_open(runs: usize, compile: bool) -> Duration {
    let exe = std::env::current_exe().unwrap();
    let mut times: Vec<Duration> = (0..runs)
        .map(|_| {
            let mode = if compile { "open-compiling" } else { "open" };
            let out = std::process::Command::new(&exe)
                .env("AGENTMUX_BENCH_CHILD", mode)
                .output()
                .unwrap();
            let nanos: u64 = String::from_utf8_lossy(&out.stdout).trim().parse().unwrap();
            Duration::from_nanos(nanos)
        })
        .collect();
    times.sort();
    times[runs / 2]
}

fn bench_open() {
    if cfg!(feature = "custom-components") {
        println!(
            "open + first call, new process, compiling at run time:  {}",
            fmt(fresh_process_open(5, true))
        );
    }
    println!(
        "open + first call, new process, precompiled (shipped):  {}",
        fmt(fresh_process_open(21, false))
    );
    // Within a process the component is set up once; later opens only instantiate.
    let root = bench_root();
    Registry::open(tempfile::tempdir_in(&root).unwrap().path())
        .unwrap()
        .lookup("a")
        .unwrap();
    let mut times: Vec<Duration> = (0..21)
        .map(|_| {
            let tmp = tempfile::tempdir_in(&root).unwrap();
            let start = Instant::now();
            let registry = Registry::open(tmp.path()).unwrap();
            registry.lookup("a").unwrap();
            start.elapsed()
        })
        .collect();
    times.sort();
    println!(
        "open + first call, later in the same process:         {}",
        fmt(times[10])
    );
}

fn bench_threads() {
    let n = 1000;
    let (p, _dir) = populate(n);
    p.component.serve_lookups_from_notifications_now();
    let ids: Arc<Vec<String>> = Arc::new((0..n).map(|i| format!("agent-{i:06}")).collect());
    let measure = |threads: usize, native: bool| -> f64 {
        let stop = Arc::new(AtomicBool::new(false));
        let count = Arc::new(AtomicU64::new(0));
        std::thread::scope(|scope| {
            for t in 0..threads {
                let (stop, count, ids) = (stop.clone(), count.clone(), ids.clone());
                let (registry, nat) = (p.component.clone(), &p.native);
                scope.spawn(move || {
                    let mut i = t * 977;
                    let mut done = 0u64;
                    while !stop.load(Ordering::Relaxed) {
                        let id = &ids[i % n];
                        if native {
                            black_box(nat.lookup(id));
                        } else {
                            black_box(registry.lookup(id).unwrap());
                        }
                        i += 1;
                        done += 1;
                    }
                    count.fetch_add(done, Ordering::Relaxed);
                });
            }
            std::thread::sleep(Duration::from_millis(1500));
            stop.store(true, Ordering::Relaxed);
        });
        count.load(Ordering::Relaxed) as f64 / 1.5
    };
    for threads in [1, 2, 4] {
        let nat = measure(threads, true);
        let com = measure(threads, false);
        println!(
            "lookups/s    threads={threads}  native {:>9.0}/s   component {:>9.0}/s   ratio {:.2}x",
            nat,
            com,
            nat / com
        );
    }
}

/// `AGENTMUX_BENCH_PROFILE=lookup`: only lookups, for a profiler.
fn profile_lookups() {
    let (p, _dir) = populate(1000);
    let start = Instant::now();
    let mut i = 0usize;
    while start.elapsed() < Duration::from_secs(5) {
        black_box(
            p.component
                .lookup(&format!("agent-{:06}", i % 1000))
                .unwrap(),
        );
        i += 1;
    }
}

fn main() {
    if std::env::var("AGENTMUX_BENCH_PROFILE").is_ok_and(|v| v == "lookup") {
        return profile_lookups();
    }
    match std::env::var("AGENTMUX_BENCH_CHILD").as_deref() {
        Ok("open") => return child_open(false),
        Ok("open-compiling") => return child_open(true),
        _ => {}
    }
    // `cargo bench` passes `--bench`; a filter argument, if any, is ignored.
    println!("agentmux-registry benchmark: medians; ratio = component time / native time");
    println!("entries in: {}", bench_root().display());
    bench_open();
    for n in [1_000, 10_000] {
        bench_ops(n);
    }
    bench_threads();
}

fn bench_fields(
    agent_id: &str,
    local_url: &str,
    block_id: &str,
    pid: u32,
    auth_key: &str,
) -> agentmux_registry::EntryFields {
    agentmux_registry::EntryFields {
        agent_id: agent_id.into(),
        local_url: local_url.into(),
        block_id: block_id.into(),
        pid,
        auth_key: auth_key.into(),
        ..Default::default()
    }
}
