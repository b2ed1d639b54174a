//! A host that runs the Spin app (`examples/spin`) the way Spin 4.1 runs a
//! WASI 0.3 app: one instance, reused from request to request, receiving
//! many requests at once. `wasi:http` comes from wasmtime-wasi-http (its
//! `handler` export called, its `client` import reaching the real origin),
//! with stand-ins for Spin's own imports: `spin:key-value` over a map in
//! memory that outlives the instance (as Spin's SQLite store outlives it)
//! and `spin:variables` over fixed values.

#![allow(dead_code, reason = "each includer uses part of this helper")]

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use wasmtime::component::{Access, Accessor, Component, HasData, Linker, Resource, ResourceTable};
use wasmtime::{Config, Engine, Store};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};
use wasmtime_wasi_http::p3::Request;
use wasmtime_wasi_http::p3::bindings::Service;
use wasmtime_wasi_http::{WasiHttpCtx, WasiHttpCtxView, WasiHttpView};

mod bindings {
    wasmtime::component::bindgen!({
        path: "../examples/spin/wit",
        world: "daramjwee:spin-app/spin-imports",
        imports: {
            "spin:key-value/key-value.[method]store.get-keys": store | trappable,
            default: store,
        },
        with: {
            "spin:key-value/key-value.store": super::KvStore,
        },
    });
}

use bindings::spin::key_value::key_value::{self as kv, Error as KvError};
use bindings::spin::variables::variables::{self as vars, Error as VarError};

/// The key-value store the stand-in serves: shared by every instance
/// given it, like Spin's `default` store.
#[derive(Clone, Default)]
pub struct KvData(Arc<Mutex<HashMap<String, Vec<u8>>>>);

impl KvData {
    /// Number of values held.
    pub fn len(&self) -> usize {
        self.0.lock().unwrap().len()
    }
}

/// An open store (the stand-in has one: `default`).
pub struct KvStore;

struct State {
    table: ResourceTable,
    wasi: WasiCtx,
    http: WasiHttpCtx,
    kv: KvData,
    variables: HashMap<String, String>,
}

impl WasiView for State {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl WasiHttpView for State {
    fn http(&mut self) -> WasiHttpCtxView<'_> {
        WasiHttpCtxView {
            ctx: &mut self.http,
            table: &mut self.table,
            hooks: Default::default(),
        }
    }
}

struct StandIns;

impl HasData for StandIns {
    type Data<'a> = &'a mut State;
}

impl kv::Host for &mut State {}

impl kv::HostStore for &mut State {}

impl<T> kv::HostStoreWithStore<T> for StandIns {
    fn drop(mut access: Access<'_, T, Self>, store: Resource<KvStore>) -> wasmtime::Result<()> {
        access.get().table.delete(store)?;
        Ok(())
    }

    async fn open(
        accessor: &Accessor<T, Self>,
        label: String,
    ) -> Result<Resource<KvStore>, KvError> {
        if label != "default" {
            return Err(KvError::NoSuchStore);
        }
        accessor.with(|mut access| {
            access
                .get()
                .table
                .push(KvStore)
                .map_err(|e| KvError::Other(e.to_string()))
        })
    }

    async fn get(
        accessor: &Accessor<T, Self>,
        _store: Resource<KvStore>,
        key: String,
    ) -> Result<Option<Vec<u8>>, KvError> {
        Ok(data(accessor).0.lock().unwrap().get(&key).cloned())
    }

    async fn set(
        accessor: &Accessor<T, Self>,
        _store: Resource<KvStore>,
        key: String,
        value: Vec<u8>,
    ) -> Result<(), KvError> {
        data(accessor).0.lock().unwrap().insert(key, value);
        Ok(())
    }

    async fn delete(
        accessor: &Accessor<T, Self>,
        _store: Resource<KvStore>,
        key: String,
    ) -> Result<(), KvError> {
        data(accessor).0.lock().unwrap().remove(&key);
        Ok(())
    }

    async fn exists(
        accessor: &Accessor<T, Self>,
        _store: Resource<KvStore>,
        key: String,
    ) -> Result<bool, KvError> {
        Ok(data(accessor).0.lock().unwrap().contains_key(&key))
    }

    async fn get_keys(
        _accessor: &Accessor<T, Self>,
        _store: Resource<KvStore>,
    ) -> wasmtime::Result<(
        wasmtime::component::StreamReader<String>,
        wasmtime::component::FutureReader<Result<(), KvError>>,
    )> {
        wasmtime::bail!("the stand-in key-value store does not list keys")
    }
}

fn data<T>(accessor: &Accessor<T, StandIns>) -> KvData {
    accessor.with(|mut access| access.get().kv.clone())
}

impl vars::Host for &mut State {}

impl<T> vars::HostWithStore<T> for StandIns {
    async fn get(accessor: &Accessor<T, Self>, name: String) -> Result<String, VarError> {
        accessor.with(|mut access| {
            access
                .get()
                .variables
                .get(&name)
                .cloned()
                .ok_or(VarError::Undefined(name))
        })
    }
}

/// What the app answered to one request.
pub struct Reply {
    pub status: u16,
    pub headers: http::HeaderMap,
    /// The whole body, or why it broke off.
    pub body: Result<Bytes, String>,
}

impl Reply {
    /// A header's value, empty when absent.
    pub fn header(&self, name: &str) -> String {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned()
    }
}

/// One instance of the app, reused for every request sent to it.
pub struct SpinHost {
    store: Store<State>,
    service: Service,
    served: usize,
}

impl SpinHost {
    /// Instantiate `wasm` once, with Spin variables `variables` and the
    /// key-value store `kv`.
    pub async fn start(wasm: &Path, variables: &[(&str, &str)], kv: &KvData) -> SpinHost {
        let mut config = Config::new();
        config.wasm_component_model_async(true);
        let engine = Engine::new(&config).expect("an engine");
        let component = Component::from_file(&engine, wasm).expect("the Spin app compiles");
        let mut linker = Linker::<State>::new(&engine);
        wasmtime_wasi::p2::add_to_linker_async(&mut linker).expect("WASI 0.2");
        wasmtime_wasi::p3::add_to_linker(&mut linker).expect("WASI 0.3");
        wasmtime_wasi_http::p3::add_to_linker(&mut linker).expect("wasi:http 0.3");
        kv::add_to_linker::<_, StandIns>(&mut linker, |s| s).expect("spin:key-value");
        vars::add_to_linker::<_, StandIns>(&mut linker, |s| s).expect("spin:variables");
        let state = State {
            table: ResourceTable::new(),
            wasi: WasiCtx::builder().inherit_stderr().build(),
            http: WasiHttpCtx::new(),
            kv: kv.clone(),
            variables: variables
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
        };
        let mut store = Store::new(&engine, state);
        let service = Service::instantiate_async(&mut store, &component, &linker)
            .await
            .expect("the Spin app instantiates");
        SpinHost {
            store,
            service,
            served: 0,
        }
    }

    /// Send every one of `targets` (`GET`, with `headers`) to the instance
    /// at once and read each answer whole. Err when the instance traps:
    /// the host then has no instance left to serve with.
    pub async fn get_all(
        &mut self,
        targets: &[&str],
        headers: &[(&str, &str)],
    ) -> Result<Vec<Reply>, String> {
        let requests: Vec<_> = targets
            .iter()
            .map(|target| {
                let mut request = http::Request::get(format!("http://spin.test{target}"));
                for (name, value) in headers {
                    request = request.header(*name, *value);
                }
                let request = request.body(Empty::<Bytes>::new()).expect("a request");
                Request::from_http(wasmtime_wasi_http::default_hooks(), request)
            })
            .collect();
        self.served += requests.len();
        let service = &self.service;
        self.store
            .run_concurrent(async |store| {
                let calls = requests.into_iter().map(|(request, io)| async move {
                    // An empty request body: nothing to pump.
                    drop(io);
                    let response = match service.handle(store, request).await {
                        Ok(Ok(response)) => response,
                        Ok(Err(code)) => return Err(format!("the app failed: {code:?}")),
                        Err(trap) => return Err(format!("the instance trapped: {trap:?}")),
                    };
                    let response = store
                        .with(|store| response.into_http(store, async { Ok(()) }))
                        .map_err(|e| format!("{e:?}"))?;
                    let (parts, body) = response.into_parts();
                    let body = body
                        .collect()
                        .await
                        .map(|whole| whole.to_bytes())
                        .map_err(|e| format!("{e:?}"));
                    Ok(Reply {
                        status: parts.status.as_u16(),
                        headers: parts.headers,
                        body,
                    })
                });
                futures::future::join_all(calls)
                    .await
                    .into_iter()
                    .collect::<Result<Vec<_>, String>>()
            })
            .await
            .map_err(|e| format!("the instance trapped: {e:?}"))?
    }

    /// `get_all` of one target.
    pub async fn get(&mut self, target: &str, headers: &[(&str, &str)]) -> Reply {
        let mut replies = self
            .get_all(&[target], headers)
            .await
            .unwrap_or_else(|e| panic!("GET {target}: {e}"));
        replies.pop().expect("one reply")
    }

    /// Requests this instance has been sent.
    pub fn served(&self) -> usize {
        self.served
    }
}
