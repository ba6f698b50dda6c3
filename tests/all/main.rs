//! Every test that drives the real registry component, as one test binary
//! (each module was once a binary of its own; one binary links wasmtime once).

mod containment;
mod hostile_dir;
mod interop;
mod lifecycle;
mod limits;
mod other_hosts;
mod registration;
mod runtimes;
mod scale;
mod seed_parity;
mod stress;
