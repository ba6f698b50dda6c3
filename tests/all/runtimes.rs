//! The registry works when called from inside tokio runtimes of both flavors,
//! async and blocking, and through the compat API.

use std::time::Duration;

use agentmux_registry::{blocking, compat, Registry};
use agentmux_registry_tests::{fields, run_alone_in_a_child, wait_past_ms};

async fn exercise_async(registry: &Registry) {
    registry
        .write(fields("rt-a", "http://127.0.0.1:1", "b", 1, "k"))
        .await
        .unwrap();
    assert_eq!(registry.lookup("rt-a").await.unwrap().unwrap().pid, 1);
    assert_eq!(registry.list().await.unwrap().len(), 1);
    assert_eq!(
        registry
            .cleanup_stale(Duration::from_secs(3600))
            .await
            .unwrap(),
        0
    );
    assert!(registry.remove("rt-a").await.unwrap());
}

fn exercise_blocking(registry: &blocking::Registry) {
    registry
        .write(fields("rt-b", "http://127.0.0.1:2", "b", 2, "k"))
        .unwrap();
    assert_eq!(registry.lookup("rt-b").unwrap().unwrap().pid, 2);
    assert!(registry.remove("rt-b").unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn async_calls_inside_a_multi_thread_runtime() {
    let tmp = tempfile::tempdir().unwrap();
    let registry = Registry::open(tmp.path()).unwrap();
    exercise_async(&registry).await;
    // From spawned tasks too, concurrently: the futures are Send.
    let tasks: Vec<_> = (0..8)
        .map(|i| {
            let registry = registry.clone();
            tokio::spawn(async move {
                let id = format!("task-{i}");
                registry.write(fields(&id, "u", "b", i, "k")).await.unwrap();
                registry.lookup(&id).await.unwrap().unwrap().pid
            })
        })
        .collect();
    for (i, task) in tasks.into_iter().enumerate() {
        assert_eq!(task.await.unwrap(), i as u32);
    }
    assert_eq!(registry.list().await.unwrap().len(), 8);
}

#[tokio::test(flavor = "current_thread")]
async fn async_calls_inside_a_current_thread_runtime() {
    let tmp = tempfile::tempdir().unwrap();
    let registry = Registry::open(tmp.path()).unwrap();
    exercise_async(&registry).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blocking_calls_inside_a_multi_thread_runtime() {
    let tmp = tempfile::tempdir().unwrap();
    exercise_blocking(&blocking::Registry::open(tmp.path()).unwrap());
}

#[tokio::test(flavor = "current_thread")]
async fn blocking_calls_inside_a_current_thread_runtime() {
    let tmp = tempfile::tempdir().unwrap();
    exercise_blocking(&blocking::Registry::open(tmp.path()).unwrap());
}

/// `compat::init_local_auth_key` sets process-wide state (the first call
/// wins), so this runs alone in a child process: its first call is the first
/// of its process, whatever other tests of this binary did or will do.
#[tokio::test(flavor = "current_thread")]
async fn compat_api_inside_a_runtime_keeps_the_seed_semantics() {
    const CHILD: &str = "AGENTMUX_TEST_COMPAT_CHILD";
    if std::env::var_os(CHILD).is_none() {
        return run_alone_in_a_child(
            "runtimes::compat_api_inside_a_runtime_keeps_the_seed_semantics",
            CHILD,
        );
    }
    let tmp = tempfile::tempdir().unwrap();
    let data_dir = tmp.path();
    compat::init_local_auth_key("first-key");
    compat::init_local_auth_key("second-key");
    compat::write(data_dir, "compat-1", "http://127.0.0.1:7", "blk");
    let entry: compat::AgentEntry = compat::lookup(data_dir, "compat-1").unwrap();
    assert_eq!(entry.auth_key, "first-key", "the first init wins");
    assert_eq!(entry.pid, std::process::id());
    assert_eq!(entry.block_id, "blk");
    // Entries written in the same millisecond as the sweep still count as
    // fresh: sweep once the clock has moved on.
    wait_past_ms(entry.updated_at);
    compat::cleanup_stale(data_dir, 0);
    assert!(
        compat::lookup(data_dir, "compat-1").is_none(),
        "swept at max age 0"
    );
    compat::write(data_dir, "compat-2", "http://127.0.0.1:7", "blk");
    compat::remove(data_dir, "compat-2");
    assert!(compat::lookup(data_dir, "compat-2").is_none());
}
