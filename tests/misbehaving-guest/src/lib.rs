//! A registry component that misbehaves on purpose: `lookup` never returns,
//! `write` allocates until memory runs out, `cleanup-stale` recurses until the
//! stack runs out. `remove` behaves, to show the host recovers after a trap.
#![cfg(target_family = "wasm")]

wit_bindgen::generate!({
    path: "../../wit",
    world: "agent-registry",
});

use exports::agentmux::registry::registry::{AgentEntry, Guest, RegistryError};

struct Misbehaving;

#[inline(never)]
fn recurse(depth: u64) -> u64 {
    std::hint::black_box(recurse(std::hint::black_box(depth + 1))) + 1
}

impl Guest for Misbehaving {
    fn write(
        _: String,
        _: String,
        _: String,
        _: u32,
        _: String,
        _: Option<u64>,
    ) -> Result<AgentEntry, RegistryError> {
        let mut hoard: Vec<Vec<u8>> = Vec::new();
        loop {
            hoard.push(vec![1u8; 1 << 20]);
            std::hint::black_box(&hoard);
        }
    }

    fn remove(_: String) -> Result<bool, RegistryError> {
        Ok(false)
    }

    fn remove_owned(_: String, _: u32, _: String) -> Result<bool, RegistryError> {
        Ok(false)
    }

    fn list() -> Result<Vec<AgentEntry>, RegistryError> {
        Ok(Vec::new())
    }

    fn cleanup_stale(_: u64) -> Result<u32, RegistryError> {
        Ok(recurse(0) as u32)
    }

    fn entry_file_name(agent_id: String) -> Result<String, RegistryError> {
        Ok(agent_id)
    }

    fn lookup(_: String) -> Result<Option<AgentEntry>, RegistryError> {
        loop {
            std::hint::spin_loop();
        }
    }
}

export!(Misbehaving);
