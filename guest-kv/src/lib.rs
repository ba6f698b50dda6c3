//! The agentmux registry component for a key-value store: the exports of
//! the `agent-registry-kv` world, each one of core's [`kv`] rules run on
//! the `store` its host grants. The component names keys below the host's
//! prefix only; it has no file system and no network.
//!
//! [`kv`]: agentmux_registry_core::kv
#![cfg(target_family = "wasm")]

use agentmux_registry_core::kv::{self, Layout, Stored};
use agentmux_registry_core::{same_shape, shared_records, Error};

wit_bindgen::generate!({
    path: "../wit/0.3.0",
    world: "agent-registry-kv",
});

use agentmux::registry::store;
use exports::agentmux::registry::kv_registry as wit;

/// The host's store, through the `store` import.
struct HostStore;

impl From<store::Stored> for Stored {
    fn from(s: store::Stored) -> Stored {
        Stored {
            key: s.key,
            value: s.value,
            revision: s.revision,
        }
    }
}

impl kv::Store for HostStore {
    fn get(&mut self, key: &str) -> Result<Option<Stored>, String> {
        Ok(store::get(key)?.map(Into::into))
    }
    fn put(&mut self, key: &str, value: &[u8], lease: Option<u64>) -> Result<(), String> {
        store::put(key, value, lease)
    }
    fn put_if_revision(
        &mut self,
        key: &str,
        value: &[u8],
        lease: Option<u64>,
        revision: u64,
    ) -> Result<bool, String> {
        store::put_if_revision(key, value, lease, revision)
    }
    fn delete_if_revision(&mut self, key: &str, revision: u64) -> Result<bool, String> {
        store::delete_if_revision(key, revision)
    }
    fn range(
        &mut self,
        prefix: &str,
        after: Option<&str>,
        limit: u32,
    ) -> Result<(Vec<Stored>, bool), String> {
        let page = store::range(prefix, after, limit)?;
        Ok((page.items.into_iter().map(Into::into).collect(), page.more))
    }
}

shared_records!(guest: wit);
same_shape!(enum wit::Layout => Layout { PerChannel, Shared });

fn wire(e: Error) -> wit::RegistryError {
    match e {
        Error::InvalidAgentId(m) => wit::RegistryError::InvalidAgentId(m),
        Error::InvalidField(m) => wit::RegistryError::InvalidField(m),
        Error::Conflict(m) => wit::RegistryError::Conflict(m),
        Error::Io(m) => wit::RegistryError::Io(m),
    }
}

/// The WASI wall clock, in Unix milliseconds.
fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

struct Component;

impl wit::Guest for Component {
    fn kv_write(
        layout: wit::Layout,
        fields: wit::EntryFields,
        lease: Option<u64>,
    ) -> Result<wit::AgentEntry, wit::RegistryError> {
        kv::write(
            &mut HostStore,
            layout.into(),
            fields.into(),
            lease,
            now_ms(),
        )
        .map(Into::into)
        .map_err(wire)
    }

    fn kv_renew(
        layout: wit::Layout,
        fields: wit::EntryFields,
        lease: Option<u64>,
    ) -> Result<wit::Renewal, wit::RegistryError> {
        kv::renew(
            &mut HostStore,
            layout.into(),
            fields.into(),
            lease,
            now_ms(),
        )
        .map(Into::into)
        .map_err(wire)
    }

    fn kv_remove(
        layout: wit::Layout,
        agent_id: String,
        channel: Option<String>,
    ) -> Result<bool, wit::RegistryError> {
        kv::remove(&mut HostStore, layout.into(), &agent_id, channel.as_deref()).map_err(wire)
    }

    fn kv_remove_owned(
        layout: wit::Layout,
        agent_id: String,
        owner: wit::Owner,
    ) -> Result<bool, wit::RegistryError> {
        kv::remove_owned(&mut HostStore, layout.into(), &agent_id, &owner.into()).map_err(wire)
    }

    fn kv_evict(layout: wit::Layout, judged: wit::AgentEntry) -> Result<bool, wit::RegistryError> {
        kv::evict(&mut HostStore, layout.into(), &judged.into()).map_err(wire)
    }

    fn kv_list_page(
        layout: wit::Layout,
        after: Option<String>,
        max_entries: u32,
    ) -> Result<wit::EntryPage, wit::RegistryError> {
        let (entries, next) =
            kv::list_page(&mut HostStore, layout.into(), after.as_deref(), max_entries)
                .map_err(wire)?;
        Ok(wit::EntryPage {
            entries: entries.into_iter().map(Into::into).collect(),
            next,
        })
    }

    fn kv_sweep_page(
        layout: wit::Layout,
        after: Option<String>,
        max_keys: u32,
        max_age_ms: u64,
    ) -> Result<wit::SweepPage, wit::RegistryError> {
        let swept = kv::sweep_page(
            &mut HostStore,
            layout.into(),
            after.as_deref(),
            max_keys,
            max_age_ms,
            now_ms(),
        )
        .map_err(wire)?;
        Ok(wit::SweepPage {
            examined: swept.examined,
            removed: swept.removed,
            next: swept.next,
        })
    }

    fn kv_entry_key(
        layout: wit::Layout,
        agent_id: String,
        channel: String,
    ) -> Result<String, wit::RegistryError> {
        kv::entry_key(layout.into(), &agent_id, &channel).map_err(wire)
    }

    fn kv_entry_at(layout: wit::Layout, key: String, value: Vec<u8>) -> Option<wit::AgentEntry> {
        kv::entry_at(layout.into(), &key, &value).map(Into::into)
    }

    fn kv_lookup_all(
        layout: wit::Layout,
        agent_id: String,
    ) -> Result<Vec<wit::AgentEntry>, wit::RegistryError> {
        let found = kv::lookup_all(&mut HostStore, layout.into(), &agent_id).map_err(wire)?;
        Ok(found.into_iter().map(Into::into).collect())
    }

    fn kv_lookup(
        layout: wit::Layout,
        agent_id: String,
    ) -> Result<Option<wit::AgentEntry>, wit::RegistryError> {
        kv::lookup(&mut HostStore, layout.into(), &agent_id)
            .map(|e| e.map(Into::into))
            .map_err(wire)
    }
}

export!(Component);
