//! Opens a registry in a fresh process and completes one call: the start-up
//! cost a consumer pays. Prints the time in microseconds.

use agentmux_registry::blocking::Registry;

fn main() {
    let data_dir = tempfile::tempdir().expect("a temp dir");
    let started = std::time::Instant::now();
    let registry = Registry::open(data_dir.path()).expect("opening the registry");
    let found = registry.lookup("nobody").expect("a lookup");
    let elapsed = started.elapsed();
    assert!(found.is_none());
    println!("{}", elapsed.as_micros());
}
