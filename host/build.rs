//! Builds the registry component from `guest/` and puts it in `OUT_DIR`, where
//! `src/runtime.rs` embeds it. The component is never checked in: the crate
//! always runs the guest built from this source tree.

fn main() {
    let component = agentmux_registry_build_support::build_component(
        "agentmux-registry-guest",
        "agentmux_registry.wasm",
    );
    // Names the component in the compiled-component cache, so no process has
    // to hash it at start-up.
    let bytes = std::fs::read(&component).expect("reading the built component");
    let mut hasher = std::hash::DefaultHasher::new();
    std::hash::Hash::hash(&bytes, &mut hasher);
    println!(
        "cargo:rustc-env=AGENTMUX_REGISTRY_COMPONENT_DIGEST={}-{:016x}",
        bytes.len(),
        std::hash::Hasher::finish(&hasher)
    );
}
