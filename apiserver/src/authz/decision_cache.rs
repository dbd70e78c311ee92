//! The authorization webhook's decision cache, as kube-apiserver's
//! `--authorization-webhook-cache-authorized-ttl` (default 5m) and
//! `--authorization-webhook-cache-unauthorized-ttl` (default 30s): an
//! answer is reused for the same SubjectAccessReview spec until its TTL
//! ends; a TTL of zero turns that half of the cache off. Failed calls are
//! never cached. Time is an input (`now`), so tests need no clock.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::webhook::Verdict;

/// Entries kept at most; when full, expired entries go, then everything.
pub const CAPACITY: usize = 4096;

/// Default TTL of allowed decisions.
pub const AUTHORIZED_TTL: Duration = Duration::from_secs(300);
/// Default TTL of other decisions.
pub const UNAUTHORIZED_TTL: Duration = Duration::from_secs(30);

/// Cached verdicts by request (the SubjectAccessReview spec as JSON).
#[derive(Debug)]
pub struct DecisionCache {
    authorized_ttl: Duration,
    unauthorized_ttl: Duration,
    map: Mutex<HashMap<String, (Instant, Verdict)>>,
}

impl DecisionCache {
    /// A cache with these TTLs.
    pub fn new(authorized_ttl: Duration, unauthorized_ttl: Duration) -> DecisionCache {
        DecisionCache {
            authorized_ttl,
            unauthorized_ttl,
            map: Mutex::new(HashMap::new()),
        }
    }

    /// The cached verdict for `key`, if it has not expired at `now`.
    pub fn get(&self, key: &str, now: Instant) -> Option<Verdict> {
        let map = self.map.lock().ok()?;
        map.get(key)
            .filter(|(expires, _)| now < *expires)
            .map(|(_, v)| v.clone())
    }

    /// Remembers `verdict` for `key` from `now` (for its kind's TTL).
    pub fn put(&self, key: String, verdict: Verdict, now: Instant) {
        let ttl = match verdict {
            Verdict::Allow(_) => self.authorized_ttl,
            _ => self.unauthorized_ttl,
        };
        if ttl.is_zero() {
            return;
        }
        let Ok(mut map) = self.map.lock() else { return };
        if map.len() >= CAPACITY {
            map.retain(|_, (expires, _)| now < *expires);
            if map.len() >= CAPACITY {
                map.clear();
            }
        }
        map.insert(key, (now + ttl, verdict));
    }
}

impl Default for DecisionCache {
    fn default() -> DecisionCache {
        DecisionCache::new(AUTHORIZED_TTL, UNAUTHORIZED_TTL)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verdicts_expire_by_kind() {
        let c = DecisionCache::new(Duration::from_secs(300), Duration::from_secs(30));
        let t0 = Instant::now();
        c.put("a".into(), Verdict::Allow(String::new()), t0);
        c.put("n".into(), Verdict::NoOpinion(String::new()), t0);
        let at = |s| t0 + Duration::from_secs(s);
        assert_eq!(c.get("a", at(299)), Some(Verdict::Allow(String::new())));
        assert_eq!(c.get("a", at(300)), None);
        assert_eq!(c.get("n", at(29)), Some(Verdict::NoOpinion(String::new())));
        assert_eq!(c.get("n", at(30)), None);
        assert_eq!(c.get("other", t0), None);
    }

    #[test]
    fn a_zero_ttl_caches_nothing_and_the_size_is_bounded() {
        let c = DecisionCache::new(Duration::from_secs(1), Duration::ZERO);
        let t0 = Instant::now();
        c.put("d".into(), Verdict::Deny(String::new()), t0);
        assert_eq!(c.get("d", t0), None);
        for i in 0..(CAPACITY + 10) {
            c.put(format!("k{i}"), Verdict::Allow(String::new()), t0);
        }
        let len = c.map.lock().map(|m| m.len()).unwrap_or(0);
        assert!(len <= CAPACITY, "{len}");
    }
}
