// The wasmtime configuration shared by the build script, which precompiles the
// component for the target, and the runtime, which loads it: an artifact only
// loads into an engine configured exactly as the one that compiled it. This
// file is `include!`d by both; it holds nothing else.

/// Applies every setting the registry's engine uses.
fn configure_engine(config: &mut wasmtime::Config) {
    // Call deadlines: the runtime advances the epoch from a ticker thread.
    config.epoch_interruption(true);
}
