//! keel-tests: the multi-process harness used by the end-to-end tests.
//!
//! Every end-to-end test body is a `fn(Backend)`; the [`e2e_test!`] macro
//! turns it into one `#[test]` per backend (`<name>::etcd`, `<name>::keel`),
//! so which servers a test runs against is one line. [`Backend::Etcd`] is the
//! real etcd (the reference), [`Backend::Keel`] is `keel store`.
//!
//! - [`Member`]: a spawned server process with its data dir, ports and log.
//! - [`etcdctl`], [`etcdctl_json`], [`Watcher`]: drive `etcdctl` against it.

mod etcdctl;
mod keel_bin;
mod member;
mod ports;

pub use etcdctl::{
    b64, ctl_ok, etcdctl, etcdctl_at, etcdctl_bin, etcdctl_json, etcdctl_stdin, etcdctl_supports,
    header_revision, jint, kvs, CtlOutput, Kv, Watcher,
};
pub use keel_bin::{keel_bin, workspace_root};
pub use member::{etcd_bin, Member, MemberOpts, READY_TIMEOUT};
pub use ports::free_port;

/// Which server implementation a member runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Backend {
    /// Real etcd (`/usr/bin/etcd`, `$ETCD_BIN`): the reference.
    Etcd,
    /// `keel store` (`$KEEL_BIN` or `target/<profile>/keel`).
    Keel,
}

impl Backend {
    /// `"etcd"` or `"keel"`.
    pub fn name(self) -> &'static str {
        match self {
            Backend::Etcd => "etcd",
            Backend::Keel => "keel",
        }
    }

    /// `Err(reason)` if tests against this backend must be skipped right now.
    ///
    /// THE GATE: keel variants only run with `KEEL_E2E_KEEL=1` until `keel
    /// store` exists. Remove the `Backend::Keel` arm to run them always.
    pub fn unavailable(self) -> Result<(), String> {
        match self {
            Backend::Etcd => Ok(()),
            Backend::Keel => Ok(()),
        }
    }

    /// Restores the snapshot `file` into `m`'s (not yet existing) data dir:
    /// `etcdctl snapshot restore` for etcd, `keel snapshot restore` for keel.
    pub fn snapshot_restore(self, file: &std::path::Path, m: &Member) -> CtlOutput {
        let data_dir = m.data_dir();
        // Both tools take the same flags: the new member's name and cluster.
        let mut cmd = match self {
            Backend::Etcd => {
                let mut c = std::process::Command::new(etcdctl_bin());
                c.env("ETCDCTL_API", "3");
                c
            }
            Backend::Keel => std::process::Command::new(keel_bin()),
        };
        let args: Vec<String> = vec![
            "snapshot".into(),
            "restore".into(),
            file.display().to_string(),
            "--data-dir".into(),
            data_dir.display().to_string(),
            "--name".into(),
            m.name().to_string(),
            "--initial-cluster".into(),
            m.initial_cluster(),
            "--initial-advertise-peer-urls".into(),
            m.peer_url(),
        ];
        let out = cmd.args(&args).output().expect("run snapshot restore");
        CtlOutput {
            cmdline: format!("{:?} {}", cmd.get_program(), args.join(" ")),
            status: out.status,
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }
}

/// Runs `body(backend)` unless the backend is gated off, in which case it
/// prints the reason and returns (the test passes as skipped).
pub fn run_on(backend: Backend, body: impl FnOnce(Backend)) {
    if let Err(reason) = backend.unavailable() {
        println!("{reason}");
        eprintln!("{reason}");
        return;
    }
    body(backend);
}

/// Declares one `#[test]` per backend for a test body `fn NAME(b: Backend)`.
///
/// ```ignore
/// fn put_get(b: Backend) { /* … */ }
/// e2e_test!(put_get: etcd, keel);                   // tests put_get::etcd, put_get::keel
/// e2e_test!(quota: etcd(ignore = "slow"), keel);    // an #[ignore]d variant
/// ```
#[macro_export]
macro_rules! e2e_test {
    ($name:ident : $($backend:ident $((ignore = $reason:literal))?),+ $(,)?) => {
        mod $name {
            $( $crate::e2e_test!(@variant $name, $backend $(, $reason)?); )+
        }
    };
    (@variant $name:ident, etcd) => {
        #[test]
        fn etcd() { $crate::run_on($crate::Backend::Etcd, super::$name) }
    };
    (@variant $name:ident, etcd, $reason:literal) => {
        #[test]
        #[ignore = $reason]
        fn etcd() { $crate::run_on($crate::Backend::Etcd, super::$name) }
    };
    (@variant $name:ident, keel) => {
        #[test]
        fn keel() { $crate::run_on($crate::Backend::Keel, super::$name) }
    };
    (@variant $name:ident, keel, $reason:literal) => {
        #[test]
        #[ignore = $reason]
        fn keel() { $crate::run_on($crate::Backend::Keel, super::$name) }
    };
}

pub mod cluster;
pub mod diff;
pub mod jepsen;
pub mod kube;
pub mod kubelet;
pub mod tls_server;
pub mod webhook;
