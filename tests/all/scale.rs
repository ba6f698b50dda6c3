//! Large and hostile directories: listing and sweeping degrade per entry,
//! never fail as a whole, and keep the component's memory bounded.

use std::time::{Duration, Instant};

use agentmux_registry::blocking::Registry;
use agentmux_registry::{Options, SweepProgress};
use agentmux_registry_tests::{listed_ids, now_ms, Fixture, SeedEntry};

/// Small limits that the old all-at-once `list` and `cleanup-stale` broke.
fn tight() -> Options {
    Options::new()
        .memory_limit(16 << 20)
        .call_timeout(CALL_DEADLINE)
}

/// The per-call deadline: far shorter than the whole sweep (40-90 s for the
/// big directory in a debug build), so the sweep must span many calls, yet
/// long enough for one batch on a loaded 2-core machine (a batch took over
/// 1 s there while two builds ran). 10 s under Wine, where each file call
/// costs tens of times what it does natively (a batch takes 1-3 s there).
const CALL_DEADLINE: Duration = if cfg!(windows) {
    Duration::from_secs(10)
} else {
    Duration::from_secs(5)
};

/// Entries in the big directory. Under Wine every file call costs far more
/// than natively (a thousand entries take about 20 s there), so Windows runs
/// 3,000 (still 12 sweep batches): the bounds are the guest's, the same on
/// every platform, and the full size is checked everywhere else.
const BIG: u32 = if cfg!(windows) { 3_000 } else { 100_000 };

#[test]
fn a_hundred_thousand_entries_list_and_sweep_in_bounded_memory_and_time() {
    let fx = Fixture::new();
    let now = now_ms();
    for i in 0..BIG {
        // Half are fresh, half four days old.
        let age = if i % 2 == 0 { 0 } else { 4 * 24 * 3600 * 1000 };
        let id = format!("agent-{i:06}");
        fx.write_raw(
            &format!("{id}.json"),
            SeedEntry::new(&id, now - age).to_json(),
        );
    }
    // 16 MiB of guest memory and 5 s per guest call: the whole result is far
    // larger, and the whole sweep far longer, than one call may take.
    let registry = Registry::open_with(fx.data_dir(), tight()).unwrap();

    let started = Instant::now();
    let entries = registry.list().unwrap();
    let listed_in = started.elapsed();
    assert_eq!(entries.len(), BIG as usize);
    assert!(
        entries.windows(2).all(|w| w[0].agent_id < w[1].agent_id),
        "sorted"
    );

    let mut reports: Vec<SweepProgress> = Vec::new();
    let started = Instant::now();
    let removed = registry
        .cleanup_stale_with_progress(Duration::from_secs(24 * 3600), |p| reports.push(p))
        .unwrap();
    let swept_in = started.elapsed();
    assert_eq!(removed, u64::from(BIG / 2));
    assert!(
        reports.len() > 10,
        "progress after every batch: {}",
        reports.len()
    );
    assert!(reports.windows(2).all(|w| w[0].examined < w[1].examined));
    let last = reports.last().unwrap();
    assert!(last.done && last.removed == u64::from(BIG / 2) && last.examined >= u64::from(BIG));
    assert_eq!(registry.list().unwrap().len(), (BIG / 2) as usize);
    eprintln!("{BIG} entries: list {listed_in:?}, sweep of half {swept_in:?}");
}

#[test]
fn oversized_entries_are_skipped_by_reads_and_swept() {
    let fx = Fixture::new();
    let now = now_ms();
    // Fields over the write limits, in files under the 64 KiB file cap: 300
    // of them hold ~18 MiB, more than the component may use.
    for i in 0..300 {
        let id = format!("big-{i:03}");
        let big = SeedEntry {
            local_url: "u".repeat(62_000),
            ..SeedEntry::new(&id, now)
        };
        fx.write_raw(&format!("{id}.json"), big.to_json());
    }
    fx.write_raw("huge.json", "x".repeat(100_000));
    // Owned by this live process, so the dead-owner sweep keeps it everywhere
    // (on Windows a pid with no process is a dead owner).
    let fine = SeedEntry {
        pid: std::process::id(),
        ..SeedEntry::new("fine", now)
    };
    fx.write_raw("fine.json", fine.to_json());
    let registry = Registry::open_with(fx.data_dir(), tight()).unwrap();

    assert_eq!(listed_ids(&registry), ["fine"]);
    assert_eq!(registry.lookup("big-000").unwrap(), None);
    assert_eq!(registry.cleanup_dead_owners().unwrap(), 0);
    // A sweep of any age removes them: they are malformed.
    assert_eq!(
        registry.cleanup_stale(Duration::from_secs(3600)).unwrap(),
        301
    );
    assert_eq!(fx.names(), ["fine.json"]);
}

#[test]
fn a_listing_goes_through_batches_and_can_stop_early() {
    let fx = Fixture::new();
    let now = now_ms();
    for i in 0..1_000 {
        let id = format!("l-{i:04}");
        fx.write_raw(&format!("{id}.json"), SeedEntry::new(&id, now).to_json());
    }
    let registry = Registry::open(fx.data_dir()).unwrap();
    let batches: Vec<Vec<_>> = registry.listing().map(Result::unwrap).collect();
    assert!(batches.len() > 1, "more than one batch");
    let mut ids: Vec<String> = batches.into_iter().flatten().map(|e| e.agent_id).collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 1_000, "every entry exactly once");
    // Stopping after one batch leaves the registry working.
    let first = registry.listing().next().unwrap().unwrap();
    assert!(!first.is_empty());
    assert_eq!(registry.list().unwrap().len(), 1_000);
}

/// Names that are not UTF-8 cannot be entries (the component cannot even name
/// them), but however many there are, the rest of the directory still lists
/// and sweeps.
#[cfg(target_os = "linux")]
#[test]
fn any_number_of_unnamable_files_leaves_list_and_sweep_working() {
    use std::os::unix::ffi::OsStrExt;
    let fx = Fixture::new();
    for i in 0..1_500 {
        let name = format!("bad\u{ff}{i}.json").replace('\u{ff}', "\u{1}");
        let mut bytes = name.into_bytes();
        bytes[3] = 0xff;
        std::fs::write(fx.agents().join(std::ffi::OsStr::from_bytes(&bytes)), "{}").unwrap();
    }
    fx.write_raw("good.json", SeedEntry::new("good", now_ms()).to_json());
    fx.write_raw("old.json", SeedEntry::new("old", 1).to_json());
    assert_eq!(listed_ids(&fx.registry), ["good", "old"]);
    assert_eq!(
        fx.registry
            .cleanup_stale(Duration::from_secs(3600))
            .unwrap(),
        1
    );
}

/// An entry stamped in the future (no writer can have made it) would never
/// age; a sweep removes it once it is more than an hour ahead.
#[test]
fn an_entry_from_the_far_future_is_swept() {
    let fx = Fixture::new();
    fx.write_raw("future.json", SeedEntry::new("future", u64::MAX).to_json());
    let soon = now_ms() + 10 * 60 * 1000;
    fx.write_raw("skewed.json", SeedEntry::new("skewed", soon).to_json());
    assert!(
        fx.registry.lookup("future").unwrap().is_some(),
        "still a valid entry to read"
    );
    assert_eq!(
        fx.registry
            .cleanup_stale(Duration::from_secs(3600))
            .unwrap(),
        1
    );
    assert_eq!(
        fx.names(),
        ["skewed.json"],
        "a clock ten minutes ahead is tolerated"
    );
}
