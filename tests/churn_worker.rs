//! One process of the cross-process churn test (`tests/all/churn.rs`), as an
//! owner or a reader of a few agent ids shared by every process.
//!
//! Usage:
//! - `registry-churn-worker owner <data_dir> <ids> <owner> <beat_us> <end_ns> <settle_ns> <log>`
//! - `registry-churn-worker reader <data_dir> <ids> <reader> <end_ns> <log>`
//!
//! Ids are `churn-0` .. `churn-{ids-1}`; times are nanoseconds of
//! `CLOCK_MONOTONIC`, which all processes of the machine share.
//!
//! An owner registers ids (taking them over from other owners, or from
//! itself), keeps each for a random short time, unregisters it, and polls
//! `is_superseded()` of every registration it holds. Until `end_ns`; then it
//! keeps what it holds for `settle_ns`, logs its final state, prints `ready`
//! and waits for its stdin to close before unregistering everything.
//! Its log, one event a line:
//! - `R <id> <token> <auth_key> <t0> <t1>`: registered during `[t0, t1]`;
//! - `RE <id> <t0> <t1> <error>`: registering failed;
//! - `S <token> <t>`: first saw the registration superseded, at `t`;
//! - `U <token> <t0> <t1> <removed 0|1>`: unregistered during `[t0, t1]`;
//! - `UE <token> <t0> <t1> <error>`: unregistering failed;
//! - `F <token> <superseded 0|1>`: held at the end, after the settling time.
//!
//! A reader looks ids up until `end_ns`, logging each lookup:
//! - `L <id> <t0> <t1> <token|-> <pid> <auth_key|->`: the answer of a lookup
//!   that ran during `[t0, t1]` (`?` for an entry without a token);
//! - `LE <id> <t0> <t1> <error>`: the lookup failed.
//!
//! A worker never panics on a registry error: it logs it, and the test counts it.

#[cfg(unix)]
fn main() {
    unix::main();
}

#[cfg(not(unix))]
fn main() {
    eprintln!("registry-churn-worker: Unix only");
    std::process::exit(2);
}

#[cfg(unix)]
mod unix {
    use std::future::Future;
    use std::io::{BufWriter, Read as _, Write as _};
    use std::time::Duration;

    use agentmux_registry::{EntryFields, Registration, Registry};

    /// Nanoseconds of `CLOCK_MONOTONIC`: one clock for every process.
    fn now() -> u64 {
        let t = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
        t.tv_sec as u64 * 1_000_000_000 + t.tv_nsec as u64
    }

    /// Runs a registry future to completion on this thread.
    fn block_on<F: Future>(future: F) -> F::Output {
        thread_local! {
            static RUNTIME: tokio::runtime::Runtime = tokio::runtime::Builder::new_current_thread()
                .build()
                .expect("a current-thread runtime");
        }
        RUNTIME.with(|runtime| runtime.block_on(future))
    }

    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }

        fn below(&mut self, n: u64) -> u64 {
            self.next() % n
        }

        /// Nanoseconds in `[lo_ms, hi_ms)` milliseconds.
        fn ms(&mut self, lo_ms: u64, hi_ms: u64) -> u64 {
            (lo_ms * 1_000_000) + self.below((hi_ms - lo_ms) * 1_000_000)
        }
    }

    /// An error message on one line.
    fn one_line(e: &dyn std::fmt::Display) -> String {
        e.to_string().replace(['\n', '\r'], " ")
    }

    fn die(what: &str) -> ! {
        eprintln!("registry-churn-worker: {what}");
        std::process::exit(2);
    }

    fn arg<T: std::str::FromStr>(s: &str) -> T {
        s.parse()
            .unwrap_or_else(|_| die(&format!("bad argument {s:?}")))
    }

    fn id_name(id: u64) -> String {
        format!("churn-{id}")
    }

    pub fn main() {
        let args: Vec<String> = std::env::args().collect();
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        match &args[1..] {
            ["owner", data_dir, ids, owner_no, beat_us, end_ns, settle_ns, log] => owner(
                data_dir,
                arg(ids),
                arg(owner_no),
                Duration::from_micros(arg(beat_us)),
                arg(end_ns),
                arg(settle_ns),
                log,
            ),
            ["reader", data_dir, ids, reader_no, end_ns, log] => {
                reader(data_dir, arg(ids), arg(reader_no), arg(end_ns), log)
            }
            _ => die("usage: registry-churn-worker owner|reader ... (see tests/churn_worker.rs)"),
        }
    }

    fn open(data_dir: &str) -> Registry {
        Registry::open(data_dir).unwrap_or_else(|e| die(&format!("opening the registry: {e}")))
    }

    fn create_log(path: &str) -> BufWriter<std::fs::File> {
        let file =
            std::fs::File::create(path).unwrap_or_else(|e| die(&format!("creating {path}: {e}")));
        BufWriter::with_capacity(1 << 20, file)
    }

    /// Writes a log line; a log that cannot be written ends the worker (the
    /// test then fails on its exit status).
    macro_rules! log {
        ($log:expr, $($arg:tt)*) => {
            if let Err(e) = writeln!($log, $($arg)*) {
                die(&format!("writing the log: {e}"));
            }
        };
    }

    struct Held {
        id: u64,
        token: String,
        guard: Registration,
        /// When to unregister it.
        drop_at: u64,
        superseded: bool,
    }

    /// At most this many registrations held at once, superseded ones included.
    const MAX_HELD: usize = 8;

    /// An owner process's state.
    struct Owner {
        registry: Registry,
        owner_no: u64,
        beat: Duration,
        log: BufWriter<std::fs::File>,
        rng: Rng,
        held: Vec<Held>,
        keys: u64,
    }

    impl Owner {
        /// Registers `id`: a takeover when another registration holds it.
        fn register(&mut self, id: u64) {
            self.keys += 1;
            let auth_key = format!("k{}-{}", self.owner_no, self.keys);
            let fields = EntryFields {
                agent_id: id_name(id),
                local_url: "http://127.0.0.1:1".into(),
                block_id: format!("owner-{}", self.owner_no),
                auth_key: auth_key.clone(),
                ..EntryFields::default()
            };
            let t0 = now();
            let result = block_on(Registration::register(&self.registry, fields, self.beat));
            let t1 = now();
            match result {
                Ok(guard) => {
                    let token = guard.nonce().to_string();
                    log!(self.log, "R {id} {token} {auth_key} {t0} {t1}");
                    self.held.push(Held {
                        id,
                        token,
                        guard,
                        drop_at: t1 + self.rng.ms(10, 300),
                        superseded: false,
                    });
                }
                Err(e) => log!(self.log, "RE {id} {t0} {t1} {}", one_line(&e)),
            }
        }

        /// Unregisters the `i`th registration held.
        fn unregister(&mut self, i: usize) {
            let h = self.held.swap_remove(i);
            let t0 = now();
            let result = block_on(h.guard.unregister());
            let t1 = now();
            match result {
                Ok(removed) => log!(self.log, "U {} {t0} {t1} {}", h.token, u8::from(removed)),
                Err(e) => log!(self.log, "UE {} {t0} {t1} {}", h.token, one_line(&e)),
            }
        }

        /// Logs registrations newly superseded; each is dropped soon after.
        fn poll(&mut self) {
            for h in self.held.iter_mut().filter(|h| !h.superseded) {
                if h.guard.is_superseded() {
                    let t = now();
                    log!(self.log, "S {} {t}", h.token);
                    h.superseded = true;
                    h.drop_at = h.drop_at.min(t + self.rng.ms(0, 50));
                }
            }
        }

        fn flush(&mut self) {
            if let Err(e) = self.log.flush() {
                die(&format!("writing the log: {e}"));
            }
        }
    }

    fn owner(
        data_dir: &str,
        ids: u64,
        owner_no: u64,
        beat: Duration,
        end_ns: u64,
        settle_ns: u64,
        log_path: &str,
    ) {
        let seed =
            (u64::from(std::process::id()) << 20 ^ owner_no).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        let mut o = Owner {
            registry: open(data_dir),
            owner_no,
            beat,
            log: create_log(log_path),
            rng: Rng(seed | 1),
            held: Vec::new(),
            keys: 0,
        };
        let mut next_action = now();
        while now() < end_ns {
            o.poll();
            let t = now();
            let mut i = 0;
            while i < o.held.len() {
                if o.held[i].drop_at <= t {
                    o.unregister(i);
                } else {
                    i += 1;
                }
            }
            if t >= next_action {
                let id = o.rng.below(ids);
                let mine = o.held.iter().position(|h| h.id == id && !h.superseded);
                match (mine, o.rng.below(10)) {
                    // Take the id (over from another owner, if one holds it),
                    // or replace this process's own registration of it.
                    (None, _) | (Some(_), 0..=1) if o.held.len() < MAX_HELD => o.register(id),
                    (Some(i), 2..=3) => o.unregister(i),
                    _ => {}
                }
                next_action = now() + o.rng.ms(2, 12);
            }
            std::thread::sleep(Duration::from_micros(500));
        }

        // Hold still while every registration beats many times; then what is
        // held and not superseded must be what lookups find.
        let settled = now() + settle_ns;
        while now() < settled {
            o.poll();
            std::thread::sleep(Duration::from_millis(1));
        }
        o.poll();
        for h in &o.held {
            log!(o.log, "F {} {}", h.token, u8::from(h.guard.is_superseded()));
        }
        o.flush();
        let mut stdout = std::io::stdout().lock();
        if writeln!(stdout, "ready")
            .and_then(|()| stdout.flush())
            .is_err()
        {
            die("the test went away");
        }
        let _ = std::io::stdin().read_to_end(&mut Vec::new());
        while !o.held.is_empty() {
            o.unregister(o.held.len() - 1);
        }
        o.flush();
    }

    fn reader(data_dir: &str, ids: u64, reader_no: u64, end_ns: u64, log_path: &str) {
        let registry = open(data_dir);
        let mut log = create_log(log_path);
        let pid = std::process::id();
        let seed = (u64::from(pid) << 20 ^ reader_no).wrapping_mul(0x2545_F491_4F6C_DD1D);
        let mut rng = Rng(seed | 1);
        let names: Vec<String> = (0..ids).map(id_name).collect();
        let mut lookups = 0u64;
        while now() < end_ns {
            let id = rng.below(ids);
            let t0 = now();
            let result = block_on(registry.lookup(&names[id as usize]));
            let t1 = now();
            match result {
                Ok(Some(e)) => log!(
                    log,
                    "L {id} {t0} {t1} {} {} {}",
                    match e.registration_nonce {
                        0 => "?".to_string(),
                        nonce => nonce.to_string(),
                    },
                    e.pid,
                    if e.auth_key.is_empty() {
                        "-"
                    } else {
                        &e.auth_key
                    }
                ),
                Ok(None) => log!(log, "L {id} {t0} {t1} - 0 -"),
                Err(e) => log!(log, "LE {id} {t0} {t1} {}", one_line(&e)),
            }
            lookups += 1;
            // Leave the owners' heartbeats some of the machine.
            if lookups.is_multiple_of(2) {
                std::thread::sleep(Duration::from_micros(200));
            }
        }
        if let Err(e) = log.flush() {
            die(&format!("writing the log: {e}"));
        }
    }
}
