//! Service cluster IPs (from 10.96.0.0/16; 10.96.0.1 is kept for the
//! `kubernetes` service) and node ports (30000–32767). Each address in use
//! is a key in the store, claimed with a create-if-absent transaction, so
//! any number of API servers allocate without handing one out twice. A key
//! is released when its service is deleted (a service removed with its
//! whole namespace leaves its keys behind for now).

use serde_json::{json, Value};

use crate::handlers::store_err;
use crate::status::{ApiError, ApiResult};
use crate::store::{Cas, Store};

const IP_KEYS: &str = "/registry/ranges/serviceips/";
const PORT_KEYS: &str = "/registry/ranges/servicenodeports/";
const TRIES: usize = 32;

fn random_u32() -> u32 {
    let b = uuid::Uuid::new_v4().into_bytes();
    u32::from_le_bytes([b[0], b[1], b[2], b[3]])
}

async fn claim(store: &Store, key: String) -> ApiResult<bool> {
    Ok(matches!(
        store
            .create(&key, b"{}".to_vec())
            .await
            .map_err(store_err)?,
        Cas::Done(_)
    ))
}

async fn claim_ip(store: &Store) -> ApiResult<String> {
    for _ in 0..TRIES {
        let n = random_u32() % 65_534 + 1;
        if n == 1 {
            continue;
        }
        let ip = format!("10.96.{}.{}", n >> 8, n & 0xff);
        if claim(store, format!("{IP_KEYS}{ip}")).await? {
            return Ok(ip);
        }
    }
    Err(ApiError::internal("no free service cluster IP found"))
}

async fn claim_port(store: &Store) -> ApiResult<i64> {
    for _ in 0..TRIES {
        let port = 30_000 + i64::from(random_u32() % 2_768);
        if claim(store, format!("{PORT_KEYS}{port}")).await? {
            return Ok(port);
        }
    }
    Err(ApiError::internal("no free node port found"))
}

/// The store keys a service holds.
pub fn held_keys(svc: &Value) -> Vec<String> {
    let mut keys = Vec::new();
    if let Some(ip) = svc.pointer("/spec/clusterIP").and_then(Value::as_str) {
        if ip.starts_with("10.96.") {
            keys.push(format!("{IP_KEYS}{ip}"));
        }
    }
    for p in svc
        .pointer("/spec/ports")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        if let Some(np) = p
            .get("nodePort")
            .and_then(Value::as_i64)
            .filter(|n| *n != 0)
        {
            keys.push(format!("{PORT_KEYS}{np}"));
        }
    }
    keys
}

/// Gives a new service its cluster IP and node ports (those it asks for
/// are claimed too: taken ones are a 422). Returns the keys claimed, to
/// release if the service is not created after all.
pub async fn allocate(store: &Store, svc: &mut Value) -> ApiResult<Vec<String>> {
    let mut claimed = Vec::new();
    let result = allocate_into(store, svc, &mut claimed).await;
    if result.is_err() {
        release(store, &claimed).await;
    }
    result.map(|_| claimed)
}

async fn allocate_into(store: &Store, svc: &mut Value, claimed: &mut Vec<String>) -> ApiResult<()> {
    let ty = svc
        .pointer("/spec/type")
        .and_then(Value::as_str)
        .unwrap_or("ClusterIP")
        .to_string();
    if ty == "ExternalName" {
        return Ok(());
    }
    let Some(spec) = svc.get_mut("spec").and_then(Value::as_object_mut) else {
        return Ok(());
    };
    match spec.get("clusterIP").and_then(Value::as_str) {
        Some("None") => {}
        Some(ip) if !ip.is_empty() => {
            if ip.starts_with("10.96.") {
                if !claim(store, format!("{IP_KEYS}{ip}")).await? {
                    return Err(ApiError::new(422, "Invalid", format!("spec.clusterIP: Invalid value: \"{ip}\": provided IP is already allocated")));
                }
                claimed.push(format!("{IP_KEYS}{ip}"));
            }
        }
        _ => {
            let ip = claim_ip(store).await?;
            claimed.push(format!("{IP_KEYS}{ip}"));
            spec.insert("clusterIP".into(), json!(ip));
            spec.insert("clusterIPs".into(), json!([ip]));
            spec.insert("ipFamilies".into(), json!(["IPv4"]));
            spec.insert("ipFamilyPolicy".into(), json!("SingleStack"));
        }
    }
    if ty == "NodePort" || ty == "LoadBalancer" {
        if let Some(Value::Array(ports)) = spec.get_mut("ports") {
            for p in ports.iter_mut().filter_map(Value::as_object_mut) {
                // 0 (what Go clients send for "unset") asks for one too.
                match p
                    .get("nodePort")
                    .and_then(Value::as_i64)
                    .filter(|n| *n != 0)
                {
                    Some(np) => {
                        if !claim(store, format!("{PORT_KEYS}{np}")).await? {
                            return Err(ApiError::new(422, "Invalid", format!("spec.ports.nodePort: Invalid value: {np}: provided port is already allocated")));
                        }
                        claimed.push(format!("{PORT_KEYS}{np}"));
                    }
                    None => {
                        let np = claim_port(store).await?;
                        claimed.push(format!("{PORT_KEYS}{np}"));
                        p.insert("nodePort".into(), json!(np));
                    }
                }
            }
        }
    }
    Ok(())
}

/// Releases claimed keys (best effort: a failure leaves an address unused).
pub async fn release(store: &Store, keys: &[String]) {
    for k in keys {
        if let Err(e) = store.delete_prefix(k).await {
            tracing::warn!(key = %k, error = %e, "could not release an allocated address");
        }
    }
}
