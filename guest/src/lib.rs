//! The agentmux registry component.
//!
//! All registry semantics live here: the id → file name mapping, the entry
//! format, atomic writes, what counts as a valid entry, and sweeping. The
//! component sees exactly one directory, its host's single preopen, which is
//! the agents directory. The file-system code talks to `wasi:filesystem`
//! directly rather than through `std::fs`, so it never follows a symlink,
//! checks what a name is before opening it, and does not depend on the name the
//! host gave the preopen.

pub mod cli;
pub mod entry;
pub mod name;

#[cfg(target_family = "wasm")]
mod component;
#[cfg(target_family = "wasm")]
mod store;
