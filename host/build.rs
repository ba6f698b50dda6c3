//! Compiles the shipped registry component (`component/registry.wasm`, built
//! from `guest/` by `cargo refresh-component`) to native code for the target
//! being built, so the crate needs no compiler at run time. The result goes to
//! `$OUT_DIR/registry.cwasm`, which `src/runtime.rs` embeds; with the `etcd`
//! feature, `component/registry-kv.wasm` (from `guest-kv/`) goes to
//! `$OUT_DIR/registry-kv.cwasm`, which `src/kv/component.rs` embeds.

include!("src/engine_config.rs");

fn main() {
    println!("cargo:rerun-if-changed=component/registry.wasm");
    println!("cargo:rerun-if-changed=src/engine_config.rs");
    let component = std::fs::read("component/registry.wasm")
        .expect("reading component/registry.wasm (run `cargo refresh-component`)");
    let engine = compiling_engine();
    let compiled = engine
        .precompile_component(&component)
        .expect("compiling the registry component");
    let out_dir = std::path::PathBuf::from(std::env::var_os("OUT_DIR").unwrap());
    std::fs::write(out_dir.join("registry.cwasm"), compiled)
        .expect("writing the compiled component");
    // The etcd backend's component, only when the feature is on.
    println!("cargo:rerun-if-changed=component/registry-kv.wasm");
    if std::env::var_os("CARGO_FEATURE_ETCD").is_some() {
        let component = std::fs::read("component/registry-kv.wasm")
            .expect("reading component/registry-kv.wasm (run `cargo refresh-component`)");
        let compiled = engine
            .precompile_component(&component)
            .expect("compiling the registry-kv component");
        std::fs::write(out_dir.join("registry-kv.cwasm"), compiled)
            .expect("writing the compiled component");
    }
}
