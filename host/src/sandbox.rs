//! Runs steerlm's embedded WASI components under wasmtime, granted nothing.
//!
//! Each instance gets an empty WASI context (no preopened directories, no environment,
//! no arguments, no network, stdin closed, stdout/stderr discarded), a memory limit
//! enforced by a [`ResourceLimiter`], and a wall-clock deadline per call enforced by
//! epoch interruption. A trap becomes an error that says which component and why.
//! Compiled components are cached on disk so later runs start instantly
//! ([`crate::component_cache`]).

use crate::component_cache::ComponentCache;
use anyhow::{Context, Result, anyhow};
use sha2::{Digest, Sha256};
use std::time::Duration;
use wasmtime::component::{Component, Linker, ResourceTable};
use wasmtime::{Config, Engine, ResourceLimiter, Store, Trap};
use wasmtime_wasi::{WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};

use crate::bindings;

/// The components built into this binary.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Labels,
    Formatting,
    Regression,
    Preprocess,
    /// The wasi:http service (`serve-component`, Spin, `wasmtime serve`).
    Http,
}

impl Kind {
    pub const ALL: [Kind; 5] = [Kind::Labels, Kind::Formatting, Kind::Regression, Kind::Preprocess, Kind::Http];

    pub fn name(self) -> &'static str {
        match self {
            Kind::Labels => "labels",
            Kind::Formatting => "formatting",
            Kind::Regression => "regression",
            Kind::Preprocess => "preprocess",
            Kind::Http => "http",
        }
    }

    /// The component's `.wasm` bytes, as built by `build.rs`.
    pub fn wasm(self) -> &'static [u8] {
        match self {
            Kind::Labels => include_bytes!(concat!(env!("OUT_DIR"), "/labels.wasm")),
            Kind::Formatting => include_bytes!(concat!(env!("OUT_DIR"), "/formatting.wasm")),
            Kind::Regression => include_bytes!(concat!(env!("OUT_DIR"), "/regression.wasm")),
            Kind::Preprocess => include_bytes!(concat!(env!("OUT_DIR"), "/preprocess.wasm")),
            Kind::Http => include_bytes!(concat!(env!("OUT_DIR"), "/http.wasm")),
        }
    }

    /// File name used by `export-components`.
    pub fn file_name(self) -> String {
        format!("steerlm-{}.wasm", self.name())
    }

    pub fn sha256(self) -> String {
        hex(&Sha256::digest(self.wasm()))
    }
}

/// Lower-case hex, as sha256sum prints digests.
pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// What every instance is allowed.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Largest linear memory an instance may grow to.
    pub memory_bytes: usize,
    /// Longest a single call (one chunk) may run.
    pub call_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits { memory_bytes: 2 << 30, call_timeout: Duration::from_secs(600) }
    }
}

/// How often the epoch advances: the granularity of call deadlines.
const TICK: Duration = Duration::from_millis(10);

/// A wasmtime engine configured for the sandbox, shared by all instances.
pub struct Sandbox {
    engine: Engine,
    linker: Linker<State>,
    limits: Limits,
}

/// Per-instance host state: the empty WASI context and the memory limiter.
pub struct State {
    wasi: WasiCtx,
    table: ResourceTable,
    limiter: MemoryLimiter,
}

impl WasiView for State {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView { ctx: &mut self.wasi, table: &mut self.table }
    }
}

/// Refuses memory growth past the limit and remembers that it did, so the resulting
/// trap can be explained.
pub(crate) struct MemoryLimiter {
    max_bytes: usize,
    pub(crate) refused: Option<usize>,
}

impl MemoryLimiter {
    pub(crate) fn new(max_bytes: usize) -> Self {
        MemoryLimiter { max_bytes, refused: None }
    }
}

impl ResourceLimiter for MemoryLimiter {
    fn memory_growing(&mut self, _current: usize, desired: usize, _maximum: Option<usize>) -> wasmtime::Result<bool> {
        if desired > self.max_bytes {
            self.refused = Some(desired);
            return Err(wasmtime::Error::msg("memory limit reached"));
        }
        Ok(true)
    }

    fn table_growing(&mut self, _current: usize, desired: usize, _maximum: Option<usize>) -> wasmtime::Result<bool> {
        Ok(desired <= 1_000_000)
    }
}

impl Sandbox {
    pub fn new(limits: Limits) -> Result<Self> {
        let engine = sandbox_engine(|_| {})?;
        let mut linker = Linker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_sync(&mut linker).map_err(anyhow::Error::from).context("linking WASI")?;
        Ok(Sandbox { engine, linker, limits })
    }

    fn store(&self) -> Store<State> {
        let state = State {
            wasi: closed_wasi(&[]),
            table: ResourceTable::new(),
            limiter: MemoryLimiter::new(self.limits.memory_bytes),
        };
        closed_store(&self.engine, state, self.limits.memory_bytes, self.limits.call_timeout)
    }

    fn component(&self, kind: Kind) -> Result<Component> {
        load_component(&self.engine, kind)
    }

    fn instantiate<B>(
        &self,
        kind: Kind,
        make: impl FnOnce(&mut Store<State>, &Component, &Linker<State>) -> wasmtime::Result<B>,
    ) -> Result<Instance<B>> {
        let component = self.component(kind)?;
        let mut store = self.store();
        let bindings = make(&mut store, &component, &self.linker)
            .map_err(anyhow::Error::from)
            .with_context(|| format!("instantiating the {} component", kind.name()))?;
        Ok(Instance { kind, store, bindings, deadline_ticks: self.deadline_ticks(), limits: self.limits })
    }

    fn deadline_ticks(&self) -> u64 {
        deadline_ticks(self.limits.call_timeout)
    }

    pub fn labels(&self) -> Result<Instance<bindings::labels::LabelsComponent>> {
        self.instantiate(Kind::Labels, |s, c, l| bindings::labels::LabelsComponent::instantiate(s, c, l))
    }
    pub fn formatting(&self) -> Result<Instance<bindings::formatting::FormattingComponent>> {
        self.instantiate(Kind::Formatting, |s, c, l| bindings::formatting::FormattingComponent::instantiate(s, c, l))
    }
    pub fn regression(&self) -> Result<Instance<bindings::regression::RegressionComponent>> {
        self.instantiate(Kind::Regression, |s, c, l| bindings::regression::RegressionComponent::instantiate(s, c, l))
    }
    pub fn preprocess(&self) -> Result<Instance<bindings::preprocess::PreprocessComponent>> {
        self.instantiate(Kind::Preprocess, |s, c, l| bindings::preprocess::PreprocessComponent::instantiate(s, c, l))
    }
}

/// A live component instance with its store.
pub struct Instance<B> {
    kind: Kind,
    store: Store<State>,
    bindings: B,
    deadline_ticks: u64,
    limits: Limits,
}

impl<B> Instance<B> {
    /// Calls into the component with a fresh deadline, turning a trap into an error
    /// that names the component and the limit it hit.
    pub fn call<T>(&mut self, f: impl FnOnce(&B, &mut Store<State>) -> wasmtime::Result<T>) -> Result<T> {
        self.store.set_epoch_deadline(self.deadline_ticks);
        f(&self.bindings, &mut self.store).map_err(|e| self.explain(e))
    }

    fn explain(&self, e: wasmtime::Error) -> anyhow::Error {
        let name = self.kind.name();
        if let Some(bytes) = self.store.data().limiter.refused {
            return anyhow!(
                "the {name} component needed more than its memory limit of {} MiB (it asked for {} MiB); raise --component-memory-mb or use smaller lines",
                self.limits.memory_bytes >> 20,
                bytes >> 20
            );
        }
        if format!("{e:#}").contains("fuel allocated for hostcalls has been exhausted") {
            return anyhow!(
                "the {name} component returned more than {} MiB for one chunk (its memory limit); raise --component-memory-mb or lower --chunk-mb",
                self.limits.memory_bytes >> 20
            );
        }
        if e.downcast_ref::<Trap>() == Some(&Trap::Interrupt) {
            return anyhow!(
                "the {name} component ran longer than its limit of {:?} on one chunk; raise --component-timeout",
                self.limits.call_timeout
            );
        }
        anyhow::Error::from(e).context(format!("the {name} component trapped"))
    }
}

/// The wasmtime engine of a sandbox: stores can be given wall-clock deadlines (epoch
/// ticks, advanced by a thread of its own). `configure` adds what a host needs more.
pub(crate) fn sandbox_engine(configure: impl FnOnce(&mut Config)) -> Result<Engine> {
    let mut config = Config::new();
    config.epoch_interruption(true);
    configure(&mut config);
    let engine = Engine::new(&config).map_err(anyhow::Error::from).context("starting wasmtime")?;
    start_epoch_ticker(&engine)?;
    Ok(engine)
}

/// Store data that holds a [`MemoryLimiter`].
pub(crate) trait HasMemoryLimiter: Send + 'static {
    fn memory_limiter(&mut self) -> &mut MemoryLimiter;
}

impl HasMemoryLimiter for State {
    fn memory_limiter(&mut self) -> &mut MemoryLimiter {
        &mut self.limiter
    }
}

/// The WASI context of a sandboxed instance. Nothing is granted but `environment`:
/// stdin is closed, stdout and stderr are discarded, there are no arguments, no
/// preopened folders, and sockets are switched off too.
pub(crate) fn closed_wasi(environment: &[(String, String)]) -> WasiCtx {
    WasiCtxBuilder::new().envs(environment).allow_tcp(false).allow_udp(false).allow_ip_name_lookup(false).build()
}

/// A store for one sandboxed instance: memory past `memory_bytes` is refused, and a
/// call traps `timeout` after the store is made (or after its deadline is renewed).
pub(crate) fn closed_store<T: HasMemoryLimiter>(
    engine: &Engine,
    data: T,
    memory_bytes: usize,
    timeout: Duration,
) -> Store<T> {
    let mut store = Store::new(engine, data);
    store.limiter(|data| data.memory_limiter());
    // wasmtime caps what one call may hand back to the host at 128 MiB by default,
    // below what a chunk (up to --chunk-mb plus --max-line-mb) can convert to. All
    // of a result lives in the instance's memory, so its memory limit is the one
    // limit that applies, and the error for it names --component-memory-mb.
    store.set_hostcall_fuel(memory_bytes);
    store.epoch_deadline_trap();
    store.set_epoch_deadline(deadline_ticks(timeout));
    store
}

/// Advances the engine's epoch every [`TICK`] for as long as the engine lives, so
/// stores can be given deadlines in ticks.
fn start_epoch_ticker(engine: &Engine) -> Result<()> {
    let weak = engine.weak();
    std::thread::Builder::new()
        .name("steerlm-epoch".into())
        .spawn(move || {
            while let Some(engine) = weak.upgrade() {
                engine.increment_epoch();
                drop(engine);
                std::thread::sleep(TICK);
            }
        })
        .context("starting the epoch thread")?;
    Ok(())
}

/// A wall-clock limit as a number of epoch ticks.
pub(crate) fn deadline_ticks(limit: Duration) -> u64 {
    (limit.as_millis() / TICK.as_millis()).max(1) as u64
}

/// Compiles an embedded component, or loads its compiled form from the cache
/// (see [`crate::component_cache`] for when a cached file is trusted).
pub(crate) fn load_component(engine: &Engine, kind: Kind) -> Result<Component> {
    let wasm = kind.wasm();
    let cache = ComponentCache::from_env();
    if let Some(component) = cache.and_then(|cache| cache.load(engine, wasm)) {
        return Ok(component);
    }
    let component = Component::new(engine, wasm)
        .map_err(anyhow::Error::from)
        .with_context(|| format!("compiling the {} component", kind.name()))?;
    if let Some(cache) = cache {
        // The cache is an optimisation: failing to write it is not an error.
        let _ = cache.store(engine, wasm, &component);
    }
    Ok(component)
}
