//! Builds the registry component from `guest/` and puts it in `OUT_DIR`, where
//! `src/runtime.rs` embeds it. The component is never checked in: the crate
//! always runs the guest built from this source tree.

fn main() {
    agentmux_registry_build_support::rerun_if_changed(&[
        "guest/src",
        "guest/Cargo.toml",
        "wit",
        "Cargo.lock",
    ]);
    agentmux_registry_build_support::build_component(
        "agentmux-registry-guest",
        "agentmux_registry.wasm",
    );
}
