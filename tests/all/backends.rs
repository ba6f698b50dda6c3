//! One contract, two backends: each test body here runs on a data dir and
//! on etcd (a one-member cluster on loopback that the test starts; Linux,
//! where Debian's etcd is installed, and required in CI). What differs
//! between the backends is how bytes are kept, never a rule.

use std::time::Duration;

use agentmux_registry::blocking::Registry;
use agentmux_registry::watch::{Change, Start};
use agentmux_registry::{EntryFields, Error, Owner, Registration, Renewal};
use agentmux_registry_tests::Fixture;

/// Runs `body` on a file registry, then on an etcd registry, each new and
/// empty; `shared` picks the shared layout. `body` gets the backend's name
/// for its messages.
fn on_both_backends(shared: bool, body: impl Fn(&Registry, &str)) {
    let fixture = Fixture::new();
    let files = if shared {
        Registry::open_shared(fixture.data_dir().join("shared")).unwrap()
    } else {
        Registry::open(fixture.data_dir()).unwrap()
    };
    body(&files, "files");
    #[cfg(target_os = "linux")]
    {
        let Some(cluster) = agentmux_registry_tests::etcd::Cluster::start(1) else {
            return;
        };
        let etcd = agentmux_registry::Etcd::from_list(&cluster.endpoints()).prefix("/contract/");
        let registry = if shared {
            Registry::open_etcd_shared(&etcd).unwrap()
        } else {
            Registry::open_etcd(&etcd).unwrap()
        };
        assert!(registry.is_etcd());
        body(&registry, "etcd");
    }
}

fn fields(agent_id: &str, channel: &str, nonce: u64) -> EntryFields {
    EntryFields {
        agent_id: agent_id.into(),
        local_url: "http://127.0.0.1:4100".into(),
        block_id: format!("block-{agent_id}"),
        pid: 4242,
        auth_key: format!("key-{agent_id}"),
        channel: channel.into(),
        registration_nonce: nonce,
        ..EntryFields::default()
    }
}

#[test]
fn every_field_round_trips_and_ids_are_case_insensitive() {
    on_both_backends(false, |registry, backend| {
        let given = EntryFields {
            pid_started: Some(3_333),
            pid_namespace: Some(4_444),
            beat_interval_ms: Some(6_666),
            extra: vec![
                ("zz-extra".into(), r#"{"b":[1,2],"a":null}"#.into()),
                ("aa-extra".into(), r#""text""#.into()),
            ],
            ..fields("Agent-X", "stable", 5_555)
        };
        let written = registry.write(given.clone()).unwrap();
        assert_eq!(written.fields(), given, "{backend}: as returned by write");
        assert!(written.updated_at > 0, "{backend}");
        let found = registry.lookup("agent-x").unwrap();
        assert_eq!(
            found.as_ref(),
            Some(&written),
            "{backend}: any spelling finds it"
        );
        assert_eq!(registry.lookup("agent-y").unwrap(), None, "{backend}");
        assert_eq!(
            registry.lookup_all("AGENT-X").unwrap(),
            vec![written],
            "{backend}"
        );
        assert!(registry.remove("AGENT-x").unwrap(), "{backend}");
        assert!(
            !registry.remove("agent-x").unwrap(),
            "{backend}: nothing left"
        );
        assert_eq!(registry.lookup("Agent-X").unwrap(), None, "{backend}");
    });
}

#[test]
fn bad_input_is_refused_with_its_reason() {
    on_both_backends(false, |registry, backend| {
        let empty = registry.write(fields("", "", 0));
        assert!(
            matches!(empty, Err(Error::InvalidAgentId(_))),
            "{backend}: {empty:?}"
        );
        let long = registry.write(EntryFields {
            local_url: "x".repeat(2049),
            ..fields("a", "", 0)
        });
        assert!(
            matches!(long, Err(Error::InvalidField(_))),
            "{backend}: {long:?}"
        );
        let unowned = registry.renew(fields("a", "", 0));
        assert!(
            matches!(unowned, Err(Error::InvalidField(_))),
            "{backend}: {unowned:?}"
        );
        let too_long_id = registry.lookup(&"x".repeat(300));
        assert!(
            matches!(too_long_id, Err(Error::InvalidAgentId(_))),
            "{backend}: {too_long_id:?}"
        );
        assert!(
            registry.list().unwrap().is_empty(),
            "{backend}: nothing was stored"
        );
    });
}

#[test]
fn renewals_refresh_restore_and_never_take_a_successors_id() {
    on_both_backends(false, |registry, backend| {
        let mine = fields("a", "", 11);
        assert_eq!(
            registry.renew(mine.clone()).unwrap(),
            Renewal::Restored,
            "{backend}"
        );
        assert_eq!(
            registry.renew(mine.clone()).unwrap(),
            Renewal::Refreshed,
            "{backend}"
        );
        registry.write(fields("a", "", 22)).unwrap();
        assert_eq!(
            registry.renew(mine.clone()).unwrap(),
            Renewal::Superseded,
            "{backend}"
        );
        let holder = registry.lookup("a").unwrap().unwrap();
        assert_eq!(
            holder.registration_nonce, 22,
            "{backend}: the successor stays"
        );
    });
}

#[test]
fn conditional_removals_spare_every_other_registration() {
    on_both_backends(false, |registry, backend| {
        let entry = registry.write(fields("a", "", 7)).unwrap();
        let owner = Owner::of(&entry);
        for other in [
            Owner {
                pid: 1,
                ..owner.clone()
            },
            Owner {
                auth_key: "other".into(),
                ..owner.clone()
            },
            Owner {
                registration_nonce: 8,
                ..owner.clone()
            },
        ] {
            assert!(
                !registry.remove_owned("a", &other).unwrap(),
                "{backend}: {other:?}"
            );
        }
        // An eviction of what was judged spares an entry rewritten since.
        let judged = entry.clone();
        std::thread::sleep(Duration::from_millis(2));
        let renewed = registry.write(fields("a", "", 7)).unwrap();
        assert_ne!(judged.updated_at, renewed.updated_at, "{backend}");
        assert!(
            !registry.evict(&judged).unwrap(),
            "{backend}: rewritten since"
        );
        assert!(registry.remove_owned("A", &owner).unwrap(), "{backend}");
        assert_eq!(registry.lookup("a").unwrap(), None, "{backend}");
        let plain = registry.write(fields("b", "", 0)).unwrap();
        assert!(
            !registry.remove_owned("b", &Owner::of(&plain)).unwrap(),
            "{backend}: nonce 0"
        );
        assert!(
            registry.evict(&plain).unwrap(),
            "{backend}: evicts plain writes"
        );
    });
}

#[test]
fn listings_return_every_entry_once_sorted_by_id() {
    on_both_backends(false, |registry, backend| {
        // More than one batch of the listing.
        let ids: Vec<String> = (0..300).map(|i| format!("agent-{i:03}")).collect();
        for id in ids.iter().rev() {
            registry.write(fields(id, "", 0)).unwrap();
        }
        let listed: Vec<String> = registry
            .list()
            .unwrap()
            .into_iter()
            .map(|e| e.agent_id)
            .collect();
        assert_eq!(listed, ids, "{backend}");
        let mut paged: Vec<String> = registry
            .listing()
            .flat_map(|batch| batch.unwrap())
            .map(|e| e.agent_id)
            .collect();
        paged.sort();
        assert_eq!(paged, ids, "{backend}: the listing in batches");
        let removed = registry.cleanup_stale(Duration::from_secs(3600)).unwrap();
        assert_eq!(removed, 0, "{backend}: nothing is an hour old");
    });
}

#[test]
fn the_shared_layout_keeps_an_entry_per_channel_freshest_first() {
    on_both_backends(true, |registry, backend| {
        registry.write(fields("a", "stable", 1)).unwrap();
        std::thread::sleep(Duration::from_millis(2));
        registry.write(fields("A", "dev-a", 2)).unwrap();
        registry.write(fields("b", "stable", 3)).unwrap();
        let channels: Vec<String> = registry
            .lookup_all("a")
            .unwrap()
            .into_iter()
            .map(|e| e.channel)
            .collect();
        assert_eq!(channels, ["dev-a", "stable"], "{backend}");
        assert_eq!(
            registry.lookup("a").unwrap().unwrap().channel,
            "dev-a",
            "{backend}"
        );
        let no_channel = registry.write(fields("c", "", 0));
        assert!(
            matches!(no_channel, Err(Error::InvalidField(_))),
            "{backend}: {no_channel:?}"
        );
        assert!(registry.remove_channel("a", "dev-a").unwrap(), "{backend}");
        assert_eq!(registry.lookup_all("a").unwrap().len(), 1, "{backend}");
        let first = registry.lookup("a").unwrap().unwrap();
        assert!(
            registry.remove_owned("a", &Owner::of(&first)).unwrap(),
            "{backend}"
        );
        assert_eq!(registry.list().unwrap().len(), 1, "{backend}: b is left");
        assert!(registry.remove("b").unwrap(), "{backend}");
        assert!(registry.list().unwrap().is_empty(), "{backend}");
    });
}

#[test]
fn a_watch_reports_current_entries_then_every_change() {
    on_both_backends(false, |registry, backend| {
        let before = registry.write(fields("before", "", 0)).unwrap();
        let mut watch = registry.watch(Start::Current).unwrap();
        assert_eq!(
            watch.next().unwrap().unwrap(),
            Change::Put(before),
            "{backend}"
        );
        let added = registry.write(fields("Added", "", 0)).unwrap();
        assert_eq!(
            watch.next().unwrap().unwrap(),
            Change::Put(added),
            "{backend}"
        );
        assert!(registry.remove("added").unwrap());
        let removed = Change::Removed {
            agent_id: "Added".into(),
            channel: String::new(),
        };
        assert_eq!(watch.next().unwrap().unwrap(), removed, "{backend}");
    });
}

#[test]
fn a_registration_renews_its_entry_and_removes_it_when_dropped() {
    on_both_backends(false, |registry, backend| {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let registration = runtime
            .block_on(Registration::register(
                registry.as_async(),
                fields("held", "", 0),
                Duration::from_millis(200),
            ))
            .unwrap();
        assert_eq!(
            registration.wait_for_renewals(3, Duration::from_secs(30)),
            3,
            "{backend}"
        );
        let entry = registry.lookup("held").unwrap().unwrap();
        assert_eq!(entry.registration_nonce, registration.nonce(), "{backend}");
        assert!(
            entry.updated_at > registration.entry().updated_at,
            "{backend}: renewed"
        );
        drop(registration);
        assert_eq!(
            registry.lookup("held").unwrap(),
            None,
            "{backend}: removed on drop"
        );
    });
}

#[test]
fn a_renewal_racing_a_successor_never_overwrites_it() {
    // A renewal judges the entry, then replaces it only if it is still
    // what was judged. A renewal that replaced it unconditionally would,
    // in some of these races, write over the successor that registered in
    // between: the entry would end with the old nonce.
    on_both_backends(false, |registry, backend| {
        const TRIALS: u64 = 60;
        let mut overwritten = 0;
        for trial in 0..TRIALS {
            let id = format!("race-{trial}");
            registry.write(fields(&id, "", 1)).unwrap();
            let superseded = std::sync::atomic::AtomicBool::new(false);
            let stop = std::sync::atomic::AtomicBool::new(false);
            std::thread::scope(|scope| {
                scope.spawn(|| {
                    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                        if registry.renew(fields(&id, "", 1)).unwrap() == Renewal::Superseded {
                            superseded.store(true, std::sync::atomic::Ordering::Relaxed);
                            break;
                        }
                    }
                });
                std::thread::sleep(Duration::from_micros(300 * (trial % 7)));
                registry.write(fields(&id, "", 2)).unwrap();
                // Superseded at once where renewals are conditional; a
                // renewal that overwrote the successor renews on instead.
                let deadline = std::time::Instant::now() + Duration::from_secs(2);
                while !superseded.load(std::sync::atomic::Ordering::Relaxed)
                    && std::time::Instant::now() < deadline
                {
                    std::thread::sleep(Duration::from_millis(1));
                }
                stop.store(true, std::sync::atomic::Ordering::Relaxed);
            });
            let holder = registry.lookup(&id).unwrap().unwrap();
            if holder.registration_nonce != 2 {
                overwritten += 1;
            }
        }
        assert_eq!(
            overwritten, 0,
            "{backend}: {overwritten} of {TRIALS} successors overwritten"
        );
    });
}
