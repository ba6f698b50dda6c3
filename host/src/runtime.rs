//! The one place that configures wasmtime: engine, linker, store limits and the
//! WASI context the component gets. Nothing else in the crate touches raw
//! wasmtime settings.

use std::path::Path;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use wasmtime::component::{Component, Linker, ResourceTable};
use wasmtime::{Config, Engine, ResourceLimiter, Store};
use wasmtime_wasi::{FsPerms, WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};

use crate::bindings::{AgentRegistry, AgentRegistryPre};
use crate::{Error, WasmtimeError};

include!("engine_config.rs");

/// The registry component built from `guest/` (`cargo refresh-component`).
pub(crate) static COMPONENT: &[u8] = include_bytes!("../component/registry.wasm");

/// [`COMPONENT`] compiled to native code for this target by the build script.
static PRECOMPILED: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/registry.cwasm"));

/// How often the epoch advances; call deadlines are counted in these ticks.
const EPOCH_TICK: Duration = Duration::from_millis(5);

/// Per-store state: the WASI context and the memory cap.
pub struct HostState {
    wasi: WasiCtx,
    table: ResourceTable,
    memory: MemoryCap,
}

/// Refuses linear-memory growth past `limit` and remembers that it did, so a
/// guest that then aborts is reported as out of memory.
pub(crate) struct MemoryCap {
    limit: usize,
    exceeded: bool,
}

impl MemoryCap {
    pub(crate) fn new(limit: usize) -> MemoryCap {
        MemoryCap {
            limit,
            exceeded: false,
        }
    }

    /// Turns a failed call into the error a caller can act on.
    pub(crate) fn call_error(&self, err: wasmtime::Error, timeout: Duration) -> Error {
        match err.downcast_ref::<wasmtime::Trap>() {
            Some(wasmtime::Trap::Interrupt) => Error::Timeout(timeout),
            _ if self.exceeded => Error::MemoryLimit(self.limit),
            _ => Error::Trap(err.into()),
        }
    }
}

impl ResourceLimiter for MemoryCap {
    fn memory_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        let allowed = desired <= self.limit;
        self.exceeded |= !allowed;
        Ok(allowed)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(desired <= 100_000)
    }
}

impl WasiView for HostState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

/// A compiled, linked component ready to instantiate.
pub(crate) struct Runtime {
    engine: Engine,
    pre: AgentRegistryPre<HostState>,
}

/// One instance of the component with its store.
pub(crate) struct Instance {
    pub(crate) store: Store<HostState>,
    pub(crate) bindings: AgentRegistry,
}

/// A failure to set up, kept so that every later caller gets it too.
#[derive(Clone)]
enum SetupFailure {
    Wasmtime(&'static str, WasmtimeError),
    Thread(&'static str, Arc<std::io::Error>),
}

impl From<SetupFailure> for Error {
    fn from(failure: SetupFailure) -> Error {
        match failure {
            SetupFailure::Wasmtime(step, source) => Error::Setup { step, source },
            SetupFailure::Thread(thread, source) => Error::Thread { thread, source },
        }
    }
}

/// Maps wasmtime's error for the setup step `step`.
fn setup(step: &'static str) -> impl FnOnce(wasmtime::Error) -> Error {
    move |e| Error::Setup {
        step,
        source: e.into(),
    }
}

/// The process-wide engine. Its epoch is advanced by one background thread.
pub(crate) fn engine() -> Result<&'static Engine, Error> {
    static ENGINE: OnceLock<Result<Engine, SetupFailure>> = OnceLock::new();
    ENGINE
        .get_or_init(|| {
            let mut config = Config::new();
            configure_engine(&mut config, cfg!(windows));
            let engine = Engine::new(&config)
                .map_err(|e| SetupFailure::Wasmtime("creating the wasmtime engine", e.into()))?;
            let ticker = engine.weak();
            std::thread::Builder::new()
                .name("agentmux-registry-epoch".into())
                .spawn(move || {
                    while let Some(engine) = ticker.upgrade() {
                        engine.increment_epoch();
                        drop(engine);
                        std::thread::sleep(EPOCH_TICK);
                    }
                })
                .map_err(|e| SetupFailure::Thread("deadline ticker", Arc::new(e)))?;
            Ok(engine)
        })
        .as_ref()
        .map_err(|failure| failure.clone().into())
}

impl Runtime {
    /// The runtime for the embedded component, set up once per process from
    /// the native code compiled at build time: no compiler, no files.
    pub(crate) fn embedded() -> Result<Arc<Runtime>, Error> {
        static EMBEDDED: OnceLock<Result<Arc<Runtime>, SetupFailure>> = OnceLock::new();
        let engine = engine()?;
        EMBEDDED
            .get_or_init(|| {
                // SAFETY: the bytes are this crate's own build output, made by
                // the same wasmtime version with the same configuration
                // (`engine_config.rs`) for this target, and embedded in this
                // binary: nothing outside can have altered them. wasmtime still
                // checks version, target and configuration before loading.
                let component =
                    unsafe { Component::deserialize(engine, PRECOMPILED) }.map_err(|e| {
                        SetupFailure::Wasmtime("loading the precompiled component", e.into())
                    })?;
                Runtime::link(engine, &component).map(Arc::new)
            })
            .clone()
            .map_err(Error::from)
    }

    /// Compiles and links a component that must export the registry world.
    #[cfg(feature = "custom-components")]
    pub(crate) fn new(component: &[u8]) -> Result<Runtime, Error> {
        let engine = engine()?;
        let component =
            Component::new(engine, component).map_err(setup("compiling the component"))?;
        Runtime::link(engine, &component).map_err(Error::from)
    }

    /// Loads a component compiled ahead of time and links it as the
    /// embedded one is linked.
    ///
    /// # Safety
    ///
    /// As [`Component::deserialize`]: the bytes are trusted native code.
    #[cfg(feature = "precompiled-components")]
    pub(crate) unsafe fn precompiled(compiled: &[u8]) -> Result<Runtime, Error> {
        let engine = engine()?;
        // SAFETY: the caller's promise (see `Options::precompiled_component`);
        // wasmtime still refuses bytes from another version, target or
        // configuration.
        let component = unsafe { Component::deserialize(engine, compiled) }
            .map_err(setup("loading the precompiled component"))?;
        Runtime::link(engine, &component).map_err(Error::from)
    }

    fn link(engine: &Engine, component: &Component) -> Result<Runtime, SetupFailure> {
        let engine = engine.clone();
        let mut linker = Linker::<HostState>::new(&engine);
        wasmtime_wasi::p2::add_to_linker_async(&mut linker)
            .map_err(|e| SetupFailure::Wasmtime("linking WASI", e.into()))?;
        let pre = linker
            .instantiate_pre(component)
            .and_then(AgentRegistryPre::new)
            .map_err(|e| SetupFailure::Wasmtime("linking the component", e.into()))?;
        Ok(Runtime { engine, pre })
    }

    /// A new instance whose only capability is `agents_dir`, preopened as `/`:
    /// no environment, arguments, network or other directories.
    pub(crate) async fn instantiate(
        &self,
        agents_dir: &Path,
        memory_limit: usize,
    ) -> Result<Instance, Error> {
        let mut wasi = WasiCtxBuilder::new();
        // Must come before the preopen, which captures it. File calls then run
        // inline instead of on a background thread.
        wasi.allow_blocking_current_thread(true);
        wasi.preopened_dir(agents_dir, "/", FsPerms::ReadWrite)
            .map_err(|e| match e.downcast::<std::io::Error>() {
                // The OS refused to open the directory.
                Ok(source) => Error::Directory {
                    path: agents_dir.to_path_buf(),
                    source,
                },
                Err(e) => setup("preopening the agents directory")(e),
            })?;
        wasi.allow_tcp(false)
            .allow_udp(false)
            .allow_ip_name_lookup(false);
        let state = HostState {
            wasi: wasi.build(),
            table: ResourceTable::new(),
            memory: MemoryCap::new(memory_limit),
        };
        let mut store = Store::new(&self.engine, state);
        store.limiter(|state| &mut state.memory);
        store.epoch_deadline_trap();
        // Instantiation runs no guest code that could loop, but give it a bound too.
        store.set_epoch_deadline(ticks(Duration::from_secs(5)));
        let bindings = self
            .pre
            .instantiate_async(&mut store)
            .await
            .map_err(setup("instantiating the component"))?;
        Ok(Instance { store, bindings })
    }
}

impl Instance {
    /// Arms the deadline for the next call.
    pub(crate) fn arm(&mut self, timeout: Duration) {
        self.store.set_epoch_deadline(ticks(timeout));
    }
}

/// Epoch ticks for `timeout`, rounded up, saturating: a duration too long to
/// count means "no practical limit" (about 700 million years of ticks).
pub(crate) fn ticks(timeout: Duration) -> u64 {
    const MAX_TICKS: u64 = u64::MAX / 4;
    let ticks = timeout.as_nanos().div_ceil(EPOCH_TICK.as_nanos()).max(1);
    u64::try_from(ticks).unwrap_or(MAX_TICKS).min(MAX_TICKS) + 1
}

impl Instance {
    /// Turns a failed call into the error a caller can act on.
    pub(crate) fn call_error(&self, err: wasmtime::Error, timeout: Duration) -> Error {
        self.store.data().memory.call_error(err, timeout)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deadline_ticks_round_up_and_saturate() {
        assert_eq!(ticks(Duration::ZERO), 2);
        assert_eq!(ticks(EPOCH_TICK), 2);
        assert_eq!(ticks(EPOCH_TICK + Duration::from_nanos(1)), 3);
        assert_eq!(ticks(Duration::MAX), u64::MAX / 4 + 1);
        assert!(ticks(Duration::from_secs(u64::MAX / 1000)) > ticks(Duration::from_secs(30)));
    }

    /// A crate that depends on this one may enable more of wasmtime's Cargo
    /// features, for its build scripts or its own use, and some settings that
    /// compiled code records take their defaults from those features. Each is
    /// set here to the value such a feature would give it first: the
    /// configuration must still yield an engine that loads the component the
    /// build script compiled.
    #[test]
    fn the_engine_configuration_overrides_what_wasmtimes_features_would_change() {
        let mut config = Config::new();
        config.concurrency_support(true);
        config.wasm_component_model(false);
        config.wasm_backtrace_details(wasmtime::WasmBacktraceDetails::Enable);
        config.wasm_features(FEATURE_DEPENDENT_PROPOSALS, true);
        configure_engine(&mut config, cfg!(windows));
        let engine = Engine::new(&config).expect("the configured engine");
        // SAFETY: this crate's own build output, as `Runtime::embedded`.
        unsafe { Component::deserialize(&engine, PRECOMPILED) }
            .expect("the precompiled component loads");
    }

    /// `Options::component`'s path: the shipped `.wasm`, compiled here,
    /// serves a registry. CI does not build this feature (no workspace
    /// member enables it); `cargo test -p agentmux-registry --lib --features
    /// custom-components` runs this test.
    #[cfg(feature = "custom-components")]
    #[test]
    fn a_component_compiled_at_run_time_serves_the_registry() {
        use crate::blocking::Registry;
        let tmp = tempfile::tempdir().unwrap();
        let options = crate::Options::new().component(COMPONENT);
        let registry = Registry::open_with(tmp.path(), options).unwrap();
        let fields = crate::EntryFields {
            agent_id: "a1".into(),
            local_url: "http://127.0.0.1:1".into(),
            block_id: "b".into(),
            pid: 1,
            auth_key: "k".into(),
            ..Default::default()
        };
        registry.write(fields).unwrap();
        assert_eq!(registry.lookup("a1").unwrap().unwrap().block_id, "b");
        // A component that is not one is refused with the step named.
        let refused =
            Registry::open_with(tmp.path(), crate::Options::new().component(&b"junk"[..]));
        assert!(matches!(
            refused,
            Err(Error::Setup {
                step: "compiling the component",
                ..
            })
        ));
    }
}
