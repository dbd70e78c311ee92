//! Label and field selectors (`?labelSelector=`, `?fieldSelector=`), with
//! Kubernetes' grammar: `k=v`, `k==v`, `k!=v`, `k in (a,b)`, `k notin (a,b)`,
//! `k`, `!k`, `k>n`, `k<n`; fields `path=v`, `path==v`, `path!=v`.

use serde_json::Value;

use crate::status::{ApiError, ApiResult};

/// One label requirement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Requirement {
    /// `k=v`, `k==v`.
    Equals(String, String),
    /// `k!=v` (also matches objects without `k`).
    NotEquals(String, String),
    /// `k in (a,b)`.
    In(String, Vec<String>),
    /// `k notin (a,b)` (also matches objects without `k`).
    NotIn(String, Vec<String>),
    /// `k`.
    Exists(String),
    /// `!k`.
    NotExists(String),
    /// `k>n` (integer values).
    Greater(String, i64),
    /// `k<n` (integer values).
    Less(String, i64),
}

/// A parsed label selector: all requirements must hold.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LabelSelector(pub Vec<Requirement>);

/// Splits at commas outside parentheses.
fn split_top(s: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let (mut depth, mut start) = (0i32, 0usize);
    for (i, c) in s.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            ',' if depth == 0 => {
                out.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    out.push(&s[start..]);
    out
}

fn valid_key(k: &str) -> bool {
    let (prefix, name) = match k.rsplit_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, k),
    };
    let name_ok = !name.is_empty()
        && name.len() <= 63
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        && name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name.ends_with(|c: char| c.is_ascii_alphanumeric());
    let prefix_ok = prefix.is_none_or(|p| {
        !p.is_empty()
            && p.len() <= 253
            && p.chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '-' | '.'))
    });
    name_ok && prefix_ok
}

fn valid_value(v: &str) -> bool {
    v.is_empty()
        || (v.len() <= 63
            && v.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
            && v.starts_with(|c: char| c.is_ascii_alphanumeric())
            && v.ends_with(|c: char| c.is_ascii_alphanumeric()))
}

fn bad(s: &str, why: &str) -> ApiError {
    ApiError::bad_request(format!("unable to parse requirement: {s:?}: {why}"))
}

fn key(s: &str, whole: &str) -> ApiResult<String> {
    let k = s.trim();
    if !valid_key(k) {
        return Err(bad(whole, &format!("invalid label key {k:?}")));
    }
    Ok(k.to_string())
}

fn value(s: &str, whole: &str) -> ApiResult<String> {
    let v = s.trim();
    if !valid_value(v) {
        return Err(bad(whole, &format!("invalid label value {v:?}")));
    }
    Ok(v.to_string())
}

fn parse_requirement(part: &str) -> ApiResult<Requirement> {
    let p = part.trim();
    if let Some(k) = p.strip_prefix('!') {
        return Ok(Requirement::NotExists(key(k, p)?));
    }
    if let Some((lhs, rest)) = p.split_once('(') {
        let inner = rest
            .trim_end()
            .strip_suffix(')')
            .ok_or_else(|| bad(p, "expected ')'"))?;
        let words: Vec<&str> = lhs.split_whitespace().collect();
        let [k, op] = words.as_slice() else {
            return Err(bad(p, "expected 'key in (...)' or 'key notin (...)'"));
        };
        let values = inner
            .split(',')
            .map(|v| value(v, p))
            .collect::<ApiResult<Vec<_>>>()?;
        return match *op {
            "in" => Ok(Requirement::In(key(k, p)?, values)),
            "notin" => Ok(Requirement::NotIn(key(k, p)?, values)),
            _ => Err(bad(p, &format!("unknown operator {op:?}"))),
        };
    }
    if let Some((k, v)) = p.split_once("!=") {
        return Ok(Requirement::NotEquals(key(k, p)?, value(v, p)?));
    }
    if let Some((k, v)) = p.split_once("==").or_else(|| p.split_once('=')) {
        return Ok(Requirement::Equals(key(k, p)?, value(v, p)?));
    }
    for (op, greater) in [('>', true), ('<', false)] {
        if let Some((k, v)) = p.split_once(op) {
            let n: i64 = v
                .trim()
                .parse()
                .map_err(|_| bad(p, "expected an integer"))?;
            let k = key(k, p)?;
            return Ok(if greater {
                Requirement::Greater(k, n)
            } else {
                Requirement::Less(k, n)
            });
        }
    }
    Ok(Requirement::Exists(key(p, p)?))
}

impl LabelSelector {
    /// Parses a selector; the empty string selects everything.
    pub fn parse(s: &str) -> ApiResult<LabelSelector> {
        if s.trim().is_empty() {
            return Ok(LabelSelector::default());
        }
        split_top(s)
            .into_iter()
            .map(parse_requirement)
            .collect::<ApiResult<Vec<_>>>()
            .map(LabelSelector)
    }

    /// True if an object with these `metadata.labels` is selected.
    pub fn matches(&self, labels: Option<&Value>) -> bool {
        self.matches_by(|k| labels.and_then(|l| l.get(k)).and_then(Value::as_str))
    }

    /// True if an object whose string-valued label `k` is `get(k)` is
    /// selected (a label that is missing or not a string is `None`).
    pub fn matches_by<'a>(&self, get: impl Fn(&str) -> Option<&'a str>) -> bool {
        self.0.iter().all(|r| match r {
            Requirement::Equals(k, v) => get(k) == Some(v.as_str()),
            Requirement::NotEquals(k, v) => get(k) != Some(v.as_str()),
            Requirement::In(k, vs) => get(k).is_some_and(|x| vs.iter().any(|v| v == x)),
            Requirement::NotIn(k, vs) => get(k).is_none_or(|x| !vs.iter().any(|v| v == x)),
            Requirement::Exists(k) => get(k).is_some(),
            Requirement::NotExists(k) => get(k).is_none(),
            Requirement::Greater(k, n) => get(k)
                .and_then(|x| x.parse::<i64>().ok())
                .is_some_and(|x| x > *n),
            Requirement::Less(k, n) => get(k)
                .and_then(|x| x.parse::<i64>().ok())
                .is_some_and(|x| x < *n),
        })
    }
}

/// One field requirement: `path` equals (or not) `value`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldRequirement {
    /// Dotted field path (`metadata.name`).
    pub path: String,
    /// The value compared with.
    pub value: String,
    /// `!=` instead of `=`.
    pub negate: bool,
}

/// A parsed field selector.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FieldSelector(pub Vec<FieldRequirement>);

/// Fields every kind can be selected by.
const COMMON_FIELDS: &[&str] = &["metadata.name", "metadata.namespace"];

/// Extra selectable fields per kind (Kubernetes' field label conversions).
fn kind_fields(kind: &str) -> &'static [&'static str] {
    match kind {
        "Pod" => &[
            "spec.nodeName",
            "spec.restartPolicy",
            "spec.schedulerName",
            "spec.serviceAccountName",
            "spec.hostNetwork",
            "status.phase",
            "status.podIP",
            "status.nominatedNodeName",
        ],
        "Event" => &[
            "involvedObject.kind",
            "involvedObject.namespace",
            "involvedObject.name",
            "involvedObject.uid",
            "involvedObject.apiVersion",
            "involvedObject.resourceVersion",
            "involvedObject.fieldPath",
            "reason",
            "reportingComponent",
            "source",
            "type",
        ],
        "Secret" => &["type"],
        "Namespace" => &["status.phase"],
        "Node" => &["spec.unschedulable"],
        "ReplicaSet" | "Job" => &["status.replicas", "status.successful"],
        _ => &[],
    }
}

/// The fields `kind` can be selected by (every kind's, then its own), in a
/// fixed order.
pub fn selectable_fields(kind: &str) -> impl Iterator<Item = &'static str> {
    COMMON_FIELDS
        .iter()
        .chain(kind_fields(kind).iter())
        .copied()
}

/// The value a field selector compares `path` (dotted) of `obj` with: a
/// string as it is, a boolean or number as text, anything else (or a
/// missing field) as the empty string.
pub fn field_value(obj: &Value, path: &str) -> String {
    let mut cur = Some(obj);
    for seg in path.split('.') {
        cur = cur.and_then(|c| c.get(seg));
    }
    match cur {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Bool(b)) => b.to_string(),
        Some(Value::Number(n)) => n.to_string(),
        _ => String::new(),
    }
}

impl FieldSelector {
    /// Parses a field selector for `kind`; unknown fields are a 400 as in Kubernetes.
    pub fn parse(s: &str, kind: &str) -> ApiResult<FieldSelector> {
        if s.trim().is_empty() {
            return Ok(FieldSelector::default());
        }
        let mut out = Vec::new();
        for part in s.split(',') {
            let p = part.trim();
            let (path, value, negate) = if let Some((k, v)) = p.split_once("!=") {
                (k, v, true)
            } else if let Some((k, v)) = p.split_once("==").or_else(|| p.split_once('=')) {
                (k, v, false)
            } else {
                return Err(ApiError::bad_request(format!(
                    "invalid field selector {p:?}: expected field=value or field!=value"
                )));
            };
            let path = path.trim();
            if !COMMON_FIELDS.contains(&path) && !kind_fields(kind).contains(&path) {
                return Err(ApiError::bad_request(format!(
                    "field label not supported: {path}"
                )));
            }
            out.push(FieldRequirement {
                path: path.to_string(),
                value: value.trim().to_string(),
                negate,
            });
        }
        Ok(FieldSelector(out))
    }

    /// True if `obj` is selected.
    pub fn matches(&self, obj: &Value) -> bool {
        self.0
            .iter()
            .all(|r| (field_value(obj, &r.path) == r.value) != r.negate)
    }

    /// Whether an object is selected, given `get(path)`: the
    /// [`field_value`] of each field, extracted beforehand. `None` if `get`
    /// does not know one of the selector's fields.
    pub fn matches_by<'a>(&self, get: impl Fn(&str) -> Option<&'a str>) -> Option<bool> {
        let mut all = true;
        for r in &self.0 {
            all &= (get(&r.path)? == r.value) != r.negate;
        }
        Some(all)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn label_selector_grammar() {
        let labels = json!({"app": "web", "tier": "front", "n": "5"});
        let cases = [
            ("", true),
            ("app=web", true),
            ("app==web", true),
            ("app!=web", false),
            ("missing!=x", true),
            ("app in (web, db)", true),
            ("app notin (web,db)", false),
            ("missing notin (a)", true),
            ("app", true),
            ("!app", false),
            ("!missing", true),
            ("app=web,tier in (front),!missing", true),
            ("n>4", true),
            ("n<5", false),
        ];
        for (sel, want) in cases {
            let s = LabelSelector::parse(sel).expect(sel);
            assert_eq!(s.matches(Some(&labels)), want, "{sel}");
        }
        assert!(LabelSelector::parse("app in (a").is_err());
        assert!(LabelSelector::parse("a b=c").is_err());
        assert!(LabelSelector::parse("app=we b").is_err());
    }

    #[test]
    fn field_selector_grammar() {
        let obj =
            json!({"metadata": {"name": "a", "namespace": "ns"}, "status": {"phase": "Running"}});
        let s =
            FieldSelector::parse("metadata.name=a,metadata.namespace!=x", "Pod").expect("parse");
        assert!(s.matches(&obj));
        let s = FieldSelector::parse("status.phase==Pending", "Pod").expect("parse");
        assert!(!s.matches(&obj));
        assert!(FieldSelector::parse("spec.foo=a", "ConfigMap").is_err());
    }
}
