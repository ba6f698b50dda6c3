// The wasmtime configuration shared by the build scripts, which precompile
// components for the target (`host/build.rs`, `tests/build.rs`), and the
// runtime, which loads them: compiled code only loads into an engine
// configured as the one that compiled it. All three `include!` this file; it
// holds nothing else.

/// The WebAssembly proposals wasmtime turns on by default only with one of its
/// Cargo features: [`configure_engine`] turns them off.
const FEATURE_DEPENDENT_PROPOSALS: wasmtime::WasmFeatures = wasmtime::WasmFeatures::GC_TYPES
    .union(wasmtime::WasmFeatures::EXCEPTIONS)
    .union(wasmtime::WasmFeatures::THREADS)
    .union(wasmtime::WasmFeatures::CM_ASYNC);

/// Applies every setting the registry's engine uses, for code that runs on
/// Windows when `for_windows` (the build script compiles for the target, which
/// may not be the machine it runs on).
fn configure_engine(config: &mut wasmtime::Config, for_windows: bool) {
    // Call deadlines: the runtime advances the epoch from a ticker thread.
    config.epoch_interruption(true);
    // No system unwind tables for the guest's code: wasmtime captures wasm
    // backtraces without them, and registering them with the system unwinder
    // was a fifth of loading the component. Windows's ABI requires them.
    config.native_unwind_info(for_windows);
    // Settings whose defaults follow wasmtime's Cargo features, fixed: a crate
    // that depends on this one may enable more features of the same wasmtime,
    // for its build scripts (the compiling engine) or for its own use (the
    // runtime's), and compiled code records these settings. The components
    // use none of them.
    config.wasm_component_model(true);
    config.concurrency_support(false);
    config.wasm_features(FEATURE_DEPENDENT_PROPOSALS, false);
    // Its default follows `WASMTIME_BACKTRACE_DETAILS` (which wasmtime's trap
    // messages suggest setting), and compiled code records it: fixed, so the
    // variable set when building or running alone cannot stop loading.
    config.wasm_backtrace_details(wasmtime::WasmBacktraceDetails::Disable);
}

/// The engine a build script compiles components with: [`configure_engine`]'s
/// settings, for the target Cargo builds for. Fails the build, saying why,
/// when wasmtime cannot compile for that target.
#[allow(dead_code)] // The runtime includes this file and compiles nothing.
fn compiling_engine() -> wasmtime::Engine {
    let target = std::env::var("TARGET").expect("Cargo sets TARGET for build scripts");
    let for_windows = std::env::var("CARGO_CFG_TARGET_OS").is_ok_and(|os| os == "windows");
    let mut config = wasmtime::Config::new();
    configure_engine(&mut config, for_windows);
    config
        .target(&target)
        .unwrap_or_else(|e| panic!("wasmtime cannot compile for {target}: {e:#}"));
    // An architecture Cranelift was built without fails here, not above.
    wasmtime::Engine::new(&config)
        .unwrap_or_else(|e| panic!("wasmtime cannot compile for {target}: {e:#}"))
}
