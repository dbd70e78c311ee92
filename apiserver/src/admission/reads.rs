//! The store reads of one admission run, fetched together before the first
//! plugin runs. Each plugin names the objects and lists it will read
//! ([`super::Plugin::reads`]); the chain asks the store for all of them in
//! one read-only transaction: one round trip and one revision for the
//! whole request, where the plugins used to make one linearizable read
//! each, in turn (eight for a pod create). A read a plugin did not name, or
//! makes twice with something changed in between (a retry), goes to the
//! store on its own, as before.

use std::collections::{HashMap, HashSet};

use bytes::Bytes;
use serde_json::Value;

use crate::handlers::{decode, store_err, App};
use crate::status::ApiResult;
use crate::store::{prefix_end, Page};

/// One read a plugin will make.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Read {
    /// The object at this store key.
    Object(String),
    /// Every object under this store prefix.
    Prefix(String),
}

impl Read {
    /// The store range: `[start, end)`, or the key alone (empty `end`).
    fn range(&self) -> (Bytes, Bytes) {
        match self {
            Read::Object(key) => (Bytes::copy_from_slice(key.as_bytes()), Bytes::new()),
            Read::Prefix(p) => (
                Bytes::copy_from_slice(p.as_bytes()),
                Bytes::from(prefix_end(p.as_bytes())),
            ),
        }
    }
}

/// What [`Reads::fetch`] brought back, by read.
#[derive(Debug, Default)]
pub struct Reads {
    pages: HashMap<Read, Page>,
}

impl Reads {
    /// Reads everything `wanted` names (duplicates once) in one round trip.
    pub async fn fetch(app: &App, mut wanted: Vec<Read>) -> ApiResult<Reads> {
        let mut seen = HashSet::new();
        wanted.retain(|r| seen.insert(r.clone()));
        if wanted.is_empty() {
            return Ok(Reads::default());
        }
        let ranges: Vec<(Bytes, Bytes)> = wanted.iter().map(Read::range).collect();
        let pages = app.store.read_many(&ranges).await.map_err(store_err)?;
        Ok(Reads {
            pages: wanted.into_iter().zip(pages).collect(),
        })
    }

    /// The fetched page of `read`, else a read of its own.
    async fn page(&self, app: &App, read: Read) -> ApiResult<Page> {
        if let Some(page) = self.pages.get(&read) {
            return Ok(page.clone());
        }
        let (start, end) = read.range();
        app.store.range(&start, &end, 0, 0).await.map_err(store_err)
    }

    /// The object at `key` with its mod revision; `None` if it does not
    /// exist.
    pub async fn object(&self, app: &App, key: &str) -> ApiResult<Option<(Value, i64)>> {
        let page = self.page(app, Read::Object(key.to_string())).await?;
        match page.kvs.first() {
            Some(kv) => Ok(Some((decode(kv)?, kv.mod_revision))),
            None => Ok(None),
        }
    }

    /// Every object under `prefix` with its mod revision, and the revision
    /// read at; an object that does not decode fails the request.
    pub async fn list(&self, app: &App, prefix: &str) -> ApiResult<(Vec<(Value, i64)>, i64)> {
        let page = self.page(app, Read::Prefix(prefix.to_string())).await?;
        let mut out = Vec::with_capacity(page.kvs.len());
        for kv in &page.kvs {
            out.push((decode(kv)?, kv.mod_revision));
        }
        Ok((out, page.revision))
    }

    /// [`Reads::list`], skipping (with a warning) objects that do not
    /// decode.
    pub async fn list_decodable(
        &self,
        app: &App,
        prefix: &str,
    ) -> ApiResult<(Vec<(Value, i64)>, i64)> {
        let page = self.page(app, Read::Prefix(prefix.to_string())).await?;
        Ok((crate::controllers::decodable(&page.kvs), page.revision))
    }
}
