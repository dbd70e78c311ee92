//! The resource registry: one table row per resource type. Everything generic
//! (routing, storage keys, discovery, OpenAPI, tables) reads it.
//!
//! Two layers: the static table [`RESOURCES`] of built-in types, and a
//! dynamic layer of custom resources (one row per served version of each
//! CustomResourceDefinition), replaced as a whole by [`set_dynamic`] when
//! the CRDs change (see `crate::crd::controller`). Lookups read a snapshot
//! of both ([`all`]). Rows are `&'static`: a dynamic row is leaked once per
//! distinct row (interned), so repeated refreshes of unchanged CRDs cost
//! nothing and only CRD edits allocate.

use std::collections::HashSet;
use std::sync::{Arc, Mutex, RwLock};

/// The verbs every resource supports.
pub const VERBS: &[&str] = &[
    "create",
    "delete",
    "deletecollection",
    "get",
    "list",
    "patch",
    "update",
    "watch",
];

/// One resource type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ResourceInfo {
    /// API group (`""` for core).
    pub group: &'static str,
    /// API version.
    pub version: &'static str,
    /// Kind (`Pod`).
    pub kind: &'static str,
    /// Plural resource name (`pods`), also the store key segment.
    pub plural: &'static str,
    /// Singular name (`pod`).
    pub singular: &'static str,
    /// Namespaced (else cluster-scoped).
    pub namespaced: bool,
    /// Short names (`po`).
    pub short_names: &'static [&'static str],
    /// Has a `/status` subresource.
    pub status: bool,
    /// Discovery categories (`all`).
    pub categories: &'static [&'static str],
    /// Names must be DNS labels (≤ 63, no dots) rather than DNS subdomains.
    pub dns_label_names: bool,
    /// Has a `/scale` subresource (`autoscaling/v1 Scale` on `spec.replicas`).
    pub scale: bool,
    /// Objects are kept in the store (else a create-only review kind,
    /// answered and forgotten: SubjectAccessReview, SelfSubjectReview, ...).
    pub stored: bool,
    /// A custom resource (served from a CustomResourceDefinition): stored
    /// under `/registry/<group>/<plural>/`, validated by its CRD's schema.
    pub custom: bool,
}

/// The verbs of create-only kinds (reviews).
pub const CREATE_ONLY: &[&str] = &["create"];

impl ResourceInfo {
    /// The verbs served (discovery).
    pub fn verbs(&self) -> &'static [&'static str] {
        if self.stored {
            VERBS
        } else {
            CREATE_ONLY
        }
    }

    /// `group/version`, or `version` for core.
    pub fn group_version(&self) -> String {
        if self.group.is_empty() {
            self.version.to_string()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }

    /// `plural.group` (`deployments.apps`), or `plural` for core.
    pub fn qualified(&self) -> String {
        if self.group.is_empty() {
            self.plural.to_string()
        } else {
            format!("{}.{}", self.plural, self.group)
        }
    }

    /// The store key segment of the type: `plural`, or `group/plural` for
    /// custom resources (as Kubernetes stores them; every version of a
    /// CRD shares it, and a custom plural never meets a built-in one).
    fn segment(&self) -> String {
        if self.custom {
            format!("{}/{}", self.group, self.plural)
        } else {
            self.plural.to_string()
        }
    }

    /// The store key of one object.
    pub fn key(&self, namespace: Option<&str>, name: &str) -> String {
        match namespace {
            Some(ns) if self.namespaced => format!("/registry/{}/{ns}/{name}", self.segment()),
            _ => format!("/registry/{}/{name}", self.segment()),
        }
    }

    /// The store key prefix of a collection (one namespace, or all).
    pub fn prefix(&self, namespace: Option<&str>) -> String {
        match namespace {
            Some(ns) if self.namespaced => format!("/registry/{}/{ns}/", self.segment()),
            _ => format!("/registry/{}/", self.segment()),
        }
    }
}

const ALL: &[&str] = &["all"];
const RBAC: &str = "rbac.authorization.k8s.io";
const AUTHN: &str = "authentication.k8s.io";
const AUTHZ: &str = "authorization.k8s.io";
const NONE: &[&str] = &[];
const API_EXTENSIONS: &[&str] = &["api-extensions"];

#[allow(clippy::too_many_arguments)]
const fn r(
    group: &'static str,
    version: &'static str,
    kind: &'static str,
    plural: &'static str,
    singular: &'static str,
    namespaced: bool,
    short_names: &'static [&'static str],
    status: bool,
    categories: &'static [&'static str],
) -> ResourceInfo {
    ResourceInfo {
        group,
        version,
        kind,
        plural,
        singular,
        namespaced,
        short_names,
        status,
        categories,
        dns_label_names: false,
        scale: false,
        stored: true,
        custom: false,
    }
}

/// Every resource type served: one row each.
#[rustfmt::skip]
pub const RESOURCES: &[ResourceInfo] = &[
    //  group                  version kind                       plural                      singular                   namespaced short names  status categories
    ResourceInfo { dns_label_names: true,
      ..r("",                  "v1", "Namespace",                "namespaces",               "namespace",               false, &["ns"],     true,  NONE) },
    r("",                      "v1", "Pod",                      "pods",                     "pod",                     true,  &["po"],     true,  ALL),
    r("",                      "v1", "Node",                     "nodes",                    "node",                    false, &["no"],     true,  NONE),
    ResourceInfo { dns_label_names: true,
      ..r("",                  "v1", "Service",                  "services",                 "service",                 true,  &["svc"],    true,  ALL) },
    r("",                      "v1", "Endpoints",                "endpoints",                "endpoints",               true,  &["ep"],     false, NONE),
    r("",                      "v1", "ConfigMap",                "configmaps",               "configmap",               true,  &["cm"],     false, NONE),
    r("",                      "v1", "Secret",                   "secrets",                  "secret",                  true,  NONE,        false, NONE),
    r("",                      "v1", "ServiceAccount",           "serviceaccounts",          "serviceaccount",          true,  &["sa"],     false, NONE),
    r("",                      "v1", "Event",                    "events",                   "event",                   true,  &["ev"],     false, NONE),
    r("",                      "v1", "PersistentVolume",         "persistentvolumes",        "persistentvolume",        false, &["pv"],     true,  NONE),
    r("",                      "v1", "PersistentVolumeClaim",    "persistentvolumeclaims",   "persistentvolumeclaim",   true,  &["pvc"],    true,  NONE),
    r("",                      "v1", "LimitRange",               "limitranges",              "limitrange",              true,  &["limits"], false, NONE),
    r("",                      "v1", "ResourceQuota",            "resourcequotas",           "resourcequota",           true,  &["quota"],  true,  NONE),
    ResourceInfo { scale: true,
      ..r("apps",              "v1", "Deployment",               "deployments",              "deployment",              true,  &["deploy"], true,  ALL) },
    ResourceInfo { scale: true,
      ..r("apps",              "v1", "ReplicaSet",               "replicasets",              "replicaset",              true,  &["rs"],     true,  ALL) },
    ResourceInfo { scale: true,
      ..r("apps",              "v1", "StatefulSet",              "statefulsets",             "statefulset",             true,  &["sts"],    true,  ALL) },
    r("apps",                  "v1", "DaemonSet",                "daemonsets",               "daemonset",               true,  &["ds"],     true,  ALL),
    r("batch",                 "v1", "Job",                      "jobs",                     "job",                     true,  NONE,        true,  ALL),
    r("batch",                 "v1", "CronJob",                  "cronjobs",                 "cronjob",                 true,  &["cj"],     true,  ALL),
    r("coordination.k8s.io",   "v1", "Lease",                    "leases",                   "lease",                   true,  NONE,        false, NONE),
    r("autoscaling",           "v2", "HorizontalPodAutoscaler",  "horizontalpodautoscalers", "horizontalpodautoscaler", true,  &["hpa"],    true,  ALL),
    r("networking.k8s.io",     "v1", "Ingress",                  "ingresses",                "ingress",                 true,  &["ing"],    true,  NONE),
    r("scheduling.k8s.io",     "v1", "PriorityClass",            "priorityclasses",          "priorityclass",           false, &["pc"],     false, NONE),
    r("admissionregistration.k8s.io", "v1", "MutatingWebhookConfiguration", "mutatingwebhookconfigurations", "mutatingwebhookconfiguration", false, NONE, false, API_EXTENSIONS),
    r("admissionregistration.k8s.io", "v1", "ValidatingWebhookConfiguration", "validatingwebhookconfigurations", "validatingwebhookconfiguration", false, NONE, false, API_EXTENSIONS),
    r("apiextensions.k8s.io",  "v1", "CustomResourceDefinition", "customresourcedefinitions", "customresourcedefinition", false, &["crd", "crds"], true, API_EXTENSIONS),
    r(RBAC,                    "v1", "ClusterRole",              "clusterroles",             "clusterrole",             false, NONE,        false, NONE),
    r(RBAC,                    "v1", "ClusterRoleBinding",       "clusterrolebindings",      "clusterrolebinding",      false, NONE,        false, NONE),
    r(RBAC,                    "v1", "Role",                     "roles",                    "role",                    true,  NONE,        false, NONE),
    r(RBAC,                    "v1", "RoleBinding",              "rolebindings",             "rolebinding",             true,  NONE,        false, NONE),
    ResourceInfo { stored: false,
      ..r(AUTHN,               "v1", "SelfSubjectReview",        "selfsubjectreviews",       "selfsubjectreview",        false, NONE,        false, NONE) },
    ResourceInfo { stored: false,
      ..r(AUTHN,               "v1", "TokenReview",              "tokenreviews",             "tokenreview",              false, NONE,        false, NONE) },
    ResourceInfo { stored: false,
      ..r(AUTHZ,               "v1", "LocalSubjectAccessReview", "localsubjectaccessreviews", "localsubjectaccessreview", true,  NONE,        false, NONE) },
    ResourceInfo { stored: false,
      ..r(AUTHZ,               "v1", "SelfSubjectAccessReview",  "selfsubjectaccessreviews", "selfsubjectaccessreview",  false, NONE,        false, NONE) },
    ResourceInfo { stored: false,
      ..r(AUTHZ,               "v1", "SelfSubjectRulesReview",   "selfsubjectrulesreviews",  "selfsubjectrulesreview",   false, NONE,        false, NONE) },
    ResourceInfo { stored: false,
      ..r(AUTHZ,               "v1", "SubjectAccessReview",      "subjectaccessreviews",     "subjectaccessreview",      false, NONE,        false, NONE) },
];

/// The dynamic layer: custom resource rows and a generation that moves
/// whenever they change (OpenAPI hashes, discovery).
#[derive(Debug, Default)]
struct Dynamic {
    rows: Vec<&'static ResourceInfo>,
    generation: u64,
}

fn dynamic() -> &'static RwLock<Arc<Dynamic>> {
    static D: std::sync::OnceLock<RwLock<Arc<Dynamic>>> = std::sync::OnceLock::new();
    D.get_or_init(Default::default)
}

/// Interned strings and rows of the dynamic layer (see the module doc).
fn intern_rows() -> &'static Mutex<HashSet<&'static ResourceInfo>> {
    static I: std::sync::OnceLock<Mutex<HashSet<&'static ResourceInfo>>> =
        std::sync::OnceLock::new();
    I.get_or_init(Default::default)
}

/// A `&'static str` equal to `s` (leaked once per distinct string).
pub fn intern(s: &str) -> &'static str {
    static I: std::sync::OnceLock<Mutex<HashSet<&'static str>>> = std::sync::OnceLock::new();
    let mut set = I
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|p| p.into_inner());
    if let Some(x) = set.get(s) {
        return x;
    }
    let leaked: &'static str = Box::leak(s.to_string().into_boxed_str());
    set.insert(leaked);
    leaked
}

/// A `&'static [&'static str]` with the strings of `v`.
pub fn intern_list(v: &[String]) -> &'static [&'static str] {
    if v.is_empty() {
        return &[];
    }
    let list: Vec<&'static str> = v.iter().map(|s| intern(s)).collect();
    let mut set = intern_lists().lock().unwrap_or_else(|p| p.into_inner());
    if let Some(x) = set.get(list.as_slice()) {
        return x;
    }
    let leaked: &'static [&'static str] = Box::leak(list.into_boxed_slice());
    set.insert(leaked);
    leaked
}

fn intern_lists() -> &'static Mutex<HashSet<&'static [&'static str]>> {
    static I: std::sync::OnceLock<Mutex<HashSet<&'static [&'static str]>>> =
        std::sync::OnceLock::new();
    I.get_or_init(Default::default)
}

/// Replaces the dynamic layer with `rows` (custom resources). Rows that
/// clash with a built-in (same group, version and plural) are dropped.
/// Returns true if anything changed.
pub fn set_dynamic(rows: Vec<ResourceInfo>) -> bool {
    let mut out: Vec<&'static ResourceInfo> = Vec::with_capacity(rows.len());
    {
        let mut set = intern_rows().lock().unwrap_or_else(|p| p.into_inner());
        for r in rows {
            if RESOURCES
                .iter()
                .any(|b| b.group == r.group && b.version == r.version && b.plural == r.plural)
            {
                continue;
            }
            let row = match set.get(&r) {
                Some(x) => *x,
                None => {
                    let leaked: &'static ResourceInfo = Box::leak(Box::new(r));
                    set.insert(leaked);
                    leaked
                }
            };
            out.push(row);
        }
    }
    let mut d = dynamic().write().unwrap_or_else(|p| p.into_inner());
    if d.rows == out {
        return false;
    }
    *d = Arc::new(Dynamic {
        rows: out,
        generation: d.generation + 1,
    });
    true
}

/// Moves [`generation`] without changing the rows (a CRD's schema or
/// columns changed).
pub fn bump_generation() {
    let mut d = dynamic().write().unwrap_or_else(|p| p.into_inner());
    *d = Arc::new(Dynamic {
        rows: d.rows.clone(),
        generation: d.generation + 1,
    });
}

/// Serializes the unit tests that replace the (process-wide) dynamic layer.
#[cfg(test)]
pub(crate) static TEST_LAYER: Mutex<()> = Mutex::new(());

/// A number that changes whenever the dynamic layer does.
pub fn generation() -> u64 {
    dynamic()
        .read()
        .unwrap_or_else(|p| p.into_inner())
        .generation
}

/// Every resource type served: the built-ins, then the custom resources.
pub fn all() -> Vec<&'static ResourceInfo> {
    let d = dynamic().read().unwrap_or_else(|p| p.into_inner()).clone();
    RESOURCES.iter().chain(d.rows.iter().copied()).collect()
}

/// The first row (built-ins first) that `pred` accepts, without copying
/// the table (every request looks its resource up).
fn find(pred: impl Fn(&ResourceInfo) -> bool) -> Option<&'static ResourceInfo> {
    if let Some(r) = RESOURCES.iter().find(|r| pred(r)) {
        return Some(r);
    }
    let d = dynamic().read().unwrap_or_else(|p| p.into_inner());
    d.rows.iter().copied().find(|r| pred(r))
}

/// The resource `plural` of `group/version`, if served.
pub fn lookup(group: &str, version: &str, plural: &str) -> Option<&'static ResourceInfo> {
    find(|r| r.group == group && r.version == version && r.plural == plural)
}

/// The resource of a kind in `group/version`, if served.
pub fn by_kind(group: &str, version: &str, kind: &str) -> Option<&'static ResourceInfo> {
    find(|r| r.group == group && r.version == version && r.kind == kind)
}

/// The served group-versions, core first, each once, in table order.
pub fn group_versions() -> Vec<(&'static str, &'static str)> {
    let mut out: Vec<(&str, &str)> = Vec::new();
    for r in all() {
        if !out.contains(&(r.group, r.version)) {
            out.push((r.group, r.version));
        }
    }
    out
}

/// The resources of one group-version.
pub fn resources_of(group: &str, version: &str) -> Vec<&'static ResourceInfo> {
    all()
        .into_iter()
        .filter(move |r| r.group == group && r.version == version)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_follow_the_registry_layout() {
        let pods = lookup("", "v1", "pods").expect("pods");
        assert_eq!(pods.key(Some("default"), "a"), "/registry/pods/default/a");
        assert_eq!(pods.prefix(None), "/registry/pods/");
        let ns = lookup("", "v1", "namespaces").expect("namespaces");
        assert_eq!(
            ns.key(Some("ignored"), "kube-system"),
            "/registry/namespaces/kube-system"
        );
        assert_eq!(
            lookup("apps", "v1", "deployments")
                .map(|r| r.qualified())
                .as_deref(),
            Some("deployments.apps")
        );
    }

    #[test]
    fn the_dynamic_layer_adds_custom_rows_under_their_group() {
        let _layer = TEST_LAYER.lock().unwrap_or_else(|p| p.into_inner());
        let row = ResourceInfo {
            custom: true,
            short_names: intern_list(&["rt".to_string()]),
            ..r(
                "regtest.keel.dev",
                "v1",
                "RegTest",
                "regtests",
                "regtest",
                true,
                NONE,
                false,
                NONE,
            )
        };
        assert!(set_dynamic(vec![row]));
        assert!(!set_dynamic(vec![row]), "unchanged rows are no change");
        let got = lookup("regtest.keel.dev", "v1", "regtests").expect("registered");
        assert_eq!(
            got.key(Some("a"), "b"),
            "/registry/regtest.keel.dev/regtests/a/b"
        );
        assert!(group_versions().contains(&("regtest.keel.dev", "v1")));
        // A custom row never hides a built-in one.
        let clash = ResourceInfo {
            custom: true,
            ..*lookup("", "v1", "pods").expect("pods")
        };
        set_dynamic(vec![clash]);
        assert!(!lookup("", "v1", "pods").expect("pods").custom);
        set_dynamic(Vec::new());
        assert!(lookup("regtest.keel.dev", "v1", "regtests").is_none());
    }

    #[test]
    fn plurals_are_unique_store_segments() {
        for (i, a) in RESOURCES.iter().enumerate() {
            for b in &RESOURCES[i + 1..] {
                assert_ne!(a.plural, b.plural);
            }
        }
    }
}
