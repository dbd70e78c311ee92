//! The audit log: one JSON line per request at the `Metadata` level, in
//! Kubernetes' `audit.k8s.io/v1` `Event` shape (who, what verb on which
//! object, the response code, when), written to `--audit-log-path` (`-`:
//! standard output) with size-based rotation (`--audit-log-maxsize`
//! megabytes, `--audit-log-maxbackup` old files kept as `PATH.1` (newest)
//! to `PATH.N`; 0 keeps them all), as kube-apiserver's log backend does.
//!
//! Lines are handed to a writer thread, so a slow disk never stalls a
//! request; a line that cannot be written is reported in the server's log.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::Duration;

use serde_json::{json, Value};

/// Where and how the audit log is written.
#[derive(Debug, Clone, Default)]
pub struct AuditConfig {
    /// `--audit-log-path`; `None`: no audit log. `-` is standard output.
    pub path: Option<PathBuf>,
    /// `--audit-log-maxsize`: megabytes before the file is rotated (0: never).
    pub max_size_mb: u64,
    /// `--audit-log-maxbackup`: rotated files kept (0: all).
    pub max_backups: usize,
}

/// What one request did, as the audit event tells it.
#[derive(Debug)]
pub struct Record<'a> {
    /// The user the request acted as.
    pub user: &'a str,
    /// Its groups.
    pub groups: &'a [String],
    /// The user's uid, if any.
    pub uid: &'a str,
    /// Kubernetes' verb (`get`, `list`, `create`, …; the lowercased HTTP
    /// method for non-resource requests).
    pub verb: &'a str,
    /// Path and query.
    pub request_uri: &'a str,
    /// The client's address.
    pub source_ip: Option<String>,
    /// The `User-Agent` header.
    pub user_agent: &'a str,
    /// The object, for resource requests.
    pub object: Option<ObjectRef>,
    /// The response's status code.
    pub code: u16,
    /// The response's `reason` for errors (`Forbidden`, …), if any.
    pub reason: &'a str,
    /// When the request arrived.
    pub received: time::OffsetDateTime,
    /// How long until the response (for watches: until it started).
    pub latency: Duration,
    /// A watch: the event is written when the response starts.
    pub long_running: bool,
}

/// The object a resource request is about (`objectRef`).
#[derive(Debug, Default, Clone)]
pub struct ObjectRef {
    /// Plural resource name.
    pub resource: String,
    /// Namespace ("" for cluster-scoped or all namespaces).
    pub namespace: String,
    /// Object name ("" for collections).
    pub name: String,
    /// API group ("" for core).
    pub api_group: String,
    /// API version.
    pub api_version: String,
    /// Subresource ("" for none).
    pub subresource: String,
}

/// The audit log's sender; cheap to share. Without a path it drops every
/// record unwritten.
#[derive(Debug, Default)]
pub struct AuditLog {
    tx: Option<std::sync::Mutex<mpsc::Sender<Vec<u8>>>>,
}

impl AuditLog {
    /// Opens (creates or appends to) the log and starts its writer thread.
    pub fn open(cfg: &AuditConfig) -> std::io::Result<AuditLog> {
        let Some(path) = cfg.path.clone() else {
            return Ok(AuditLog::default());
        };
        let mut sink = Sink::open(path, cfg.max_size_mb * 1024 * 1024, cfg.max_backups)?;
        let (tx, rx) = mpsc::channel::<Vec<u8>>();
        std::thread::Builder::new()
            .name("keel-audit".into())
            .spawn(move || {
                for line in rx {
                    if let Err(e) = sink.write(&line) {
                        tracing::error!(error = %e, "audit log write failed");
                    }
                }
            })?;
        Ok(AuditLog {
            tx: Some(std::sync::Mutex::new(tx)),
        })
    }

    /// Writes one event for `r`.
    pub fn record(&self, r: &Record<'_>) {
        let Some(tx) = &self.tx else {
            return;
        };
        let mut line = event(r).to_string().into_bytes();
        line.push(b'\n');
        if let Ok(tx) = tx.lock() {
            if tx.send(line).is_err() {
                tracing::error!("audit log writer is gone; event lost");
            }
        }
    }
}

fn rfc3339_micros(t: time::OffsetDateTime) -> String {
    let f = time::macros::format_description!(
        "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:6]Z"
    );
    t.to_offset(time::UtcOffset::UTC)
        .format(&f)
        .unwrap_or_default()
}

/// The `audit.k8s.io/v1` Event of one request.
pub fn event(r: &Record<'_>) -> Value {
    let mut user = json!({"username": r.user, "groups": r.groups});
    if !r.uid.is_empty() {
        user["uid"] = json!(r.uid);
    }
    let mut ev = json!({
        "kind": "Event",
        "apiVersion": "audit.k8s.io/v1",
        "level": "Metadata",
        "auditID": uuid::Uuid::new_v4().to_string(),
        "stage": if r.long_running { "ResponseStarted" } else { "ResponseComplete" },
        "requestURI": r.request_uri,
        "verb": r.verb,
        "user": user,
        "sourceIPs": r.source_ip.iter().collect::<Vec<_>>(),
        "userAgent": r.user_agent,
        "responseStatus": {"metadata": {}, "code": r.code},
        "requestReceivedTimestamp": rfc3339_micros(r.received),
        "stageTimestamp": rfc3339_micros(r.received + r.latency),
        "annotations": {
            "apiserver.latency.k8s.io/total": format!("{:.3}ms", r.latency.as_secs_f64() * 1000.0),
        },
    });
    if !r.reason.is_empty() {
        ev["responseStatus"]["reason"] = json!(r.reason);
    }
    if let Some(o) = &r.object {
        let mut obj = json!({"resource": o.resource, "apiVersion": o.api_version});
        for (k, v) in [
            ("namespace", &o.namespace),
            ("name", &o.name),
            ("apiGroup", &o.api_group),
            ("subresource", &o.subresource),
        ] {
            if !v.is_empty() {
                obj[k] = json!(v);
            }
        }
        ev["objectRef"] = obj;
    }
    ev
}

/// The file (or standard output) lines go to, rotated by size.
struct Sink {
    path: PathBuf,
    file: Option<std::fs::File>,
    size: u64,
    max_size: u64,
    max_backups: usize,
}

impl Sink {
    fn open(path: PathBuf, max_size: u64, max_backups: usize) -> std::io::Result<Sink> {
        let mut sink = Sink {
            path,
            file: None,
            size: 0,
            max_size,
            max_backups,
        };
        if sink.path != Path::new("-") {
            sink.reopen()?;
        }
        Ok(sink)
    }

    fn reopen(&mut self) -> std::io::Result<()> {
        if let Some(dir) = self.path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)?;
        }
        let f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)?;
        self.size = f.metadata()?.len();
        self.file = Some(f);
        Ok(())
    }

    fn write(&mut self, line: &[u8]) -> std::io::Result<()> {
        let Some(file) = self.file.as_mut() else {
            return std::io::stdout().lock().write_all(line);
        };
        if self.max_size > 0 && self.size > 0 && self.size + line.len() as u64 > self.max_size {
            self.rotate()?;
            return self.write(line);
        }
        file.write_all(line)?;
        self.size += line.len() as u64;
        Ok(())
    }

    /// `PATH` becomes `PATH.1`, `PATH.1` becomes `PATH.2`, …; the oldest
    /// beyond `max_backups` (if not 0) is removed.
    fn rotate(&mut self) -> std::io::Result<()> {
        self.file = None;
        let numbered = |n: usize| PathBuf::from(format!("{}.{n}", self.path.display()));
        // 0 keeps every old file, as kube-apiserver's flag does.
        let keep = if self.max_backups == 0 {
            (1..).find(|&n| !numbered(n).exists()).unwrap_or(1)
        } else {
            self.max_backups
        };
        let _ = std::fs::remove_file(numbered(keep));
        for n in (1..keep).rev() {
            if numbered(n).exists() {
                std::fs::rename(numbered(n), numbered(n + 1))?;
            }
        }
        std::fs::rename(&self.path, numbered(1))?;
        self.reopen()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record<'a>(groups: &'a [String]) -> Record<'a> {
        Record {
            user: "alice",
            groups,
            verb: "create",
            request_uri: "/api/v1/namespaces/prod/pods",
            code: 403,
            reason: "Forbidden",
            object: Some(ObjectRef {
                resource: "pods".into(),
                namespace: "prod".into(),
                api_version: "v1".into(),
                ..Default::default()
            }),
            received: time::OffsetDateTime::UNIX_EPOCH,
            latency: Duration::from_millis(3),
            uid: "",
            source_ip: None,
            user_agent: "kubectl",
            long_running: false,
        }
    }

    #[test]
    fn events_have_kubernetes_shape() {
        let groups = vec!["dev".to_string()];
        let ev = event(&record(&groups));
        assert_eq!(ev["apiVersion"], "audit.k8s.io/v1");
        assert_eq!(ev["level"], "Metadata");
        assert_eq!(ev["stage"], "ResponseComplete");
        assert_eq!(ev["user"]["username"], "alice");
        assert_eq!(ev["user"]["groups"], json!(["dev"]));
        assert_eq!(ev["verb"], "create");
        assert_eq!(
            ev["objectRef"],
            json!({"resource": "pods", "namespace": "prod", "apiVersion": "v1"})
        );
        assert_eq!(ev["responseStatus"]["code"], 403);
        assert_eq!(
            ev["requestReceivedTimestamp"],
            "1970-01-01T00:00:00.000000Z"
        );
        assert_eq!(ev["stageTimestamp"], "1970-01-01T00:00:00.003000Z");
        assert_eq!(
            ev["annotations"]["apiserver.latency.k8s.io/total"],
            "3.000ms"
        );
    }

    #[test]
    fn rotates_by_size_and_keeps_backups() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("audit.log");
        let mut sink = Sink::open(path.clone(), 100, 2).expect("open");
        for i in 0..10 {
            sink.write(format!("{i:0>39}\n").as_bytes()).expect("write");
        }
        let read = |p: &Path| std::fs::read_to_string(p).unwrap_or_default();
        let numbered = |n: usize| PathBuf::from(format!("{}.{n}", path.display()));
        // 40-byte lines, 100-byte files: two lines a file; 10 lines make
        // five files, of which the current one and two backups remain.
        assert_eq!(read(&path).lines().count(), 2);
        assert_eq!(
            read(&numbered(1)).lines().next(),
            Some(&*format!("{:0>39}", 6))
        );
        assert_eq!(
            read(&numbered(2)).lines().next(),
            Some(&*format!("{:0>39}", 4))
        );
        assert!(!numbered(3).exists());
    }
}
