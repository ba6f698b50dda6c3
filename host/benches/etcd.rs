//! The registry on etcd against etcd's own Rust client, in the same run, on
//! one etcd member on loopback that the bench starts (Debian's `etcd`):
//!
//! - lookup (a guest call: one range request) against the client's bare
//!   get of the same key;
//! - write (a guest call: one put) against the client's bare put;
//! - renew (a keep-alive, then a guest call: a get and a transaction)
//!   against the bare keep-alive, get and transaction it is made of;
//!
//! each as the median of 15 samples of 200 operations, and the ratio. The
//! difference is what the sandbox costs there: a fresh component instance
//! per call, the guest's work, and the hop to the backend's runtime.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use agentmux_registry::blocking::Registry;
use agentmux_registry::{EntryFields, Etcd};
use etcd_client::{Client, Compare, CompareOp, PutOptions, Txn, TxnOp};

const SAMPLES: usize = 15;
const BATCH: usize = 200;

/// Per-operation median over `SAMPLES` batches of `BATCH` operations.
fn median_per_op(mut op: impl FnMut(usize)) -> Duration {
    for i in 0..BATCH {
        op(i); // warm
    }
    let mut samples: Vec<Duration> = (0..SAMPLES)
        .map(|_| {
            let started = Instant::now();
            for i in 0..BATCH {
                op(i);
            }
            started.elapsed() / BATCH as u32
        })
        .collect();
    samples.sort();
    samples[SAMPLES / 2]
}

/// The etcd process, killed when dropped, and its data directory, removed
/// after it.
struct Member {
    process: Child,
    _data: tempfile::TempDir,
}

impl Drop for Member {
    fn drop(&mut self) {
        let _ = self.process.kill();
        let _ = self.process.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn start_etcd() -> Option<(Member, String)> {
    let dir = tempfile::tempdir().unwrap();
    let client = format!("http://127.0.0.1:{}", free_port());
    let peer = format!("http://127.0.0.1:{}", free_port());
    let child = Command::new("etcd")
        .arg("--data-dir")
        .arg(dir.path())
        .args([
            "--listen-client-urls",
            &client,
            "--advertise-client-urls",
            &client,
        ])
        .args([
            "--listen-peer-urls",
            &peer,
            "--initial-advertise-peer-urls",
            &peer,
        ])
        .args(["--initial-cluster", &format!("default={peer}")])
        .args(["--logger", "zap", "--log-level", "error"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .ok()?;
    let member = Member {
        process: child,
        _data: dir,
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    while Command::new("etcdctl")
        .env("ETCDCTL_API", "3")
        .args(["--endpoints", &client, "endpoint", "health"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map_or(true, |s| !s.success())
    {
        assert!(Instant::now() < deadline, "etcd did not start");
        std::thread::sleep(Duration::from_millis(100));
    }
    Some((member, client))
}

fn row(what: &str, registry: Duration, bare: Duration, bare_what: &str) {
    println!(
        "{what:<8} registry {registry:>9.1?}   etcd client {bare:>9.1?} ({bare_what})   ratio {:.2}x   sandbox and rules {:>8.1?}",
        registry.as_secs_f64() / bare.as_secs_f64(),
        registry.saturating_sub(bare)
    );
}

fn main() {
    let Some((_member, endpoint)) = start_etcd() else {
        println!("etcd is not installed (Debian: etcd-server): nothing measured");
        return;
    };
    let prefix = "/bench/";
    let registry = Registry::open_etcd(&Etcd::from_list(&endpoint).prefix(prefix)).unwrap();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut client = runtime
        .block_on(Client::connect([endpoint.as_str()], None))
        .unwrap();
    let fields = |i: usize| EntryFields {
        agent_id: format!("agent-{}", i % 100),
        local_url: "http://10.0.0.7:8123".into(),
        block_id: "block-1".into(),
        pid: 4242,
        auth_key: "key-0123456789abcdef".into(),
        ..EntryFields::default()
    };
    for i in 0..100 {
        registry.write(fields(i)).unwrap();
    }
    let value = registry.lookup("agent-1").unwrap().unwrap();
    let bytes = value.to_json();
    let key = |i: usize| format!("{prefix}agents/agent-{}.json", i % 100);

    let lookup = median_per_op(|i| {
        registry
            .lookup(&format!("agent-{}", i % 100))
            .unwrap()
            .unwrap();
    });
    let get = median_per_op(|i| {
        let got = runtime.block_on(client.get(key(i), None)).unwrap();
        assert_eq!(got.kvs().len(), 1);
    });
    row("lookup", lookup, get, "get");

    let write = median_per_op(|i| {
        registry.write(fields(i)).unwrap();
    });
    let put = median_per_op(|i| {
        runtime
            .block_on(client.put(key(i), bytes.clone(), None))
            .unwrap();
    });
    row("write", write, put, "put");

    // Renewals of registrations with a beat interval: each keeps its lease
    // alive, then rewrites the entry while it is still its own.
    let renewing = |i: usize| EntryFields {
        registration_nonce: 1 + (i % 100) as u64,
        beat_interval_ms: Some(10_000),
        ..fields(i)
    };
    for i in 0..100 {
        registry.renew(renewing(i)).unwrap();
    }
    let renew = median_per_op(|i| {
        registry.renew(renewing(i)).unwrap();
    });
    let lease = runtime.block_on(client.lease_grant(30, None)).unwrap().id();
    let bare_renew = median_per_op(|i| {
        runtime.block_on(async {
            client.lease_keep_alive(lease).await.unwrap();
            let got = client.get(key(i), None).await.unwrap();
            let revision = got.kvs()[0].mod_revision();
            let txn = Txn::new()
                .when([Compare::mod_revision(key(i), CompareOp::Equal, revision)])
                .and_then([TxnOp::put(
                    key(i),
                    bytes.clone(),
                    Some(PutOptions::new().with_lease(lease)),
                )]);
            assert!(client.txn(txn).await.unwrap().succeeded());
        });
    });
    row("renew", renew, bare_renew, "keep-alive, get, txn");
}
