//! The versioned wire types of the Messaging API v2 (SPEC 4). Only this module and the
//! handlers know JSON field names; the OpenAPI document is generated from these types, so
//! the document and the handlers cannot drift apart.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use utoipa::ToSchema;

/// `POST /v2/messages` body. Field names follow the reference samples; where the samples
/// disagree on case, both spellings are accepted.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct SendRequest {
    /// `"email"`; other channels are refused with 7004.
    pub channel: String,
    /// Sender address; its domain must belong to an asset the service may use.
    pub from: String,
    /// Destinations, each with one or more addresses.
    pub to: Vec<Destination>,
    #[serde(default)]
    pub cc: Vec<String>,
    #[serde(default)]
    pub bcc: Vec<String>,
    /// true: one email to every address, one tid. Absent/false: one email and tid per address.
    #[serde(
        default,
        alias = "multipleTorecipients",
        alias = "multipletorecipients"
    )]
    pub multiple_to_recipients: bool,
    /// Global substitutions; per-destination ones win.
    #[serde(default)]
    pub substitutions: BTreeMap<String, String>,
    pub content: Option<Content>,
    pub template: Option<TemplateRef>,
    #[serde(default)]
    pub options: Options,
    /// Receipt filter; absent = all.
    pub requested_receipts: Option<Vec<String>>,
    #[serde(alias = "correlationid")]
    pub correlation_id: Option<String>,
    #[serde(alias = "callbackdata")]
    pub callback_data: Option<String>,
    #[serde(alias = "notifyurl", alias = "notifyURL")]
    pub notify_url: Option<String>,
    /// ISO 8601 with a zone, or epoch seconds (string or number).
    #[schema(value_type = Option<String>)]
    pub send_at: Option<serde_json::Value>,
    #[schema(value_type = Option<String>)]
    pub expire_at: Option<serde_json::Value>,
    /// Seconds, counted from sendAt when given.
    pub validity: Option<u64>,
    pub contact_policy: Option<ContactPolicy>,
}

#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Destination {
    pub email: Vec<String>,
    #[serde(default, alias = "correlationid")]
    pub correlation_id: Option<String>,
    #[serde(default)]
    pub substitutions: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Content {
    /// `text` or `html`.
    #[serde(rename = "type")]
    pub kind: String,
    pub encoding: Option<String>,
    pub subject: Option<String>,
    pub reply_to: Option<String>,
    pub text: Option<String>,
    pub html: Option<String>,
    #[serde(default)]
    pub attachments: Vec<AttachmentRef>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct AttachmentRef {
    pub mimetype: String,
    pub name: String,
    pub media_url: String,
}

#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct TemplateRef {
    pub id: String,
    pub encoding: Option<String>,
    pub subject: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Options {
    pub from_name: Option<String>,
    #[serde(default)]
    pub track_clicks: bool,
    #[serde(default)]
    pub track_opens: bool,
    pub list_unsubscribe_url: Option<String>,
    pub unsubscribe_email_address: Option<String>,
    pub unsubscribe_email_subject: Option<String>,
}

#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ContactPolicy {
    pub contact_policy_group: Option<String>,
    #[serde(default)]
    pub channel_check_consent: bool,
    #[serde(default)]
    pub channel_apply_frequency_cap: bool,
}

/// `202 Accepted` body.
#[derive(Debug, Clone, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Accepted {
    pub code: &'static str,
    pub description: &'static str,
    pub request_id: String,
    pub messages: Vec<AcceptedMessage>,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct AcceptedMessage {
    pub tid: String,
    pub to: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub correlation_id: Option<String>,
}

/// Every error body.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ErrorBody {
    pub code: String,
    pub description: String,
}

/// A stored template.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Template {
    pub id: String,
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub subject: String,
    #[serde(default)]
    pub text: String,
    #[serde(default)]
    pub html: String,
}

/// `GET /v2/messages/{tid}`.
#[derive(Debug, Clone, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct MessageStatus {
    pub tid: String,
    pub request_id: String,
    pub state: String,
    pub from: String,
    pub recipients: Vec<RecipientStatus>,
    pub send_at: String,
    pub expire_at: String,
    pub attempts: u32,
    pub events: Vec<HistoryItem>,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct RecipientStatus {
    pub address: String,
    pub state: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub code: Option<String>,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct HistoryItem {
    pub time_stamp: String,
    pub destination: String,
    pub code: String,
    pub delivery_status: String,
    pub description: String,
    pub additional_info: String,
}
