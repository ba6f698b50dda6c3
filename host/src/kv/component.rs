//! The registry-kv component (`component/registry-kv.wasm`, built from
//! `guest-kv/`): its bindings, the `store` import it gets, and the mapping
//! between its types and this crate's.

use std::sync::{Arc, OnceLock};

use agentmux_registry_core::{same_shape, shared_records};
use tokio::time::Instant;
use wasmtime::component::{Component, HasSelf, Linker, ResourceTable};
use wasmtime::Store;
use wasmtime_wasi::{WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};

use super::store::EtcdStore;
use crate::runtime::{engine, MemoryCap};
use crate::Error;

mod bindings {
    wasmtime::component::bindgen!({
        path: "wit",
        world: "agent-registry-kv",
        imports: { default: async },
        exports: { default: async },
    });
}

use bindings::agentmux::registry::registry as wit;
use bindings::agentmux::registry::store;
pub(crate) use bindings::exports::agentmux::registry::kv_registry::Layout;
pub(crate) use bindings::{AgentRegistryKv, AgentRegistryKvPre};

/// The component compiled to native code for this target by the build script.
static PRECOMPILED: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/registry-kv.cwasm"));

shared_records!(host: wit);
same_shape!(enum agentmux_registry_core::kv::Layout => Layout { PerChannel, Shared });

/// Per-call state: WASI (clocks only: no preopen, no network), the memory
/// cap, and the store the component may use.
pub(crate) struct KvState {
    wasi: WasiCtx,
    table: ResourceTable,
    pub(crate) memory: MemoryCap,
    store: Arc<EtcdStore>,
    /// When the call must be over: every store request ends by then.
    deadline: Instant,
    /// Ranges read at this revision (a watch's first listing).
    at_revision: Option<i64>,
    /// The first store request that failed in this call.
    pub(crate) failure: Option<String>,
}

impl KvState {
    /// Readies a pooled store's state for its next call.
    pub(crate) fn next_call(&mut self, deadline: Instant, at_revision: Option<i64>) {
        self.deadline = deadline;
        self.at_revision = at_revision;
        self.failure = None;
    }
}

impl WasiView for KvState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl KvState {
    fn note<T>(&mut self, out: Result<T, String>) -> Result<T, String> {
        if let Err(e) = &out {
            self.failure.get_or_insert_with(|| e.clone());
        }
        out
    }
}

impl store::Host for KvState {
    async fn get(&mut self, key: String) -> Result<Option<store::Stored>, String> {
        let out = self.store.get(&key, self.deadline).await;
        Ok(self.note(out)?.map(|s| store::Stored {
            key: s.key,
            value: s.value,
            revision: s.revision,
        }))
    }

    async fn put(&mut self, key: String, value: Vec<u8>, lease: Option<u64>) -> Result<(), String> {
        let out = self.store.put(&key, value, lease, self.deadline).await;
        self.note(out)
    }

    async fn put_if_revision(
        &mut self,
        key: String,
        value: Vec<u8>,
        lease: Option<u64>,
        revision: u64,
    ) -> Result<bool, String> {
        let out = self
            .store
            .put_if_revision(&key, value, lease, revision, self.deadline)
            .await;
        self.note(out)
    }

    async fn delete_if_revision(&mut self, key: String, revision: u64) -> Result<bool, String> {
        let out = self
            .store
            .delete_if_revision(&key, revision, self.deadline)
            .await;
        self.note(out)
    }

    async fn range(
        &mut self,
        prefix: String,
        after: Option<String>,
        limit: u32,
    ) -> Result<store::RangePage, String> {
        let out = self
            .store
            .range(
                &prefix,
                after.as_deref(),
                limit,
                self.at_revision,
                self.deadline,
            )
            .await;
        let (found, more, _) = self.note(out)?;
        Ok(store::RangePage {
            items: found
                .into_iter()
                .map(|s| store::Stored {
                    key: s.key,
                    value: s.value,
                    revision: s.revision,
                })
                .collect(),
            more,
        })
    }
}

/// The linked component, set up once per process.
pub(crate) fn pre() -> Result<&'static AgentRegistryKvPre<KvState>, Error> {
    static PRE: OnceLock<
        Result<AgentRegistryKvPre<KvState>, (&'static str, crate::WasmtimeError)>,
    > = OnceLock::new();
    let engine = engine()?;
    PRE.get_or_init(|| {
        let fail = |step: &'static str| move |e: wasmtime::Error| (step, e.into());
        // SAFETY: the bytes are this crate's own build output, made by the
        // same wasmtime version with the same configuration for this
        // target, and embedded in this binary; wasmtime still checks
        // version, target and configuration before loading.
        let component = unsafe { Component::deserialize(engine, PRECOMPILED) }
            .map_err(fail("loading the precompiled registry-kv component"))?;
        let mut linker = Linker::<KvState>::new(engine);
        wasmtime_wasi::p2::add_to_linker_async(&mut linker).map_err(fail("linking WASI"))?;
        store::add_to_linker::<KvState, HasSelf<KvState>>(&mut linker, |s| s)
            .map_err(fail("linking the store"))?;
        // The contract's types only: the component calls no function of it.
        linker
            .instance("agentmux:registry/registry@0.3.0")
            .map_err(fail("linking the contract's types"))?;
        linker
            .instantiate_pre(&component)
            .and_then(AgentRegistryKvPre::new)
            .map_err(fail("linking the registry-kv component"))
    })
    .as_ref()
    .map_err(|(step, source)| Error::Setup {
        step,
        source: source.clone(),
    })
}

/// A fresh store for one call: clocks and the etcd store, nothing else.
pub(crate) fn new_store(
    store: Arc<EtcdStore>,
    deadline: Instant,
    at_revision: Option<i64>,
    memory_limit: usize,
) -> Result<Store<KvState>, Error> {
    let mut wasi = WasiCtxBuilder::new();
    wasi.allow_tcp(false)
        .allow_udp(false)
        .allow_ip_name_lookup(false);
    let state = KvState {
        wasi: wasi.build(),
        table: ResourceTable::new(),
        memory: MemoryCap::new(memory_limit),
        store,
        deadline,
        at_revision,
        failure: None,
    };
    let mut s = Store::new(engine()?, state);
    s.limiter(|state| &mut state.memory);
    s.epoch_deadline_trap();
    Ok(s)
}

impl From<wit::RegistryError> for Error {
    fn from(e: wit::RegistryError) -> Self {
        match e {
            wit::RegistryError::InvalidAgentId(m) => Error::InvalidAgentId(m),
            wit::RegistryError::InvalidField(m) => Error::InvalidField(m),
            wit::RegistryError::Conflict(m) => Error::Conflict(m),
            wit::RegistryError::Io(m) => Error::Io(m),
        }
    }
}

pub(crate) type WitEntry = wit::AgentEntry;
pub(crate) type WitFields = wit::EntryFields;
pub(crate) type WitOwner = wit::Owner;
pub(crate) type WitError = wit::RegistryError;
