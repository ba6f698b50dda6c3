//! Builds the deliberately misbehaving test component into `OUT_DIR`.

fn main() {
    agentmux_registry_build_support::rerun_if_changed(&[
        "tests/misbehaving-guest",
        "wit",
        "Cargo.lock",
    ]);
    agentmux_registry_build_support::build_component(
        "agentmux-registry-misbehaving-guest",
        "misbehaving.wasm",
    );
}
