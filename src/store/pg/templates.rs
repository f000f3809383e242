//! [`Templates`] on PostgreSQL: the `templates` table, each template as its JSON.

use super::Pg;
use crate::model::wire::Template;
use crate::store::templates::Templates;
use crate::store::{StoreError, StoreFuture};
use std::sync::Arc;

const GET: &str = "SELECT body FROM templates WHERE service_id = $1 AND template_id = $2";
const LIST: &str = "SELECT body FROM templates WHERE service_id = $1 ORDER BY template_id";
const PUT: &str = "INSERT INTO templates (service_id, template_id, body) VALUES ($1, $2, $3)
    ON CONFLICT (service_id, template_id) DO UPDATE SET body = excluded.body";
const DELETE: &str = "DELETE FROM templates WHERE service_id = $1 AND template_id = $2";

pub(in crate::store) struct PgTemplates(pub(in crate::store) Arc<Pg>);

fn decode(id: &str, body: &str) -> Result<Template, StoreError> {
    serde_json::from_str(body).map_err(|e| StoreError::Corrupt {
        tree: "templates",
        key: id.into(),
        reason: e.to_string(),
    })
}

impl Templates for PgTemplates {
    fn get<'a>(&'a self, service: &'a str, id: &'a str) -> StoreFuture<'a, Option<Template>> {
        Box::pin(async move {
            let body: Option<String> = self
                .0
                .run(|c| async move {
                    let st = c.prepare_cached(GET).await?;
                    Ok(c.query_opt(&st, &[&service, &id]).await?.map(|r| r.get(0)))
                })
                .await?;
            body.map(|b| decode(id, &b)).transpose()
        })
    }

    fn list<'a>(&'a self, service: &'a str) -> StoreFuture<'a, Vec<Template>> {
        Box::pin(async move {
            let bodies: Vec<String> = self
                .0
                .run(|c| async move {
                    let st = c.prepare_cached(LIST).await?;
                    let rows = c.query(&st, &[&service]).await?;
                    Ok(rows.iter().map(|r| r.get(0)).collect())
                })
                .await?;
            // As on sled: a template that no longer decodes is left out of the list.
            Ok(bodies
                .iter()
                .filter_map(|b| serde_json::from_str(b).ok())
                .collect())
        })
    }

    fn put<'a>(&'a self, service: &'a str, t: &'a Template) -> StoreFuture<'a, ()> {
        Box::pin(async move {
            let body = serde_json::to_string(t).map_err(|e| StoreError::Corrupt {
                tree: "templates",
                key: t.id.clone(),
                reason: e.to_string(),
            })?;
            self.0
                .run(|c| async move {
                    let st = c.prepare_cached(PUT).await?;
                    c.execute(&st, &[&service, &t.id, &body]).await
                })
                .await?;
            Ok(())
        })
    }

    fn delete<'a>(&'a self, service: &'a str, id: &'a str) -> StoreFuture<'a, bool> {
        Box::pin(async move {
            let n = self
                .0
                .run(|c| async move {
                    let st = c.prepare_cached(DELETE).await?;
                    c.execute(&st, &[&service, &id]).await
                })
                .await?;
            Ok(n > 0)
        })
    }
}
