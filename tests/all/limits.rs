//! Each call runs under a time and a memory limit: a component that loops or
//! allocates without bound fails that call with a clear error, and the
//! registry keeps working afterwards.

use std::time::{Duration, Instant};

use agentmux_registry::blocking::Registry;
use agentmux_registry::{Error, Options};
use agentmux_registry_tests::fields;

/// The misbehaving component, compiled for this target by build.rs.
static MISBEHAVING: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/misbehaving.cwasm"));

/// `options` running the misbehaving component.
fn misbehaving(options: Options) -> Options {
    // SAFETY: this crate's own build output, made by the registry's wasmtime
    // with its engine configuration.
    unsafe { options.precompiled_component(MISBEHAVING) }
}

fn open(options: Options) -> (tempfile::TempDir, Registry) {
    let tmp = tempfile::tempdir().unwrap();
    let registry = Registry::open_with(tmp.path(), misbehaving(options)).unwrap();
    (tmp, registry)
}

/// Bytes that are not native code from this wasmtime and configuration (the
/// component's `.wasm`, a truncated compilation) are refused when the
/// registry opens, with the step named, and load nothing.
#[test]
fn precompiled_bytes_from_elsewhere_are_refused_at_open() {
    let wasm: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/misbehaving.wasm"));
    let truncated = &MISBEHAVING[..MISBEHAVING.len() / 2];
    for bytes in [wasm, truncated] {
        let tmp = tempfile::tempdir().unwrap();
        // SAFETY: neither is a compilation; wasmtime's header checks refuse
        // both before any code is mapped (the test asserts it).
        let options = unsafe { Options::new().precompiled_component(bytes) };
        match Registry::open_with(tmp.path(), options) {
            Err(Error::Setup { step, .. }) => {
                assert_eq!(step, "loading the precompiled component")
            }
            Err(other) => panic!("not a setup error: {other}"),
            Ok(_) => panic!(
                "{} bytes that are not a compilation were loaded",
                bytes.len()
            ),
        }
    }
}

/// The shared registry's calls run under the same deadline.
#[test]
fn a_shared_registry_call_that_never_returns_is_stopped_at_its_deadline() {
    let tmp = tempfile::tempdir().unwrap();
    let options = misbehaving(Options::new().call_timeout(Duration::from_millis(300)));
    let registry = Registry::open_shared_with(tmp.path().join("reactive"), options).unwrap();
    let err = registry.lookup_all("a1").unwrap_err();
    assert!(
        matches!(err, Error::Timeout(t) if t == Duration::from_millis(300)),
        "{err}"
    );
    // The registry goes on answering: the next call is stopped the same way.
    assert!(matches!(registry.lookup_all("a1"), Err(Error::Timeout(_))));
}

#[test]
fn a_call_that_never_returns_is_stopped_at_its_deadline() {
    let (_tmp, registry) = open(Options::new().call_timeout(Duration::from_millis(300)));
    let started = Instant::now();
    let err = registry.lookup("a1").unwrap_err();
    let took = started.elapsed();
    assert!(
        matches!(err, Error::Timeout(t) if t == Duration::from_millis(300)),
        "{err}"
    );
    // Never before the deadline (that holds on any machine). The upper bound
    // leaves a busy machine more than ten times the deadline, yet stays
    // below the 5 s bound instantiation runs under and the 30 s default:
    // only the deadline asked for stops the call this early.
    assert!(
        took >= Duration::from_millis(300) && took < Duration::from_secs(4),
        "took {took:?}"
    );
    // The trapped instance was discarded; the next call gets a fresh one.
    assert!(!registry.remove("a1").unwrap());
    assert!(matches!(registry.lookup("a1"), Err(Error::Timeout(_))));
}

#[test]
fn a_call_that_allocates_without_bound_hits_the_memory_limit() {
    let (_tmp, registry) = open(Options::new().memory_limit(32 << 20));
    let err = registry.write(fields("a1", "u", "b", 1, "k")).unwrap_err();
    assert!(
        matches!(err, Error::MemoryLimit(limit) if limit == 32 << 20),
        "{err}"
    );
    assert!(
        !registry.remove("a1").unwrap(),
        "the registry works after the trap"
    );
}

#[test]
fn a_call_that_exhausts_its_stack_fails_without_harming_the_host() {
    let (_tmp, registry) = open(Options::new());
    let err = registry.cleanup_stale(Duration::ZERO).unwrap_err();
    assert!(matches!(&err, Error::Trap(_)), "{err:?}");
    let why = agentmux_registry_core::cli::with_causes(&err);
    assert!(why.contains("call stack exhausted"), "{why}");
    assert!(!registry.remove("a1").unwrap());
}

#[tokio::test(flavor = "current_thread")]
async fn limits_hold_for_async_calls_inside_a_runtime() {
    let tmp = tempfile::tempdir().unwrap();
    let registry = agentmux_registry::Registry::open_with(
        tmp.path(),
        misbehaving(Options::new().call_timeout(Duration::from_millis(200))),
    )
    .unwrap();
    assert!(matches!(
        registry.lookup("a1").await,
        Err(Error::Timeout(_))
    ));
}

/// An operation that makes several guest calls on one instance (a listing:
/// constructor, then batches) whose second call traps: the instance must not
/// go back to the pool. The misbehaving `remove` reports whether its instance
/// trapped before.
#[test]
fn an_instance_whose_second_call_trapped_is_never_reused() {
    let (_tmp, registry) = open(Options::new());
    let err = registry.list().unwrap_err();
    assert!(matches!(&err, Error::Trap(_)), "{err:?}");
    assert!(
        !registry.remove("a1").unwrap(),
        "the next call ran on a fresh instance"
    );
    // The same after a stack overflow in a sweep's batch (its second call).
    assert!(registry.cleanup_stale(Duration::ZERO).is_err());
    assert!(!registry.remove("a1").unwrap());
}

#[test]
fn the_longest_call_timeout_means_no_practical_limit() {
    let (_tmp, registry) = open(Options::new().call_timeout(Duration::MAX));
    // `remove` returns at once; a wrapped deadline would trap it at once.
    assert!(!registry.remove("a1").unwrap());
    let tmp = tempfile::tempdir().unwrap();
    let real = Registry::open_with(tmp.path(), Options::new().call_timeout(Duration::MAX)).unwrap();
    real.write(fields("a", "u", "b", 1, "k")).unwrap();
    assert!(real.lookup("a").unwrap().is_some());
}
