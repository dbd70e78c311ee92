//! Admission: the chain of plugins every create, update and delete passes
//! through after authentication and authorization and before it is stored
//! (never reads). As in kube-apiserver, all mutating steps run first, in
//! plugin order, then all validating steps, in the same order; the first
//! error refuses the request.
//!
//! Plugins (one module each), in kube-apiserver's order:
//! - [`lifecycle`] `NamespaceLifecycle`: nothing new in a missing or
//!   terminating namespace; the system namespaces cannot be deleted.
//! - [`pull_images`] `AlwaysPullImages` (off unless enabled).
//! - [`limit_ranger`] `LimitRanger`: `LimitRange` defaults and bounds.
//! - [`service_account`] `ServiceAccount`: the pod's service account, its
//!   token volume and image pull secrets.
//! - [`priority`] `Priority`: the pod's priority from its PriorityClass.
//! - [`tolerations`] `DefaultTolerationSeconds`.
//! - [`webhook`] `MutatingAdmissionWebhook`, `ValidatingAdmissionWebhook`:
//!   HTTPS calls with `AdmissionReview` v1 to the configured webhooks.
//! - [`resource_quota`] `ResourceQuota`: usage charged with compare-and-swap
//!   on the quota objects, in the same store transaction as the new object.
//!
//! `--enable-admission-plugins` adds to the default set,
//! `--disable-admission-plugins` removes from it; see [`Options`].

pub mod lifecycle;
pub mod limit_ranger;
pub mod priority;
pub mod pull_images;
pub mod quota_usage;
pub mod reads;
pub mod resource_quota;
pub mod resources;
pub mod service_account;
pub mod tolerations;
pub mod webhook;

use std::fmt;

use futures::future::BoxFuture;
use serde_json::{json, Value};

use crate::handlers::App;
use crate::registry::ResourceInfo;
use crate::status::{ApiError, ApiResult};

/// The operation being admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Operation {
    /// POST of a new object.
    Create,
    /// PUT or PATCH of an existing object.
    Update,
    /// DELETE of an object.
    Delete,
}

/// A store write that must commit in the same transaction as the admitted
/// object, and only if its key is still at its mod revision (quota usage).
pub type Charge = crate::store::CasWrite;

/// What a plugin sees of a request.
#[derive(Debug)]
pub struct Attributes {
    /// The operation.
    pub operation: Operation,
    /// The resource type.
    pub res: &'static ResourceInfo,
    /// The subresource (`status`), if any.
    pub subresource: Option<String>,
    /// The namespace (`None` for cluster-scoped kinds).
    pub namespace: Option<String>,
    /// The object's name (generated already for `generateName`).
    pub name: String,
    /// The new object (create, update); the stored object on delete.
    pub object: Value,
    /// The stored object (update, delete).
    pub old: Option<Value>,
    /// `dryRun=All`: nothing may be written (no usage charged).
    pub dry_run: bool,
    /// Writes to commit atomically with the object, create or update
    /// (filled by validating plugins; the only field a validating step may
    /// change).
    pub charges: Vec<Charge>,
    /// The store reads the plugins named, fetched before they run.
    pub reads: reads::Reads,
}

impl Attributes {
    /// True for a create of the main resource `kind` in the core group.
    pub fn is_core_create(&self, kind: &str) -> bool {
        self.operation == Operation::Create
            && self.subresource.is_none()
            && self.res.group.is_empty()
            && self.res.kind == kind
    }

    /// A 403 Forbidden for this request, as `admission.NewForbidden` words it:
    /// `pods "p" is forbidden: <why>`.
    pub fn forbidden(&self, why: impl fmt::Display) -> ApiError {
        forbidden(self.res, &self.name, why)
    }
}

/// A 403 Forbidden: `<resource> "<name>" is forbidden: <why>`.
pub fn forbidden(res: &ResourceInfo, name: &str, why: impl fmt::Display) -> ApiError {
    let mut details = json!({"name": name, "kind": res.plural});
    if !res.group.is_empty() {
        details["group"] = json!(res.group);
    }
    ApiError {
        details: Some(details),
        ..ApiError::new(
            403,
            "Forbidden",
            format!("{} \"{name}\" is forbidden: {why}", res.qualified()),
        )
    }
}

/// One admission plugin. Both steps default to admitting everything.
///
/// Contract: `admit` may change `attrs.object` (mutating); `validate` must
/// not change it and may only add [`Charge`]s. Both run for every create,
/// update and delete of every resource, so a plugin filters on
/// `attrs.operation`, `attrs.res` and `attrs.subresource` itself. Errors are
/// returned to the client as they are (a plugin builds the Status).
pub trait Plugin: Send + Sync {
    /// The plugin's name in `--enable-admission-plugins`.
    fn name(&self) -> &'static str;

    /// The store reads this plugin will make for the request, so that the
    /// chain fetches them all in one round trip before the first plugin
    /// runs. Reads not named here still work (each on its own).
    fn reads(&self, _attrs: &Attributes) -> Vec<reads::Read> {
        Vec::new()
    }

    /// The mutating step.
    fn admit<'a>(
        &'a self,
        _app: &'a App,
        _attrs: &'a mut Attributes,
    ) -> BoxFuture<'a, ApiResult<()>> {
        Box::pin(std::future::ready(Ok(())))
    }

    /// The validating step.
    fn validate<'a>(
        &'a self,
        _app: &'a App,
        _attrs: &'a mut Attributes,
    ) -> BoxFuture<'a, ApiResult<()>> {
        Box::pin(std::future::ready(Ok(())))
    }
}

/// Errors in the admission flags.
#[derive(Debug, thiserror::Error)]
pub enum AdmissionError {
    /// A name that is no admission plugin.
    #[error("admission plugin {name:?} is unknown (known: {known})")]
    Unknown {
        /// The name given.
        name: String,
        /// The plugins keel has.
        known: String,
    },
}

/// Every plugin keel has, in kube-apiserver's order, and whether it is on
/// by default.
pub const PLUGINS: &[(&str, bool)] = &[
    ("NamespaceLifecycle", true),
    ("AlwaysPullImages", false),
    ("LimitRanger", true),
    ("ServiceAccount", true),
    ("Priority", true),
    ("DefaultTolerationSeconds", true),
    ("MutatingAdmissionWebhook", true),
    ("ValidatingAdmissionWebhook", true),
    ("ResourceQuota", true),
];

/// kube-apiserver plugins keel does not have: accepted in the flags (with a
/// warning) so kube-apiserver command lines keep working.
const NOT_IMPLEMENTED: &[&str] = &[
    "AlwaysAdmit",
    "AlwaysDeny",
    "CertificateApproval",
    "CertificateSigning",
    "CertificateSubjectRestriction",
    "ClusterTrustBundleAttest",
    "DefaultIngressClass",
    "DefaultStorageClass",
    "DenyServiceExternalIPs",
    "EventRateLimit",
    "ExtendedResourceToleration",
    "ImagePolicyWebhook",
    "LimitPodHardAntiAffinityTopology",
    "MutatingAdmissionPolicy",
    "NamespaceAutoProvision",
    "NamespaceExists",
    "NodeRestriction",
    "OwnerReferencesPermissionEnforcement",
    "PersistentVolumeClaimResize",
    "PersistentVolumeLabel",
    "PodNodeSelector",
    "PodSecurity",
    "PodTolerationRestriction",
    "RuntimeClass",
    "SecurityContextDeny",
    "StorageObjectInUseProtection",
    "TaintNodesByCondition",
    "ValidatingAdmissionPolicy",
];

/// The admission flags, as kube-apiserver names them.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// `--enable-admission-plugins`: turned on in addition to the defaults.
    pub enable: Vec<String>,
    /// `--disable-admission-plugins`: turned off even if on by default.
    pub disable: Vec<String>,
}

impl Options {
    /// The names of the plugins these flags turn on, in chain order.
    pub fn enabled(&self) -> Result<Vec<&'static str>, AdmissionError> {
        for name in self.enable.iter().chain(&self.disable) {
            if PLUGINS.iter().any(|(p, _)| p == name) {
                continue;
            }
            if NOT_IMPLEMENTED.contains(&name.as_str()) {
                tracing::warn!(plugin = %name, "admission plugin not implemented in keel; ignored");
                continue;
            }
            return Err(AdmissionError::Unknown {
                name: name.clone(),
                known: PLUGINS
                    .iter()
                    .map(|(p, _)| *p)
                    .collect::<Vec<_>>()
                    .join(", "),
            });
        }
        Ok(PLUGINS
            .iter()
            .filter(|(p, on)| {
                let enabled = *on || self.enable.iter().any(|e| e == p);
                enabled && !self.disable.iter().any(|d| d == p)
            })
            .map(|(p, _)| *p)
            .collect())
    }
}

/// The configured chain of plugins.
pub struct Chain {
    plugins: Vec<Box<dyn Plugin>>,
}

impl fmt::Debug for Chain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.names()).finish()
    }
}

impl Default for Chain {
    /// The default plugins.
    fn default() -> Self {
        match Chain::new(&Options::default()) {
            Ok(c) => c,
            Err(_) => Chain {
                plugins: Vec::new(),
            },
        }
    }
}

fn plugin(name: &str) -> Option<Box<dyn Plugin>> {
    Some(match name {
        "NamespaceLifecycle" => Box::new(lifecycle::NamespaceLifecycle),
        "AlwaysPullImages" => Box::new(pull_images::AlwaysPullImages),
        "LimitRanger" => Box::new(limit_ranger::LimitRanger),
        "ServiceAccount" => Box::new(service_account::ServiceAccount),
        "Priority" => Box::new(priority::Priority),
        "DefaultTolerationSeconds" => Box::new(tolerations::DefaultTolerationSeconds),
        "MutatingAdmissionWebhook" => Box::new(webhook::MutatingWebhook),
        "ValidatingAdmissionWebhook" => Box::new(webhook::ValidatingWebhook),
        "ResourceQuota" => Box::new(resource_quota::ResourceQuota),
        _ => return None,
    })
}

impl Chain {
    /// The chain the flags ask for.
    pub fn new(opts: &Options) -> Result<Chain, AdmissionError> {
        let plugins = opts.enabled()?.into_iter().filter_map(plugin).collect();
        Ok(Chain { plugins })
    }

    /// The plugin names, in order.
    pub fn names(&self) -> Vec<&'static str> {
        self.plugins.iter().map(|p| p.name()).collect()
    }

    /// True if the plugin `name` is on.
    pub fn has(&self, name: &str) -> bool {
        self.plugins.iter().any(|p| p.name() == name)
    }

    /// Runs every mutating step, then the CRD schema checks (custom
    /// objects pruned, defaulted, validated; CRDs validated), then every
    /// validating step.
    pub async fn run(&self, app: &App, attrs: &mut Attributes) -> ApiResult<()> {
        let wanted = self.plugins.iter().flat_map(|p| p.reads(attrs)).collect();
        attrs.reads = reads::Reads::fetch(app, wanted).await?;
        for p in &self.plugins {
            p.admit(app, attrs).await?;
        }
        // Schema checks sit where Kubernetes validates objects: after the
        // mutating plugins, before the validating ones.
        crate::crd::admit(attrs)?;
        for p in &self.plugins {
            p.validate(app, attrs).await?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_pick_the_plugins() {
        let default = Options::default().enabled().expect("defaults");
        assert_eq!(
            default,
            [
                "NamespaceLifecycle",
                "LimitRanger",
                "ServiceAccount",
                "Priority",
                "DefaultTolerationSeconds",
                "MutatingAdmissionWebhook",
                "ValidatingAdmissionWebhook",
                "ResourceQuota"
            ]
        );
        let opts = Options {
            enable: vec!["AlwaysPullImages".into(), "NodeRestriction".into()],
            disable: vec!["ResourceQuota".into()],
        };
        let on = opts.enabled().expect("flags");
        assert!(on.contains(&"AlwaysPullImages") && !on.contains(&"ResourceQuota"));
        assert_eq!(on[1], "AlwaysPullImages", "kept in chain order");
        let bad = Options {
            enable: vec!["Nope".into()],
            disable: vec![],
        };
        assert!(matches!(bad.enabled(), Err(AdmissionError::Unknown { .. })));
        assert_eq!(Chain::new(&opts).expect("chain").names(), on);
    }
}
