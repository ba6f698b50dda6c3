//! Opens a registry the way agentmux-srv does and round-trips an entry, with
//! the packaged crate and nothing else from this repository.

use agentmux_registry::blocking::Registry;
use agentmux_registry::EntryFields;

fn main() {
    let data_dir = tempfile::tempdir().expect("a temp dir");
    let started = std::time::Instant::now();
    let registry = Registry::open(data_dir.path()).expect("opening the registry");
    registry
        .write(EntryFields {
            agent_id: "consumer".into(),
            local_url: "http://127.0.0.1:1".into(),
            block_id: "b".into(),
            pid: std::process::id(),
            auth_key: "k".into(),
            ..EntryFields::default()
        })
        .expect("writing an entry");
    let entry = registry.lookup("consumer").expect("lookup").expect("the entry");
    assert_eq!(entry.local_url, "http://127.0.0.1:1");
    println!(
        "consumer: opened and round-tripped an entry in {:?}",
        started.elapsed()
    );
}
