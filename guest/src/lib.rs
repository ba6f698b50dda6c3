//! The agentmux registry component.
//!
//! All registry semantics that touch the directory live here: atomic writes,
//! what counts as a valid entry, renewing and conditional removal, sweeping
//! and listing. The pure rules (id → file name, entry format and limits, CLI
//! conventions) come from `agentmux-registry-core`, which the host shares. The
//! component sees exactly one directory, its host's single preopen, which is
//! the agents directory. The file-system code talks to `wasi:filesystem`
//! directly rather than through `std::fs`, so it never follows a symlink,
//! checks what a name is before opening it, and does not depend on the name the
//! host gave the preopen.
#![cfg(target_family = "wasm")]

mod agents;
mod claim;
mod component;
mod convert;
mod shared;
