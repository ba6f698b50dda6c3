//! 100,000 entries still list and sweep, within the default limits.

use std::time::{Duration, Instant};

use agentmux_registry_tests::{now_ms, Fixture, SeedEntry};

#[test]
fn a_hundred_thousand_entries_list_and_sweep() {
    let fx = Fixture::new();
    let now = now_ms();
    for i in 0..100_000u32 {
        // Half are fresh, half four days old.
        let age = if i % 2 == 0 { 0 } else { 4 * 24 * 3600 * 1000 };
        let id = format!("agent-{i:06}");
        fx.write_raw(
            &format!("{id}.json"),
            SeedEntry::new(&id, now - age).to_json(),
        );
    }

    let started = Instant::now();
    let entries = fx.registry.list().unwrap();
    let listed_in = started.elapsed();
    assert_eq!(entries.len(), 100_000);
    assert!(
        entries.windows(2).all(|w| w[0].agent_id < w[1].agent_id),
        "sorted"
    );

    let started = Instant::now();
    let removed = fx
        .registry
        .cleanup_stale(Duration::from_secs(24 * 3600))
        .unwrap();
    let swept_in = started.elapsed();
    assert_eq!(removed, 50_000);
    assert_eq!(fx.registry.list().unwrap().len(), 50_000);
    eprintln!("100,000 entries: list {listed_in:?}, sweep of half {swept_in:?}");
}
