//! The pure rules of the agentmux registry, shared by the registry component
//! (compiled to `wasm32-wasip2`) and its host (compiled natively), so that
//! each rule and each text is defined once:
//!
//! - [`name`]: the mapping from an agent id to its entry file name;
//! - [`entry`]: the on-disk entry format, its limits (checked on write and on
//!   read), ownership matching, and the registry's error cases and texts;
//! - [`ops`]: what operations report (renewals, sweep progress), their batch
//!   sizes, and [`same_shape!`], which each side of the contract uses to map
//!   its generated types to these;
//! - [`kv`]: the same registry on a key-value store with revisions (etcd);
//! - [`cli`]: the command-line grammar, the one dispatcher of its commands
//!   (against a [`cli::Backend`]), and every line of output, shared by the
//!   component's command mode and the host's CLI.
//!
//! Nothing here touches a file, a clock or the OS.
#![deny(missing_docs)]

pub mod cli;
pub mod entry;
pub mod health;
pub mod kv;
pub mod name;
pub mod ops;

pub use entry::{Entry, EntryFields, Error, Owner};
pub use health::{Graded, Health};
pub use ops::{Renewal, SweepProgress};
