//! Named crash points at keel's durability boundaries, for fault testing.
//!
//! With the `failpoints` feature the points are [`fail`] failpoints,
//! configured per process by the `FAILPOINTS` environment variable
//! (`FAILPOINTS="wal::before_fsync=25%return;apply::after_apply=sleep(50)"`);
//! [`hit`] is true where the configured action is `return`, and the caller
//! then crashes the process ([`crash`]) as a power cut or `kill -9` would at
//! that point. Without the feature [`hit`] is a constant `false` and the
//! points compile away.
//!
//! The names, by layer:
//! - WAL: `wal::before_write`, `wal::before_fsync` (a power loss: the
//!   unsynced batch is torn before the crash), `wal::after_fsync`;
//! - apply: `apply::before_apply`, `apply::after_apply`;
//! - snapshots: `snapshot::before_save`, `snapshot::after_save`,
//!   `snapshot::before_restore`;
//! - compaction: `compact::before`, `compact::after`;
//! - replication: `raft::before_send`.

#[cfg(feature = "failpoints")]
mod imp {
    use std::sync::Once;

    static SETUP: Once = Once::new();

    /// Reads `FAILPOINTS` and arms the points it names. Call once, first
    /// thing in `main`.
    pub fn setup() {
        // The scenario lives as long as the process (it holds the
        // registry's scenario lock, which nothing else here takes).
        SETUP.call_once(|| std::mem::forget(fail::FailScenario::setup()));
        if let Ok(spec) = std::env::var("FAILPOINTS") {
            if !spec.is_empty() {
                tracing::warn!(failpoints = %spec, "failpoints armed");
            }
        }
    }

    /// Whether the point `name` fires now (its action is `return`). Other
    /// actions (`sleep`, `pause`, `panic`, `print`) run inside.
    #[inline]
    pub fn hit(name: &str) -> bool {
        fail::eval(name, |_| ()).is_some()
    }

    /// Whether this build has failpoints compiled in.
    pub const ENABLED: bool = true;
}

#[cfg(not(feature = "failpoints"))]
mod imp {
    /// Without the `failpoints` feature: nothing to set up.
    pub fn setup() {}

    /// Without the `failpoints` feature: never fires.
    #[inline(always)]
    pub fn hit(_name: &str) -> bool {
        false
    }

    /// Whether this build has failpoints compiled in.
    pub const ENABLED: bool = false;
}

pub use imp::{hit, setup, ENABLED};

/// Ends the process at once, as `kill -9` would: no destructors, no flushing
/// beyond what the OS already has.
pub fn crash(name: &str) -> ! {
    eprintln!("failpoint {name}: crashing the process");
    std::process::abort()
}

/// Crashes the process if the point `name` fires.
#[inline]
pub fn crash_point(name: &str) {
    if hit(name) {
        crash(name)
    }
}
