//! Loading the engine component: one wasmtime engine per process, each
//! component compiled once per process and, when a cache directory is
//! set, once per machine (the compiled form is stored and reloaded).

use std::collections::HashMap;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use wasmtime::component::{Component, Linker};

use crate::imports::HostState;
use crate::{Error, Result};
use crate::{bindings, hit_path};

/// The engine component built from this repository's `component/` crate,
/// carried inside the binary.
pub static EMBEDDED_COMPONENT: &[u8] = include_bytes!(env!("DARAMJWEE_COMPONENT_WASM"));

/// A digest of a component carried in the binary, made when it was built
/// (`build.rs`): naming its compiled form needs no pass over its bytes,
/// which then stay unread (and out of memory) once it has been compiled.
pub(crate) fn embedded_digest(hex: &str) -> u64 {
    u64::from_str_radix(hex, 16).expect("build.rs writes 16 hex digits")
}

/// A digest of component bytes known only at run time.
fn digest(wasm: &[u8]) -> u64 {
    let mut h = DefaultHasher::new();
    h.write(wasm);
    h.finish()
}

/// An engine that traps, loops or exhausts its memory on the keys
/// `fault:trap`, `fault:loop` and `fault:oom`: for fault-isolation tests.
#[cfg(feature = "fault-injection")]
pub static FAULTY_COMPONENT: &[u8] = include_bytes!(env!("DARAMJWEE_FAULTY_COMPONENT_WASM"));

/// One epoch tick: the granularity of the guest call time limit.
pub(crate) const TICK: Duration = Duration::from_millis(10);

/// Which engine component a cache runs.
#[derive(Clone, Debug, Default)]
pub enum ComponentSource {
    /// The engine carried inside this binary.
    #[default]
    Embedded,
    /// A component file on disk (a `.wasm` component).
    File(PathBuf),
    /// A component in memory.
    Bytes(Arc<[u8]>),
}

/// The process-wide wasmtime engines and their epoch ticker.
pub(crate) struct Runtime {
    /// For the engine component, with the component model's concurrency.
    pub(crate) engine: wasmtime::Engine,
    /// For the hit path, whose calls are plain and synchronous: without
    /// the concurrency support, which would slow every call down.
    pub(crate) sync_engine: wasmtime::Engine,
    pub(crate) ticks: Arc<AtomicU64>,
}

pub(crate) fn runtime() -> Result<&'static Runtime> {
    static RUNTIME: OnceLock<Result<Runtime>> = OnceLock::new();
    RUNTIME
        .get_or_init(|| {
            let mut config = wasmtime::Config::new();
            config.epoch_interruption(true);
            let engine = wasmtime::Engine::new(&config)
                .map_err(|e| Error::Engine(format!("wasmtime: {e}")))?;
            config.concurrency_support(false);
            let sync_engine = wasmtime::Engine::new(&config)
                .map_err(|e| Error::Engine(format!("wasmtime: {e}")))?;
            let ticks = Arc::new(AtomicU64::new(0));
            let ticker_engines = [engine.clone(), sync_engine.clone()];
            let ticker_ticks = Arc::clone(&ticks);
            std::thread::Builder::new()
                .name("daramjwee-epoch".into())
                .spawn(move || {
                    loop {
                        std::thread::sleep(TICK);
                        ticker_ticks.fetch_add(1, Ordering::Relaxed);
                        for engine in &ticker_engines {
                            engine.increment_epoch();
                        }
                    }
                })
                .map_err(|e| Error::Engine(format!("cannot start the epoch ticker: {e}")))?;
            Ok(Runtime {
                engine,
                sync_engine,
                ticks,
            })
        })
        .as_ref()
        .map_err(Clone::clone)
}

/// A loaded engine component, ready to instantiate.
pub(crate) struct Loaded {
    pub(crate) pre: bindings::EnginePre<HostState>,
    /// The hit path that shares this engine's rules: the embedded one's.
    pub(crate) hit_path: Option<Arc<hit_path::Pre>>,
}

/// Load `source`, compiling it at most once per process.
pub(crate) fn load(source: &ComponentSource, cache_dir: Option<&Path>) -> Result<Arc<Loaded>> {
    static LOADED: OnceLock<Mutex<HashMap<u64, Arc<Loaded>>>> = OnceLock::new();
    let bytes: std::borrow::Cow<'_, [u8]> = match source {
        ComponentSource::Embedded => EMBEDDED_COMPONENT.into(),
        ComponentSource::Bytes(bytes) => bytes.as_ref().into(),
        ComponentSource::File(path) => std::fs::read(path)
            .map_err(|e| {
                Error::InvalidConfig(format!("component: cannot read {}: {e}", path.display()))
            })?
            .into(),
    };
    let wasm_digest = match source {
        ComponentSource::Embedded => embedded_digest(env!("DARAMJWEE_COMPONENT_WASM_DIGEST")),
        _ => digest(&bytes),
    };
    let rt = runtime()?;
    let key = compile_key(&rt.engine, wasm_digest);
    let mut loaded = LOADED.get_or_init(Mutex::default).lock().expect("lock");
    if let Some(found) = loaded.get(&key) {
        return Ok(Arc::clone(found));
    }
    let component = compile(&rt.engine, &bytes, wasm_digest, cache_dir)?;
    let mut linker = Linker::<HostState>::new(&rt.engine);
    let engine_err = |e: wasmtime::Error| Error::Engine(format!("{e:?}"));
    wasmtime_wasi::p2::add_to_linker_async(&mut linker).map_err(engine_err)?;
    bindings::Engine::add_to_linker::<HostState, HostState>(&mut linker, |s| s)
        .map_err(engine_err)?;
    let pre = linker
        .instantiate_pre(&component)
        .and_then(bindings::EnginePre::new)
        .map_err(|e| Error::InvalidConfig(format!("component: not a daramjwee engine: {e:?}")))?;
    let hit_path = match source {
        ComponentSource::Embedded => Some(hit_path::load(&hit_path::EMBEDDED, cache_dir)?),
        // The faulty engine of the isolation tests comes with its hit path.
        #[cfg(feature = "fault-injection")]
        ComponentSource::Bytes(b) if b.as_ref() == FAULTY_COMPONENT => {
            Some(hit_path::load(&hit_path::FAULTY, cache_dir)?)
        }
        _ => None,
    };
    let found = Arc::new(Loaded { pre, hit_path });
    loaded.insert(key, Arc::clone(&found));
    Ok(found)
}

/// What identifies the component whose digest is `wasm_digest` compiled
/// by `engine`.
fn compile_key(engine: &wasmtime::Engine, wasm_digest: u64) -> u64 {
    let mut h = DefaultHasher::new();
    wasm_digest.hash(&mut h);
    engine.precompile_compatibility_hash().hash(&mut h);
    h.finish()
}

/// Compile `wasm` (whose digest is `wasm_digest`) for `engine`, through
/// the compiled form stored in `cache_dir` when there is one.
pub(crate) fn compile(
    engine: &wasmtime::Engine,
    wasm: &[u8],
    wasm_digest: u64,
    cache_dir: Option<&Path>,
) -> Result<Component> {
    let key = compile_key(engine, wasm_digest);
    let fresh = || {
        Component::new(engine, wasm)
            .map_err(|e| Error::InvalidConfig(format!("component: cannot compile: {e:?}")))
    };
    let Some(dir) = cache_dir else { return fresh() };
    let path = dir.join(format!("engine-{key:016x}.cwasm"));
    // SAFETY: the file was written by `precompile_component` of an engine
    // with the same compatibility hash (it is part of the file name); the
    // cache directory is trusted like the binary itself.
    if let Ok(component) = unsafe { Component::deserialize_file(engine, &path) } {
        return Ok(component);
    }
    let compiled = engine
        .precompile_component(wasm)
        .map_err(|e| Error::InvalidConfig(format!("component: cannot compile: {e:?}")))?;
    let tmp = dir.join(format!(".engine-{key:016x}.{}.tmp", std::process::id()));
    let stored = std::fs::create_dir_all(dir)
        .and_then(|()| std::fs::write(&tmp, &compiled))
        .and_then(|()| std::fs::rename(&tmp, &path));
    if let Err(e) = stored {
        let _ = std::fs::remove_file(&tmp);
        tracing::warn!(dir = %dir.display(), "cannot store the compiled engine: {e}");
    }
    // SAFETY: produced just above by this engine.
    unsafe { Component::deserialize(engine, &compiled) }
        .map_err(|e| Error::InvalidConfig(format!("component: cannot load: {e:?}")))
}

/// The default directory for compiled engines: `$XDG_CACHE_HOME/daramjwee`
/// or `~/.cache/daramjwee`.
pub fn default_compile_cache() -> Option<PathBuf> {
    std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".cache")))
        .map(|dir| dir.join("daramjwee"))
}
