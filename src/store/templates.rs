//! Templates of every service (`templates`, key `service/id`), which the API's
//! `templateId` substitutes from.

use super::{codec, Durable, StoreError, StoreFuture};
use crate::model::wire::Template;

/// The templates of every service. Shared by every node in cluster mode.
///
/// Every method is a future: ready at once on sled, a query on PostgreSQL.
pub trait Templates: Send + Sync {
    fn get<'a>(&'a self, service: &'a str, id: &'a str) -> StoreFuture<'a, Option<Template>>;

    /// Every template of `service` (undecodable ones left out).
    fn list<'a>(&'a self, service: &'a str) -> StoreFuture<'a, Vec<Template>>;

    /// Adds or replaces `t`; durable when the future finishes.
    fn put<'a>(&'a self, service: &'a str, t: &'a Template) -> StoreFuture<'a, ()>;

    /// Returns whether it existed; durable when the future finishes.
    fn delete<'a>(&'a self, service: &'a str, id: &'a str) -> StoreFuture<'a, bool>;
}

/// [`Templates`] on sled: the `templates` tree.
pub(super) struct SledTemplates {
    pub(super) tree: sled::Tree,
    pub(super) durable: Durable,
}

impl SledTemplates {
    fn get_now(&self, service: &str, id: &str) -> Result<Option<Template>, StoreError> {
        match self.tree.get(format!("{service}/{id}").as_bytes())? {
            None => Ok(None),
            Some(v) => codec::decode(&v)
                .map(Some)
                .map_err(|reason| StoreError::Corrupt {
                    tree: "templates",
                    key: id.into(),
                    reason,
                }),
        }
    }

    fn list_now(&self, service: &str) -> Result<Vec<Template>, StoreError> {
        let prefix = format!("{service}/");
        let mut out = Vec::new();
        for item in self.tree.scan_prefix(prefix.as_bytes()) {
            let (_, v) = item?;
            if let Ok(t) = codec::decode(&v) {
                out.push(t);
            }
        }
        Ok(out)
    }
}

impl Templates for SledTemplates {
    fn get<'a>(&'a self, service: &'a str, id: &'a str) -> StoreFuture<'a, Option<Template>> {
        Box::pin(std::future::ready(self.get_now(service, id)))
    }

    fn list<'a>(&'a self, service: &'a str) -> StoreFuture<'a, Vec<Template>> {
        Box::pin(std::future::ready(self.list_now(service)))
    }

    fn put<'a>(&'a self, service: &'a str, t: &'a Template) -> StoreFuture<'a, ()> {
        Box::pin(async move {
            self.tree
                .insert(format!("{service}/{}", t.id).as_bytes(), codec::encode(t))?;
            self.durable.commit().await
        })
    }

    fn delete<'a>(&'a self, service: &'a str, id: &'a str) -> StoreFuture<'a, bool> {
        Box::pin(async move {
            let existed = self
                .tree
                .remove(format!("{service}/{id}").as_bytes())?
                .is_some();
            self.durable.commit().await?;
            Ok(existed)
        })
    }
}
