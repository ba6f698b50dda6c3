//! The registry on etcd: what only a store with leases and watches does,
//! and what stays true when the cluster goes away. The contract itself runs
//! on both backends in `backends`; the fault tests of a three-member
//! cluster are in `etcd_faults`. Each test starts its own cluster on
//! loopback (Debian's etcd; skipped with a note where it is missing,
//! required in CI).

use std::process::Command;
use std::time::{Duration, Instant};

use agentmux_registry::blocking::Registry;
use agentmux_registry::watch::{Change, Start};
use agentmux_registry::{EntryFields, Error, Etcd, Options, Registration, Renewal};
use agentmux_registry_tests::etcd::Cluster;

fn fields(agent_id: &str, nonce: u64) -> EntryFields {
    EntryFields {
        agent_id: agent_id.into(),
        local_url: "http://10.1.0.1:8123".into(),
        block_id: "b".into(),
        pid: 4242,
        auth_key: "k".into(),
        registration_nonce: nonce,
        ..EntryFields::default()
    }
}

fn etcdctl(cluster: &Cluster, args: &[&str]) -> String {
    let out = Command::new("etcdctl")
        .env("ETCDCTL_API", "3")
        .args(["--endpoints", &cluster.endpoints()])
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "etcdctl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Revokes every lease of the cluster: what a host cut off for longer than
/// its leases' TTL finds when it is back.
fn revoke_every_lease(cluster: &Cluster) -> usize {
    let listed = etcdctl(cluster, &["lease", "list"]);
    let ids: Vec<&str> = listed
        .lines()
        .skip(1)
        .filter(|l| !l.trim().is_empty())
        .collect();
    for id in &ids {
        etcdctl(cluster, &["lease", "revoke", id.trim()]);
    }
    ids.len()
}

/// The lease `key` is attached to (0: none).
fn lease_of(cluster: &Cluster, key: &str) -> u64 {
    let out = etcdctl(cluster, &["get", key, "--write-out", "json"]);
    let json: serde_json::Value = serde_json::from_str(&out).unwrap();
    json["kvs"][0]["lease"].as_u64().unwrap_or(0)
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap()
}

/// The registry under `prefix` on `cluster`, with the default options.
fn open(cluster: &Cluster, prefix: &str) -> Registry {
    Registry::open_etcd(&Etcd::from_list(&cluster.endpoints()).prefix(prefix)).unwrap()
}

/// `fields`, registered with heartbeats every `beat`.
fn register(registry: &Registry, fields: EntryFields, beat: Duration) -> Registration {
    runtime()
        .block_on(Registration::register(registry.as_async(), fields, beat))
        .unwrap()
}

/// A component chosen for a registry on files is refused on etcd, which runs
/// its own, rather than silently ignored; opening contacts no cluster.
#[test]
fn a_registry_on_etcd_refuses_a_component_of_ones_own() {
    let etcd = Etcd::new(["http://127.0.0.1:9"]);
    // SAFETY: refused before the bytes are looked at.
    let options = unsafe { Options::new().precompiled_component(&b"junk"[..]) };
    for shared in [false, true] {
        let opened = if shared {
            Registry::open_etcd_shared_with(&etcd, options.clone())
        } else {
            Registry::open_etcd_with(&etcd, options.clone())
        };
        match opened {
            Err(Error::InvalidField(why)) => assert!(why.contains("not on etcd"), "{why}"),
            Err(other) => panic!("another error: {other}"),
            Ok(_) => panic!("the component was ignored"),
        }
    }
}

#[test]
fn a_lapsed_lease_is_granted_anew_with_the_entry() {
    let Some(cluster) = Cluster::start(1) else {
        return;
    };
    let registry = open(&cluster, "/lapsed/");
    let registration = register(&registry, fields("a", 0), Duration::from_secs(3600));
    let key = "/lapsed/agents/a.json";
    let first = lease_of(&cluster, key);
    assert_ne!(first, 0, "a registration's entry lives on a lease");
    assert_eq!(revoke_every_lease(&cluster), 1);
    assert_eq!(registry.lookup("a").unwrap(), None, "gone with its lease");
    assert!(registration.beat_now(Duration::from_secs(30)));
    let back = registry
        .lookup("a")
        .unwrap()
        .expect("restored by the next beat");
    assert_eq!(back.registration_nonce, registration.nonce());
    let second = lease_of(&cluster, key);
    assert!(
        second != 0 && second != first,
        "on a new lease: {first} then {second}"
    );
    assert!(!registration.is_superseded());
    // A plain write lives on no lease: it stays until removed.
    registry.write(fields("plain", 0)).unwrap();
    assert_eq!(lease_of(&cluster, "/lapsed/agents/plain.json"), 0);
}

#[test]
fn a_lapsed_lease_never_takes_over_a_successors_id() {
    let Some(cluster) = Cluster::start(1) else {
        return;
    };
    let registry = open(&cluster, "/successor/");
    let registration = register(&registry, fields("a", 0), Duration::from_secs(3600));
    revoke_every_lease(&cluster);
    // While the first owner was cut off, another registered the id.
    let successor = registry.write(fields("a", 77)).unwrap();
    assert!(registration.beat_now(Duration::from_secs(30)));
    assert!(
        registration.is_superseded(),
        "the lapsed registration stops"
    );
    assert_eq!(registry.lookup("a").unwrap(), Some(successor));
    let removed = runtime().block_on(registration.unregister()).unwrap();
    assert!(!removed, "nothing of the successor's is removed");
    assert_eq!(
        registry.lookup("a").unwrap().unwrap().registration_nonce,
        77
    );
}

#[test]
fn keys_outside_the_prefix_are_never_seen_or_changed() {
    let Some(cluster) = Cluster::start(1) else {
        return;
    };
    let entry = |id: &str| {
        serde_json::json!({
            "agent_id": id, "local_url": "http://x:1", "block_id": "b", "pid": 1,
            "updated_at": 1, "auth_key": "stolen", "channel": "", "registration_nonce": 0
        })
        .to_string()
    };
    // Valid entries next to the prefix: a sibling whose name extends it,
    // the parent, and another user's.
    for key in [
        "/pre-x/agents/a.json",
        "/agents/a.json",
        "/agentmux/other/agents/a.json",
    ] {
        etcdctl(&cluster, &["put", key, &entry("a")]);
    }
    // Inside it, a valid entry at a key not its own is no entry either.
    etcdctl(&cluster, &["put", "/pre/agents/b.json", &entry("a")]);
    let registry = open(&cluster, "/pre/");
    assert_eq!(registry.lookup("a").unwrap(), None);
    assert!(registry.list().unwrap().is_empty());
    assert!(!registry.remove("a").unwrap());
    let mut watch = registry.watch(Start::Current).unwrap();
    // Changes next to the prefix while the watch runs are not its own.
    for key in [
        "/pre-x/agents/c.json",
        "/agents/c.json",
        "/pr/agents/c.json",
    ] {
        etcdctl(&cluster, &["put", key, &entry("c")]);
    }
    registry.write(fields("a", 0)).unwrap();
    match watch.next().unwrap().unwrap() {
        Change::Put(e) => assert_eq!((e.agent_id.as_str(), e.auth_key.as_str()), ("a", "k")),
        other => panic!("{other:?}"),
    }
    for key in [
        "/pre-x/agents/a.json",
        "/agents/a.json",
        "/agentmux/other/agents/a.json",
    ] {
        assert!(
            etcdctl(&cluster, &["get", key]).contains("stolen"),
            "{key} untouched"
        );
    }
}

#[test]
fn a_cluster_out_of_reach_fails_calls_within_their_deadline_and_registrations_return() {
    let Some(mut cluster) = Cluster::start(1) else {
        return;
    };
    let etcd = Etcd::from_list(&cluster.endpoints()).prefix("/outage/");
    let timeout = Duration::from_secs(2);
    let registry = Registry::open_etcd_with(&etcd, Options::new().call_timeout(timeout)).unwrap();
    let registration = register(&registry, fields("held", 0), Duration::from_millis(200));
    registration.wait_for_renewals(2, Duration::from_secs(30));
    let mut watch = registry.watch(Start::Now).unwrap();

    cluster.kill(0);
    for call in 0..3 {
        let started = Instant::now();
        let failed = match call {
            0 => registry.lookup("held").map(|_| ()),
            1 => registry.write(fields("during", 0)).map(|_| ()),
            _ => registry.list().map(|_| ()),
        };
        let took = started.elapsed();
        assert!(
            matches!(failed, Err(Error::Unavailable(_))),
            "call {call}: {failed:?}"
        );
        assert!(
            took <= timeout + Duration::from_millis(1500),
            "call {call} took {took:?}"
        );
    }

    let down = Instant::now();
    cluster.restart(0);
    cluster.wait_healthy(Duration::from_secs(30));
    // The registration comes back by itself: renewed again, still its own.
    let renewals = registration.renewals();
    assert!(
        registration.wait_for_renewals(renewals + 3, Duration::from_secs(30)) >= renewals + 3,
        "renewals resumed"
    );
    let recovered = down.elapsed();
    let entry = registry.lookup("held").unwrap().expect("registered again");
    assert_eq!(entry.registration_nonce, registration.nonce());
    assert!(!registration.is_superseded());
    // And the watch resumes where it was: a write after the outage arrives.
    let after = registry.write(fields("after", 0)).unwrap();
    let seen = loop {
        match watch.next().unwrap().unwrap() {
            Change::Put(e) if e.agent_id == "after" => break e,
            _ => continue,
        }
    };
    assert_eq!(seen, after);
    eprintln!("etcd restarted; registration renewed again {recovered:?} after the restart began");
}

#[test]
fn renewing_keeps_its_lease_alive_and_is_superseded_by_a_successor() {
    let Some(cluster) = Cluster::start(1) else {
        return;
    };
    let registry = open(&cluster, "/renew/");
    let mine = EntryFields {
        beat_interval_ms: Some(1000),
        ..fields("a", 5)
    };
    assert_eq!(registry.renew(mine.clone()).unwrap(), Renewal::Restored);
    let lease = lease_of(&cluster, "/renew/agents/a.json");
    assert_ne!(lease, 0);
    assert_eq!(registry.renew(mine.clone()).unwrap(), Renewal::Refreshed);
    assert_eq!(
        lease_of(&cluster, "/renew/agents/a.json"),
        lease,
        "kept alive, not replaced"
    );
    registry.write(fields("a", 6)).unwrap();
    assert_eq!(registry.renew(mine).unwrap(), Renewal::Superseded);
    // The superseded registration's lease is revoked: it has nothing to keep.
    assert!(!etcdctl(&cluster, &["lease", "list"]).contains(&format!("{lease:x}")));
}

#[test]
fn tls_client_certificates_and_users_guard_the_wire() {
    let certs_dir = tempfile::tempdir().unwrap();
    let certs = agentmux_registry_tests::etcd::Certificates::make(certs_dir.path());
    let Some(cluster) = Cluster::start_with(1, Some(&certs)) else {
        return;
    };
    let read = |p: std::path::PathBuf| std::fs::read(p).unwrap();
    let short = Options::new().call_timeout(Duration::from_secs(3));
    let trusted = Etcd::from_list(&cluster.endpoints())
        .prefix("/tls/")
        .ca_certificate(read(certs.ca()));
    // The CA and a client certificate: served.
    let registry = Registry::open_etcd_with(
        &trusted
            .clone()
            .client_identity(read(certs.client_cert()), read(certs.client_key())),
        short.clone(),
    )
    .unwrap();
    registry.write(fields("over-tls", 0)).unwrap();
    assert_eq!(
        registry.lookup("over-tls").unwrap().unwrap().agent_id,
        "over-tls"
    );
    // No client certificate, no CA, or no TLS at all: refused, clearly.
    let plain = cluster.endpoints().replace("https://", "http://");
    for (what, etcd) in [
        ("no client certificate", trusted),
        (
            "no CA",
            Etcd::from_list(&cluster.endpoints()).prefix("/tls/"),
        ),
        ("no TLS", Etcd::from_list(&plain).prefix("/tls/")),
    ] {
        let started = Instant::now();
        let refused =
            Registry::open_etcd_with(&etcd, short.clone()).and_then(|r| r.lookup("over-tls"));
        assert!(
            matches!(refused, Err(Error::Unavailable(_))),
            "{what}: {refused:?}"
        );
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{what}: {:?}",
            started.elapsed()
        );
    }
}

#[test]
fn an_etcd_user_reaches_its_prefix_only_with_its_password() {
    let Some(mut cluster) = Cluster::start(1) else {
        return;
    };
    for args in [
        &["user", "add", "root:root-pw"][..],
        &["user", "add", "agent:agent-pw"],
        &["role", "add", "agentmux"],
        &[
            "role",
            "grant-permission",
            "agentmux",
            "readwrite",
            "--prefix=true",
            "/users/",
        ],
        &["user", "grant-role", "agent", "agentmux"],
        &["auth", "enable"],
    ] {
        cluster.etcdctl(args);
    }
    cluster.etcdctl_user("root:root-pw");
    let etcd = Etcd::from_list(&cluster.endpoints()).prefix("/users/");
    let short = Options::new().call_timeout(Duration::from_secs(3));
    let registry =
        Registry::open_etcd_with(&etcd.clone().user("agent", "agent-pw"), short.clone()).unwrap();
    let runtime = runtime();
    let registration = runtime
        .block_on(Registration::register(
            registry.as_async(),
            fields("a", 0),
            Duration::from_secs(3600),
        ))
        .unwrap();
    assert_eq!(
        registry.lookup("a").unwrap().unwrap().registration_nonce,
        registration.nonce()
    );
    assert!(runtime.block_on(registration.unregister()).unwrap());
    let wrong = Registry::open_etcd_with(&etcd.clone().user("agent", "wrong"), short.clone())
        .and_then(|r| r.lookup("a"));
    assert!(matches!(wrong, Err(Error::Unavailable(_))), "{wrong:?}");
    // A restart of the cluster voids the user's token: it is renewed.
    registry.write(fields("b", 0)).unwrap();
    cluster.restart(0);
    cluster.wait_healthy(Duration::from_secs(30));
    let again = (0..50).find_map(|_| match registry.lookup("b") {
        Ok(found) => Some(found),
        Err(_) => {
            std::thread::sleep(Duration::from_millis(100));
            None
        }
    });
    assert_eq!(
        again.flatten().unwrap().agent_id,
        "b",
        "served again after the restart"
    );
    let anonymous = Registry::open_etcd_with(&etcd, short.clone()).and_then(|r| r.lookup("a"));
    assert!(
        matches!(anonymous, Err(Error::Unavailable(_))),
        "{anonymous:?}"
    );
    // The user's role covers /users/ only: another prefix is refused.
    let elsewhere =
        Registry::open_etcd_with(&etcd.prefix("/other/").user("agent", "agent-pw"), short)
            .and_then(|r| r.lookup("a"));
    assert!(
        matches!(elsewhere, Err(Error::Unavailable(_))),
        "{elsewhere:?}"
    );
}

#[test]
fn listings_and_sweeps_page_through_big_values_and_keys_that_are_not_text() {
    let Some(cluster) = Cluster::start(1) else {
        return;
    };
    let registry = open(&cluster, "/pages/");
    for i in 0..300 {
        registry.write(fields(&format!("small-{i:03}"), 0)).unwrap();
    }
    // Entries near the 64 KiB limit: a page of 256 would be 16 MB.
    let big = format!("\"{}\"", "x".repeat(60_000));
    for i in 0..80 {
        let entry = EntryFields {
            extra: vec![("padding".into(), big.clone())],
            ..fields(&format!("big-{i:02}"), 0)
        };
        registry.write(entry).unwrap();
    }
    // Values no entry can be (1.4 MB each), and a key that is not text.
    let garbage = "g".repeat(1_400_000);
    for i in 0..4 {
        // Too long for an argument: etcdctl reads it from stdin.
        let mut put = Command::new("etcdctl")
            .env("ETCDCTL_API", "3")
            .args([
                "--endpoints",
                &cluster.endpoints(),
                "put",
                &format!("/pages/agents/junk-{i}.json"),
            ])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap();
        std::io::Write::write_all(&mut put.stdin.take().unwrap(), garbage.as_bytes()).unwrap();
        assert!(put.wait().unwrap().success());
    }
    {
        use std::os::unix::ffi::OsStrExt;
        let key = std::ffi::OsStr::from_bytes(b"/pages/agents/small-150\xff.json");
        let out = Command::new("etcdctl")
            .env("ETCDCTL_API", "3")
            .args(["--endpoints", &cluster.endpoints(), "put"])
            .arg(key)
            .arg("x")
            .output()
            .unwrap();
        assert!(out.status.success());
    }
    assert_eq!(registry.list().unwrap().len(), 380, "every entry, once");
    let removed = registry.cleanup_stale(Duration::from_secs(3600)).unwrap();
    assert_eq!(removed, 4, "the values that are no entries");
    assert_eq!(registry.list().unwrap().len(), 380);
    let mut watch = registry.watch(Start::Current).unwrap();
    let mut seen = 0;
    while seen < 380 {
        assert!(matches!(watch.next().unwrap().unwrap(), Change::Put(_)));
        seen += 1;
    }
}

/// Requests that time out together on a stopped member all move on to the
/// next member, and stay there: each fails over from the member it went to,
/// never from where another request moved them meanwhile (three timing out
/// at once could otherwise send requests round to the stopped member, or
/// past the next one). Five registries, each starting on the stopped member.
#[test]
fn requests_timing_out_together_on_a_stopped_member_move_on_once() {
    let Some(cluster) = Cluster::start(3) else {
        return;
    };
    open(&cluster, "/failover/").write(fields("a", 1)).unwrap();
    cluster.signal(0, "STOP");
    // Served once first: a leader among the others is elected meanwhile if
    // member 0 led (requests timing out on member 1 then move on rightly).
    let warm = open(&cluster, "/failover/");
    assert!(warm.lookup("a").unwrap().is_some());
    let in_use: Vec<Option<usize>> = (0..5)
        .map(|_| {
            let registry = open(&cluster, "/failover/");
            std::thread::scope(|s| {
                for _ in 0..3 {
                    s.spawn(|| assert!(registry.lookup("a").unwrap().is_some()));
                }
            });
            registry.etcd_member_in_use()
        })
        .collect();
    cluster.signal(0, "CONT");
    assert_eq!(in_use, [Some(1); 5]);
}

/// No lease of this process outlives what lives on it: a registration's
/// write that is refused revokes the lease granted for it, and an
/// unregistration revokes its lease even when its entry was removed by hand.
#[test]
fn no_lease_outlives_the_entries_on_it() {
    let Some(cluster) = Cluster::start(1) else {
        return;
    };
    let registry = open(&cluster, "/leases/");
    let leases = || {
        etcdctl(&cluster, &["lease", "list"])
            .lines()
            .skip(1)
            .filter(|l| !l.trim().is_empty())
            .count()
    };
    let refused = EntryFields {
        block_id: "b".repeat(300),
        beat_interval_ms: Some(1000),
        ..fields("x", 7)
    };
    assert!(matches!(
        registry.write(refused),
        Err(Error::InvalidField(_))
    ));
    assert_eq!(leases(), 0, "the refused write's lease");
    // A beat far off: nothing renews (and restores) the entry meanwhile.
    let registration = register(&registry, fields("b", 0), Duration::from_secs(60));
    assert_eq!(leases(), 1);
    etcdctl(&cluster, &["del", "/leases/agents/b.json"]);
    assert!(!runtime().block_on(registration.unregister()).unwrap());
    assert_eq!(leases(), 0, "the unregistered registration's lease");
}
