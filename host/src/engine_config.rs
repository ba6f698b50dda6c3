// The wasmtime configuration shared by the build script, which precompiles the
// component for the target, and the runtime, which loads it: an artifact only
// loads into an engine configured exactly as the one that compiled it. This
// file is `include!`d by both; it holds nothing else.

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
}
