//! A registry component that misbehaves on purpose: `lookup` never returns,
//! `write` allocates until memory runs out, a sweep's batch recurses until the
//! stack runs out, and a listing's second call (its first batch) marks the
//! instance broken and traps. `remove` behaves, and reports whether its
//! instance is one that trapped before: a host must never reuse those. In its
//! shared registry, `lookup-all-shared` never returns; the rest refuses.
#![cfg(target_family = "wasm")]

use std::sync::atomic::{AtomicBool, Ordering};

wit_bindgen::generate!({
    path: "../../wit/0.3.0",
    world: "agent-registry",
});

use exports::agentmux::registry::registry::{
    AgentEntry, EntryFields, Guest, GuestEntryListing, GuestSweep, Owner, RegistryError, Renewal,
    SweepProgress,
};
use exports::agentmux::registry::shared_registry as shared;

/// Set just before a trap: an instance that has it set is broken.
static BROKEN: AtomicBool = AtomicBool::new(false);

struct Misbehaving;

#[inline(never)]
#[allow(unconditional_recursion)]
fn recurse(depth: u64) -> u64 {
    std::hint::black_box(recurse(std::hint::black_box(depth + 1))) + 1
}

struct Listing;

impl GuestEntryListing for Listing {
    fn new() -> Self {
        Listing
    }

    fn next_batch(&self, _: u32) -> Result<Option<Vec<AgentEntry>>, RegistryError> {
        BROKEN.store(true, Ordering::SeqCst);
        std::process::abort()
    }
}

struct Sweep;

impl GuestSweep for Sweep {
    fn new(_: u64) -> Self {
        Sweep
    }

    fn next_batch(&self, _: u32) -> Result<SweepProgress, RegistryError> {
        BROKEN.store(true, Ordering::SeqCst);
        Ok(SweepProgress {
            examined: recurse(0),
            removed: 0,
            failed: 0,
            first_failure: None,
            done: true,
        })
    }
}

impl Guest for Misbehaving {
    type EntryListing = Listing;
    type Sweep = Sweep;

    fn write(_: EntryFields) -> Result<AgentEntry, RegistryError> {
        BROKEN.store(true, Ordering::SeqCst);
        let mut hoard: Vec<Vec<u8>> = Vec::new();
        loop {
            hoard.push(vec![1u8; 1 << 20]);
            std::hint::black_box(&hoard);
        }
    }

    fn renew(_: EntryFields) -> Result<Renewal, RegistryError> {
        Ok(Renewal::Superseded)
    }

    fn remove(_: String) -> Result<bool, RegistryError> {
        Ok(BROKEN.load(Ordering::SeqCst))
    }

    fn remove_owned(_: String, _: Owner) -> Result<bool, RegistryError> {
        Ok(false)
    }

    fn evict(_: String, _: AgentEntry) -> Result<bool, RegistryError> {
        Ok(false)
    }

    fn list_entries(_: u32) -> Result<Vec<AgentEntry>, RegistryError> {
        Ok(Vec::new())
    }

    fn cleanup_stale(_: u64) -> Result<u64, RegistryError> {
        Ok(recurse(0))
    }

    fn entry_file_name(agent_id: String) -> Result<String, RegistryError> {
        Ok(agent_id)
    }

    fn lookup_every(_: String) -> Result<Vec<AgentEntry>, RegistryError> {
        Ok(Vec::new())
    }

    fn entries_at(_: Vec<String>) -> Result<Vec<Option<AgentEntry>>, RegistryError> {
        Ok(Vec::new())
    }

    fn lookup(_: String) -> Result<Option<AgentEntry>, RegistryError> {
        BROKEN.store(true, Ordering::SeqCst);
        loop {
            std::hint::spin_loop();
        }
    }
}

/// The shared registry's calls: each refused, so a test that reaches one
/// fails with this message.
fn refused<T>() -> Result<T, RegistryError> {
    Err(RegistryError::Io(
        "not part of the misbehaving component".into(),
    ))
}

struct SharedListing;

impl shared::GuestSharedListing for SharedListing {
    fn new() -> Self {
        SharedListing
    }

    fn next_batch(&self, _: u32) -> Result<Option<Vec<AgentEntry>>, RegistryError> {
        refused()
    }
}

struct SharedSweep;

impl shared::GuestSharedSweep for SharedSweep {
    fn new(_: u64) -> Self {
        SharedSweep
    }

    fn next_batch(&self, _: u32) -> Result<SweepProgress, RegistryError> {
        refused()
    }
}

impl shared::Guest for Misbehaving {
    type SharedListing = SharedListing;
    type SharedSweep = SharedSweep;

    fn write_shared(_: EntryFields) -> Result<AgentEntry, RegistryError> {
        refused()
    }

    fn renew_shared(_: EntryFields) -> Result<Renewal, RegistryError> {
        refused()
    }

    fn remove_shared(_: String, _: String) -> Result<bool, RegistryError> {
        refused()
    }

    fn remove_owned_shared(_: String, _: Owner) -> Result<bool, RegistryError> {
        refused()
    }

    fn evict_shared(_: AgentEntry) -> Result<bool, RegistryError> {
        refused()
    }

    fn agent_dir_name(_: String) -> Result<String, RegistryError> {
        refused()
    }

    fn lookup_all_shared(_: String) -> Result<Vec<AgentEntry>, RegistryError> {
        BROKEN.store(true, Ordering::SeqCst);
        loop {
            std::hint::spin_loop();
        }
    }

    fn entries_at_shared(_: Vec<String>) -> Result<Vec<Option<AgentEntry>>, RegistryError> {
        refused()
    }
}

export!(Misbehaving);
