//! Generated bindings for the `daramjwee:cache/engine` world. Kept in its
//! own module: the world's `Engine` and `Config` would clash with
//! wasmtime's.

#![allow(missing_docs, reason = "generated bindings")]

wasmtime::component::bindgen!({
    path: "../wit",
    world: "daramjwee:cache/engine",
    imports: { default: trappable },
    exports: { default: async | store },
    with: {
        "daramjwee:cache/store.tier": crate::imports::TierRes,
        "daramjwee:cache/types.held-body": crate::imports::HeldBodyRes,
        "daramjwee:cache/store.sink": crate::imports::SinkRes,
        "daramjwee:cache/origin.fetcher": crate::imports::FetcherRes,
        "daramjwee:cache/scheduler.queue": crate::imports::QueueRes,
    },
});

pub use self::daramjwee::cache::{origin, scheduler, store, types};
pub use self::exports::daramjwee::cache::cache;
