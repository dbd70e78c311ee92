//! The synchronisation primitives keel shares between threads, behind one shim.
//!
//! Code that loom models imports `Mutex`, `Condvar`, `Arc` and atomics from
//! here, never from `std::sync`: under `RUSTFLAGS="--cfg loom"` they become
//! loom's instrumented types, so the same code is model-checked.

#[cfg(loom)]
pub use loom::sync::{
    atomic::{AtomicBool, AtomicU64, Ordering},
    Arc, Condvar, Mutex, MutexGuard,
};
#[cfg(loom)]
pub use loom::thread;

#[cfg(not(loom))]
pub use std::sync::{
    atomic::{AtomicBool, AtomicU64, Ordering},
    Arc, Condvar, Mutex, MutexGuard,
};
#[cfg(not(loom))]
pub use std::thread;
