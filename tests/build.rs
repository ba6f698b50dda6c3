//! Builds the deliberately misbehaving test component into `OUT_DIR`.

fn main() {
    agentmux_registry_build_support::build_component(
        "agentmux-registry-misbehaving-guest",
        "misbehaving.wasm",
    );
}
