//! What the kube-rs client tests share (a module of each test crate that
//! declares `mod kube_rs;`: kube is a dev-dependency, so not in keel-tests'
//! library).

use std::path::Path;

use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config};

/// A kube client for the kubeconfig at `path` (its current context).
pub async fn client_for(path: &Path) -> Client {
    // kube's rustls is built with ring (as the whole workspace is); make it
    // the process default too, in case anything asks for one.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let kubeconfig = Kubeconfig::read_from(path).expect("read the kubeconfig");
    let config = Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
        .await
        .expect("kube config from the kubeconfig");
    Client::try_from(config).expect("kube client")
}
