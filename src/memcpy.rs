//! glibc's `memcpy` on AMD CPUs: keep it off `rep movsb` for copies whose
//! destination is not aligned like their source.
//!
//! From 2,112 bytes up, glibc (2.36 here) copies with `rep movsb` on CPUs
//! that advertise fast string moves. On the AMD EPYC this was measured on,
//! `rep movsb` moves 3.4 GB/s when destination and source differ in
//! alignment (by 1, 5 or 13 bytes) against 55 GB/s for glibc's vector loop,
//! both in cache. rustls hits exactly that case: it copies each outgoing
//! record's plaintext (up to 16 KiB) in behind a 5-byte header. In the API
//! server's watch fan-out that one copy was 16% of the process's CPU; with
//! the vector loop, `memmove` fell from 22% to 9% of it (`perf record`).
//!
//! glibc reads its tunables once, when the process starts, so [`tune`]
//! re-executes the binary with `glibc.cpu.x86_rep_movsb_threshold` raised,
//! then puts the environment back as it was, so that nothing this process
//! starts inherits the setting.

/// The environment variable glibc reads its tunables from.
#[cfg(all(target_os = "linux", target_arch = "x86_64", target_env = "gnu"))]
const TUNABLES: &str = "GLIBC_TUNABLES";
/// Set across the re-exec: the caller's own `GLIBC_TUNABLES`, after `=`.
#[cfg(all(target_os = "linux", target_arch = "x86_64", target_env = "gnu"))]
const MARK: &str = "KEEL_GLIBC_TUNABLES_WAS";
/// The tunable; 16 MiB keeps `rep movsb` out of every copy keel makes.
#[cfg(all(target_os = "linux", target_arch = "x86_64", target_env = "gnu"))]
const SETTING: &str = "glibc.cpu.x86_rep_movsb_threshold=0x1000000";

/// Re-executes this process with the tunable on an AMD CPU, once; a no-op
/// elsewhere, when the caller set the tunable itself, or if the re-exec
/// fails. Call it first thing in `main`, before any thread starts.
pub fn tune() {
    #[cfg(all(target_os = "linux", target_arch = "x86_64", target_env = "gnu"))]
    {
        use std::ffi::OsString;
        use std::os::unix::ffi::{OsStrExt as _, OsStringExt as _};
        use std::os::unix::process::CommandExt as _;
        if let Some(was) = std::env::var_os(MARK) {
            // The second start: restore the caller's environment (the mark
            // holds `=` and its GLIBC_TUNABLES, or nothing if it had none).
            std::env::remove_var(MARK);
            match was.as_bytes().strip_prefix(b"=") {
                Some(v) => std::env::set_var(TUNABLES, OsString::from_vec(v.to_vec())),
                None => std::env::remove_var(TUNABLES),
            }
            return;
        }
        // Bytes, not UTF-8: a caller's tunables are kept whatever they hold.
        let current = std::env::var_os(TUNABLES);
        let set_already = current.as_ref().is_some_and(|t| {
            t.as_bytes()
                .windows(b"x86_rep_movsb_threshold".len())
                .any(|w| w == b"x86_rep_movsb_threshold")
        });
        if !is_amd() || set_already {
            return;
        }
        let mut tunables = OsString::new();
        let mut mark = OsString::new();
        if let Some(t) = &current {
            mark.push("=");
            mark.push(t);
            if !t.is_empty() {
                tunables.push(t);
                tunables.push(":");
            }
        }
        tunables.push(SETTING);
        let mut args = std::env::args_os();
        let Some(arg0) = args.next() else { return };
        // The binary's own path, not /proc/self/exe: the process name
        // (`ps`, `pgrep keel`) comes from the path executed.
        let exe = std::env::current_exe().unwrap_or_else(|_| "/proc/self/exe".into());
        let err = std::process::Command::new(exe)
            .arg0(arg0)
            .args(args)
            .env(TUNABLES, tunables)
            .env(MARK, mark)
            .exec();
        // Still here: the exec failed; run on with glibc's defaults.
        eprintln!("note: could not re-execute with {SETTING}: {err}");
    }
}

/// Whether the CPU is an AMD one (`cpuid` vendor string).
#[cfg(all(target_os = "linux", target_arch = "x86_64", target_env = "gnu"))]
fn is_amd() -> bool {
    // SAFETY: cpuid leaf 0 exists on every x86_64 CPU (the intrinsic is
    // safe on newer compilers, hence the allow).
    #[allow(unused_unsafe)]
    let id = unsafe { std::arch::x86_64::__cpuid(0) };
    let vendor: Vec<u8> = [id.ebx, id.edx, id.ecx]
        .iter()
        .flat_map(|r| r.to_le_bytes())
        .collect();
    vendor == b"AuthenticAMD"
}
