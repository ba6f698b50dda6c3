//! Renewals that readers never miss, and that never take an id back: every
//! change to an entry name is made under the name's claim, and a renewal
//! replaces the entry with one rename.
// The concurrent tests are Unix-only; their imports are unused elsewhere.
#![cfg_attr(not(unix), allow(unused_imports))]

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use agentmux_registry::blocking::Registry;
use agentmux_registry::{EntryFields, Renewal};
use agentmux_registry_core::name::claim_file_name;
use agentmux_registry_tests::{fields, Fixture};

/// Fields of registration `nonce` of `agent_id`.
fn registration(agent_id: &str, nonce: u64) -> EntryFields {
    EntryFields {
        registration_nonce: nonce,
        ..fields(
            agent_id,
            "http://127.0.0.1:1",
            "b",
            1,
            &format!("key-{nonce}"),
        )
    }
}

/// Renewals the tests wait for before they judge: enough beats that a
/// lookup or a takeback racing one of them would have been seen.
#[cfg(unix)]
const RENEWALS_TO_JUDGE: u64 = 500;

#[cfg(unix)]
/// A renewal loop on another thread: `renewals` counts them as they
/// happen, so a test can keep going until enough have raced it.
struct Renewer {
    stop: Arc<AtomicBool>,
    renewals: Arc<AtomicU64>,
    thread: std::thread::JoinHandle<u64>,
}

#[cfg(unix)]
impl Renewer {
    /// Renews `fields` in a loop until stopped.
    fn start(registry: &Registry, fields: EntryFields) -> Renewer {
        let stop = Arc::new(AtomicBool::new(false));
        let renewals = Arc::new(AtomicU64::new(0));
        let thread = {
            let (registry, stop, renewals) = (registry.clone(), stop.clone(), renewals.clone());
            std::thread::spawn(move || {
                let mut other = 0;
                while !stop.load(Ordering::Relaxed) {
                    match registry.renew(fields.clone()) {
                        Ok(Renewal::Refreshed) => {}
                        outcome => {
                            eprintln!("renewal: {outcome:?}");
                            other += 1
                        }
                    }
                    renewals.fetch_add(1, Ordering::Relaxed);
                    // Beats 0.2 ms apart: far faster than any real heartbeat,
                    // but not a loop that never lets another call take the
                    // claim.
                    std::thread::sleep(Duration::from_micros(200));
                }
                other
            })
        };
        Renewer {
            stop,
            renewals,
            thread,
        }
    }

    fn renewals(&self) -> u64 {
        self.renewals.load(Ordering::Relaxed)
    }

    /// Stops the loop; returns the renewals made and how many reported
    /// anything but `Refreshed`.
    fn stop(self) -> (u64, u64) {
        self.stop.store(true, Ordering::Relaxed);
        let other = self.thread.join().unwrap();
        (self.renewals.load(Ordering::Relaxed), other)
    }
}

// Threads replacing a file others are reading: see `stress` in main.rs for
// why concurrency is tested on Unix only (Wine lacks POSIX rename semantics).
#[cfg(unix)]
#[test]
fn lookups_never_miss_an_entry_while_it_is_renewed() {
    let fx = Fixture::new();
    let fields = registration("steady", 1);
    fx.registry.write(fields.clone()).unwrap();
    let renewer = Renewer::start(&fx.registry, fields);

    // At least 20,000 lookups and 200 listings, and on until enough
    // renewals raced them however fast the lookups are.
    let (mut lookups, mut misses, mut listings, mut listed_without) = (0u64, 0u64, 0u64, 0u64);
    while lookups < 20_000 || listings < 200 || renewer.renewals() < RENEWALS_TO_JUDGE {
        for _ in 0..100 {
            lookups += 1;
            misses += fx.registry.lookup("steady").unwrap().is_none() as u64;
        }
        listings += 1;
        listed_without +=
            !agentmux_registry_tests::listed_ids(&fx.registry).contains(&"steady".into()) as u64;
    }
    let (renewals, not_refreshed) = renewer.stop();

    assert!(renewals >= RENEWALS_TO_JUDGE);
    assert_eq!(not_refreshed, 0, "a lone registration is always refreshed");
    assert_eq!(
        misses, 0,
        "of {lookups} lookups, some missed a live entry during {renewals} renewals"
    );
    assert_eq!(
        listed_without, 0,
        "of {listings} listings, some lacked the live entry"
    );
}

// Threads replacing a file others are reading: see `stress` in main.rs for
// why concurrency is tested on Unix only (Wine lacks POSIX rename semantics).
#[cfg(unix)]
/// A predecessor keeps renewing after a successor took the id over (its
/// process was starved, so it has not noticed yet): it must learn it is
/// superseded every time, and never put its entry back.
#[test]
fn a_predecessor_never_takes_the_id_back_from_a_renewing_successor() {
    let fx = Fixture::new();
    let old = registration("contested", 1);
    let new = registration("contested", 2);
    fx.registry.write(old.clone()).unwrap();
    fx.registry.write(new.clone()).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let successor = Renewer::start(&fx.registry, new);

    let older_answers = Arc::new(AtomicU64::new(0));
    let reader = {
        let (registry, stop, older_answers) =
            (fx.registry.clone(), stop.clone(), older_answers.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                let found = registry.lookup("contested").unwrap();
                if found.map(|e| e.registration_nonce) != Some(2) {
                    older_answers.fetch_add(1, Ordering::Relaxed);
                }
            }
        })
    };
    // At least 3,000 renewals by the predecessor, and on until the
    // successor renewed often enough to have raced them.
    let (mut takebacks, mut i) = (0, 0);
    while i < 3_000 || successor.renewals() < RENEWALS_TO_JUDGE {
        i += 1;
        match fx
            .registry
            .renew(old.clone())
            .unwrap_or_else(|e| panic!("renewal {i}: {e}"))
        {
            Renewal::Superseded => {}
            other => {
                eprintln!("predecessor's renewal: {other:?}");
                takebacks += 1
            }
        }
    }
    stop.store(true, Ordering::Relaxed);
    let (renewals, false_supersedes) = successor.stop();
    reader.join().unwrap();

    assert!(renewals >= RENEWALS_TO_JUDGE);
    assert_eq!(takebacks, 0, "the predecessor's entry was put back");
    assert_eq!(
        false_supersedes, 0,
        "the successor was told it is superseded"
    );
    assert_eq!(
        older_answers.load(Ordering::Relaxed),
        0,
        "lookups that returned no entry or the predecessor's"
    );
}

/// A file with a second hard link at a registered name (planted, or left by
/// an earlier version's restore) is still the registration's entry: found,
/// and replaced by a single-link file at the next renewal.
#[test]
fn a_hard_linked_entry_is_found_and_repaired_by_the_next_renewal() {
    let fx = Fixture::new();
    let fields = registration("linked", 1);
    fx.registry.write(fields.clone()).unwrap();
    let other_link = fx.tmp.path().join("other-link");
    std::fs::hard_link(fx.path("linked.json"), &other_link).unwrap();

    assert!(
        fx.registry.lookup("linked").unwrap().is_some(),
        "a hard-linked entry is still found"
    );
    assert!(matches!(
        fx.registry.renew(fields).unwrap(),
        Renewal::Refreshed
    ));
    let links = links_of(&fx.path("linked.json"));
    assert_eq!(links, 1, "the renewal put a file of its own in place");
    assert!(fx.registry.lookup("linked").unwrap().is_some());
}

#[cfg(unix)]
fn links_of(path: &std::path::Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path).unwrap().nlink()
}

#[cfg(windows)]
fn links_of(_: &std::path::Path) -> u64 {
    // std has no stable link count on Windows; a renewal that succeeded
    // replaced the name with a new file.
    1
}

/// A sweep whose progress callback panics leaves a sweep resource (and the
/// directory stream it reads) in the instance: that instance must never be
/// reused.
#[test]
fn an_instance_left_holding_a_sweep_is_never_pooled() {
    let fx = Fixture::new();
    fx.registry
        .write(fields("a", "http://127.0.0.1:1", "b", 1, "k"))
        .unwrap();
    fx.registry
        .cleanup_stale(Duration::from_secs(3600))
        .unwrap();
    assert_eq!(
        fx.registry.as_async().pooled_instances(),
        1,
        "a finished sweep pools"
    );

    let registry = fx.registry.clone();
    let panicked = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        registry.cleanup_stale_with_progress(Duration::from_secs(3600), |_| {
            panic!("a caller's progress callback panics")
        })
    }));
    assert!(panicked.is_err());
    assert_eq!(
        fx.registry.as_async().pooled_instances(),
        0,
        "the instance holding the unfinished sweep was pooled"
    );
    // The registry keeps working.
    assert_eq!(fx.registry.lookup("a").unwrap().unwrap().agent_id, "a");
}

/// On tmpfs, a name replaced while a directory is read can be listed twice
/// or not at all by the kernel; every entry present throughout must still
/// be listed exactly once.
#[cfg(target_os = "linux")]
#[test]
fn listings_are_exact_on_tmpfs_while_entries_are_rewritten() {
    let shm = std::path::Path::new("/dev/shm");
    if !shm.is_dir() {
        eprintln!("note: skipped: no /dev/shm (tmpfs) here");
        return;
    }
    let tmp = tempfile::tempdir_in(shm).unwrap();
    let registry = Registry::open(tmp.path()).unwrap();
    const IDS: usize = 200;
    let ids: Vec<String> = (0..IDS).map(|i| format!("agent-{i:03}")).collect();
    for id in &ids {
        registry
            .write(fields(id, "http://127.0.0.1:1", "b", 1, "k"))
            .unwrap();
    }
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (registry, stop, ids) = (registry.clone(), stop.clone(), ids.clone());
        std::thread::spawn(move || {
            let mut writes = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let id = &ids[(writes as usize * 7) % IDS];
                registry
                    .write(fields(id, "http://127.0.0.1:1", "b", 1, "k"))
                    .unwrap();
                writes += 1;
            }
            writes
        })
    };
    let (mut missing, mut repeated) = (0, 0);
    let mut listings = 0;
    while listings < 300 {
        let mut seen = std::collections::BTreeMap::<String, u32>::new();
        for batch in registry.listing() {
            for entry in batch.unwrap() {
                *seen.entry(entry.agent_id).or_default() += 1;
            }
        }
        missing += ids.iter().filter(|id| !seen.contains_key(*id)).count();
        repeated += seen.values().filter(|n| **n > 1).count();
        listings += 1;
    }
    stop.store(true, Ordering::Relaxed);
    let writes = writer.join().unwrap();
    assert!(writes > 1000, "too few rewrites to mean anything: {writes}");
    assert_eq!(
        (missing, repeated),
        (0, 0),
        "(missing, repeated) rows in {listings} listings of {IDS} during {writes} rewrites"
    );
}

/// Sets a file's modification time `age` into the past.
fn age(path: &std::path::Path, age: Duration) {
    let file = std::fs::File::options().write(true).open(path).unwrap();
    file.set_modified(std::time::SystemTime::now() - age)
        .unwrap();
}

/// A call that holds a name's claim makes others wait, then fail clearly; a
/// claim left by a call that died is broken after 10 s, by the next call
/// that needs the name or by a sweep.
#[test]
fn a_held_claim_makes_calls_wait_and_a_dead_calls_claim_is_broken() {
    let fx = Fixture::new();
    let claim = fx.path(&claim_file_name("held.json"));
    std::fs::write(&claim, "").unwrap();
    let refused = fx
        .registry
        .write(fields("held", "http://127.0.0.1:1", "b", 1, "k"))
        .unwrap_err();
    assert!(
        refused
            .to_string()
            .contains("is being changed by another call"),
        "{refused}"
    );
    assert!(fx.registry.lookup("held").unwrap().is_none());

    age(&claim, Duration::from_secs(11));
    fx.registry
        .write(fields("held", "http://127.0.0.1:1", "b", 1, "k"))
        .unwrap();
    assert!(
        !claim.exists(),
        "the stale claim was broken and the new one released"
    );

    let other = fx.path(&claim_file_name("gone.json"));
    std::fs::write(&other, "").unwrap();
    assert_eq!(
        fx.registry
            .cleanup_stale(Duration::from_secs(3600))
            .unwrap(),
        0
    );
    assert!(other.exists(), "a fresh claim is not debris");
    age(&other, Duration::from_secs(11));
    assert_eq!(
        fx.registry
            .cleanup_stale(Duration::from_secs(3600))
            .unwrap(),
        1
    );
    assert!(!other.exists());
    assert_eq!(agentmux_registry_tests::listed_ids(&fx.registry), ["held"]);
}

/// A claim stamped in the future (the clock was set back since the call
/// that left it died) is as stale as an old one: it must not hold the name
/// until the clock catches up.
#[test]
fn a_claim_stamped_in_the_future_is_broken_too() {
    let fx = Fixture::new();
    let claim = fx.path(&claim_file_name("later.json"));
    std::fs::write(&claim, "").unwrap();
    let file = std::fs::File::options().write(true).open(&claim).unwrap();
    file.set_modified(std::time::SystemTime::now() + Duration::from_secs(3600))
        .unwrap();
    drop(file);
    fx.registry
        .write(fields("later", "http://127.0.0.1:1", "b", 1, "k"))
        .unwrap();
    assert!(!claim.exists());
}

/// A directory where a claim file belongs was put there by hand: calls on
/// that id fail saying so, rather than waiting or leaving debris.
#[test]
fn a_directory_at_a_claim_name_is_reported() {
    let fx = Fixture::new();
    let claim = fx.path(&claim_file_name("blocked.json"));
    std::fs::create_dir(&claim).unwrap();
    let refused = fx
        .registry
        .write(fields("blocked", "http://127.0.0.1:1", "b", 1, "k"))
        .unwrap_err();
    assert!(
        refused
            .to_string()
            .contains("is a directory where a claim file belongs"),
        "{refused}"
    );
    assert!(claim.is_dir());
}

/// Two ids whose names share a 64-bit FNV-1a hash (found by search): a
/// listing that told names apart by such a hash would list one of them.
#[test]
fn ids_with_colliding_name_hashes_are_both_listed() {
    let fx = Fixture::new();
    let (a, b) = ("alcbfjmcplpcheka", "migoplepfnlggakk");
    assert_eq!(
        claim_file_name(&format!("{a}.json")),
        claim_file_name(&format!("{b}.json")),
        "the two names collide"
    );
    for id in [a, b] {
        fx.registry
            .write(fields(id, "http://127.0.0.1:1", "b", 1, "k"))
            .unwrap();
    }
    assert_eq!(agentmux_registry_tests::listed_ids(&fx.registry), [a, b]);
}

/// A call that waits for another call's claim sleeps on the runtime's
/// blocking pool: the runtime's one worker keeps running other tasks
/// meanwhile (a wait spinning inside the component would starve them).
#[test]
fn waiting_for_a_claim_leaves_the_async_runtime_free() {
    let fx = Fixture::new();
    std::fs::write(fx.path(&claim_file_name("held.json")), "").unwrap();
    let registry = fx.registry.as_async().clone();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    let (ticks, refused) = runtime.block_on(async move {
        let ticks = Arc::new(AtomicU64::new(0));
        let ticker = {
            let ticks = ticks.clone();
            tokio::spawn(async move {
                loop {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    ticks.fetch_add(1, Ordering::Relaxed);
                }
            })
        };
        let refused = registry
            .write(fields("held", "http://127.0.0.1:1", "b", 1, "k"))
            .await
            .unwrap_err();
        ticker.abort();
        (ticks.load(Ordering::Relaxed), refused)
    });
    assert!(refused.to_string().contains("busy: "), "{refused}");
    // About 200 ticks fit in the 2 s wait; a starved runtime gets none.
    assert!(
        ticks >= 50,
        "the runtime ran other tasks {ticks} times in 2 s"
    );
}
