//! Every field and case crosses the contract both ways unchanged: what the
//! host sends is what the component stores, and what it returns is what it
//! stored. A field dropped or swapped in either side's mapping fails here.

use agentmux_registry::blocking::Registry;
use agentmux_registry::{EntryFields, Owner, Renewal};
use agentmux_registry_tests::Fixture;

/// Fields whose every value differs from every other, options all set.
fn distinct_fields() -> EntryFields {
    EntryFields {
        agent_id: "agent-id".into(),
        local_url: "http://127.0.0.1:1111".into(),
        block_id: "block-id".into(),
        pid: 2_222_222,
        auth_key: "auth-key".into(),
        channel: "channel".into(),
        registration_nonce: 5_555,
        pid_started: Some(3_333),
        pid_namespace: Some(4_444),
        beat_interval_ms: Some(6_666),
        extra: vec![
            ("zz-extra".into(), r#"{"b":[1,2],"a":null}"#.into()),
            ("aa-extra".into(), r#""text""#.into()),
        ],
    }
}

#[test]
fn every_entry_field_is_stored_and_returned_as_given() {
    let fixture = Fixture::new();
    let registry = Registry::open(fixture.data_dir()).unwrap();
    let fields = distinct_fields();
    let written = registry.write(fields.clone()).unwrap();
    assert_eq!(written.fields(), fields, "as returned by write");
    assert!(written.updated_at > 0);
    let on_disk: serde_json::Value =
        serde_json::from_str(&fixture.read_raw("agent-id.json")).unwrap();
    assert_eq!(on_disk["pid_ns"], 4_444, "{on_disk}");
    assert_eq!(on_disk["pid_started"], 3_333, "{on_disk}");
    assert_eq!(on_disk["beat_interval_ms"], 6_666, "{on_disk}");
    assert_eq!(on_disk["channel"], "channel", "{on_disk}");
    assert_eq!(on_disk["registration_nonce"], 5_555, "{on_disk}");
    let keys: Vec<&String> = on_disk.as_object().unwrap().keys().collect();
    assert_eq!(keys[keys.len() - 2..], ["zz-extra", "aa-extra"], "in order");
    assert_eq!(registry.lookup("agent-id").unwrap(), Some(written.clone()));
    assert_eq!(registry.list().unwrap(), vec![written]);
}

#[test]
fn every_owner_field_decides_a_conditional_removal() {
    let fixture = Fixture::new();
    let registry = Registry::open(fixture.data_dir()).unwrap();
    let entry = registry.write(distinct_fields()).unwrap();
    let owner = Owner::of(&entry);
    for wrong in [
        Owner {
            pid: 1,
            ..owner.clone()
        },
        Owner {
            auth_key: "other".into(),
            ..owner.clone()
        },
        Owner {
            registration_nonce: 5_556,
            ..owner.clone()
        },
        Owner {
            registration_nonce: 0,
            ..owner.clone()
        },
    ] {
        assert!(
            !registry.remove_owned("agent-id", &wrong).unwrap(),
            "{wrong:?}"
        );
    }
    assert!(registry.remove_owned("agent-id", &owner).unwrap());
}

#[test]
fn every_renewal_case_is_reported_as_the_component_decided() {
    let fixture = Fixture::new();
    let registry = Registry::open(fixture.data_dir()).unwrap();
    let fields = distinct_fields();
    assert_eq!(registry.renew(fields.clone()).unwrap(), Renewal::Restored);
    assert_eq!(registry.renew(fields.clone()).unwrap(), Renewal::Refreshed);
    let successor = EntryFields {
        registration_nonce: 6_666,
        ..fields.clone()
    };
    registry.write(successor).unwrap();
    assert_eq!(registry.renew(fields).unwrap(), Renewal::Superseded);
}

#[test]
fn every_sweep_progress_field_is_reported() {
    let fixture = Fixture::new();
    let registry = Registry::open(fixture.data_dir()).unwrap();
    registry.write(distinct_fields()).unwrap();
    fixture.write_raw("malformed.json", "{");
    let mut last = None;
    let removed = registry
        .cleanup_stale_with_progress(std::time::Duration::from_secs(3600), |p| last = Some(p))
        .unwrap();
    let last = last.expect("progress reported");
    assert_eq!(
        (last.examined, last.removed, last.failed, last.done),
        (2, 1, 0, true),
        "{last:?}"
    );
    assert_eq!(last.first_failure, None);
    assert_eq!(removed, 1);
}
