//! TEMPORARY (issue 11): the old inherent methods, delegating to the per-concern
//! interfaces, so the crate compiles while call sites move to the accessors. Deleted once
//! they have (see /work/wt/store-map.txt).

use super::domains::DomainState;
use super::messages::{Hit, MessageRecord};
use super::suppression::Suppression;
use super::tokens::RouteToken;
use super::{OutboxEntry, Store, StoreError, TidLock};
use crate::model::wire::Template;

impl Store {
    pub fn suppression(
        &self,
        asset: &str,
        address: &str,
        now_ms: u64,
    ) -> Result<Option<Suppression>, StoreError> {
        self.suppressions_store().get(asset, address, now_ms)
    }
    pub async fn suppress(&self, entries: &[Suppression]) -> Result<(), StoreError> {
        self.suppressions_store().add(entries).await
    }
    pub async fn unsuppress(&self, asset: &str, address: &str) -> Result<bool, StoreError> {
        self.suppressions_store().remove(asset, address).await
    }
    pub fn suppressions(
        &self,
        asset: Option<&str>,
        now_ms: u64,
    ) -> Result<Vec<Suppression>, StoreError> {
        self.suppressions_store().list(asset, now_ms)
    }

    pub fn template_get(&self, service: &str, id: &str) -> Result<Option<Template>, StoreError> {
        self.templates().get(service, id)
    }
    pub fn template_list(&self, service: &str) -> Result<Vec<Template>, StoreError> {
        self.templates().list(service)
    }
    pub async fn template_put(&self, service: &str, t: &Template) -> Result<(), StoreError> {
        self.templates().put(service, t).await
    }
    pub async fn template_delete(&self, service: &str, id: &str) -> Result<bool, StoreError> {
        self.templates().delete(service, id).await
    }

    pub fn has_consent(&self, group: &str, address: &str) -> Result<bool, StoreError> {
        self.policy().has_consent(group, address)
    }
    pub async fn set_consent(
        &self,
        group: &str,
        address: &str,
        granted: bool,
    ) -> Result<bool, StoreError> {
        self.policy().set_consent(group, address, granted).await
    }
    pub fn consents(&self, group: &str) -> Result<Vec<String>, StoreError> {
        self.policy().consents(group)
    }
    pub fn sends_since(
        &self,
        group: &str,
        address: &str,
        since_ms: u64,
    ) -> Result<usize, StoreError> {
        self.policy().sends_since(group, address, since_ms)
    }
    pub fn record_send(
        &self,
        group: &str,
        address: &str,
        at_ms: u64,
        since_ms: u64,
    ) -> Result<(), StoreError> {
        self.policy().record_send(group, address, at_ms, since_ms)
    }
    pub fn frequency_len(&self) -> usize {
        self.policy().frequency_len()
    }
    pub fn prune_frequency(
        &self,
        now_ms: u64,
        window_ms: &dyn Fn(&str) -> u64,
    ) -> Result<usize, StoreError> {
        self.policy().prune_frequency(now_ms, window_ms)
    }

    pub fn domain_state(&self, domain: &str) -> Result<Option<DomainState>, StoreError> {
        self.domains().state(domain)
    }
    pub fn domain_verified(&self, domain: &str) -> Result<bool, StoreError> {
        self.domains().verified(domain)
    }
    pub async fn set_domain_state(
        &self,
        domain: &str,
        state: &DomainState,
    ) -> Result<(), StoreError> {
        self.domains().set_state(domain, state).await
    }

    pub async fn submit(
        &self,
        records: &[MessageRecord],
        events: &[OutboxEntry],
    ) -> Result<(), StoreError> {
        self.messages().submit(records, events).await
    }
    pub async fn update_message(
        &self,
        record: &MessageRecord,
        events: &[OutboxEntry],
    ) -> Result<(), StoreError> {
        self.messages().update(record, events).await
    }
    pub fn message(&self, tid: &str) -> Result<Option<MessageRecord>, StoreError> {
        self.messages().get(tid)
    }
    pub fn active_messages(&self) -> Result<Vec<MessageRecord>, StoreError> {
        self.messages().active()
    }
    pub fn track_hit(
        &self,
        tid: &str,
        recipient: &str,
        key: &str,
        now: u64,
        window_ms: u64,
        create: bool,
    ) -> Result<Option<Hit>, StoreError> {
        self.messages()
            .track_hit(tid, recipient, key, now, window_ms, create)
    }
    pub fn track_count(&self, tid: &str, recipient: &str, key: &str) -> Result<u64, StoreError> {
        self.messages().track_count(tid, recipient, key)
    }
    pub async fn lock_tid<'a>(&'a self, tid: &'a str) -> TidLock<'a> {
        self.messages().lock_tid(tid).await
    }

    pub fn map_route_id(&self, id: &str, tid: &str) -> Result<(), StoreError> {
        self.routes().map_route_id(id, tid)
    }
    pub fn tid_for_route_id(&self, id: &str) -> Result<Option<String>, StoreError> {
        self.routes().tid_for_route_id(id)
    }
    pub fn sns_seen(&self, id: &str) -> Result<bool, StoreError> {
        self.routes().sns_seen(id)
    }
    pub async fn mark_sns_seen(&self, id: &str) -> Result<(), StoreError> {
        self.routes().mark_sns_seen(id).await
    }
    pub fn route_token(&self, asset_id: &str) -> Result<Option<RouteToken>, StoreError> {
        self.routes().route_token(asset_id)
    }
    pub async fn put_route_token(
        &self,
        asset_id: &str,
        token: &RouteToken,
    ) -> Result<(), StoreError> {
        self.routes().put_route_token(asset_id, token).await
    }
}
