//! Builds the deliberately misbehaving test component and compiles it to
//! native code for the target being built (`$OUT_DIR/misbehaving.cwasm`),
//! with the registry's engine configuration, so the tests load it with
//! `Options::precompiled_component` and need no compiler at run time.

include!("../host/src/engine_config.rs");

fn main() {
    let wasm = agentmux_registry_build_support::build_component(
        "agentmux-registry-misbehaving-guest",
        "misbehaving.wasm",
    );
    println!("cargo:rerun-if-changed=../host/src/engine_config.rs");
    let component = std::fs::read(&wasm).expect("reading the misbehaving component");
    let engine = compiling_engine();
    let compiled = engine
        .precompile_component(&component)
        .expect("compiling the misbehaving component");
    std::fs::write(wasm.with_extension("cwasm"), compiled).expect("writing the compiled component");
}
