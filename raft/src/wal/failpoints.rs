//! Test-only fault injection, keyed by WAL directory so parallel tests do not
//! see each other's faults.

use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// A fault to inject.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Fault {
    /// Preallocating a new segment fails with ENOSPC.
    Enospc,
    /// Writing a batch fails with EIO.
    Write,
}

static ARMED: Mutex<Vec<(PathBuf, Fault, usize)>> = Mutex::new(Vec::new());

/// Makes the next `times` occurrences of `fault` in `dir` fail.
#[cfg_attr(loom, allow(dead_code))]
pub(crate) fn arm(dir: &Path, fault: Fault, times: usize) {
    let mut a = ARMED.lock().unwrap_or_else(|p| p.into_inner());
    a.push((dir.to_path_buf(), fault, times));
}

/// Whether `fault` fires now in `dir` (consuming one occurrence).
pub(crate) fn hit(dir: &Path, fault: Fault) -> bool {
    let mut a = ARMED.lock().unwrap_or_else(|p| p.into_inner());
    for (d, f, n) in a.iter_mut() {
        if d == dir && *f == fault && *n > 0 {
            *n -= 1;
            return true;
        }
    }
    false
}
