//! Public, inspectable records of the sandbox: accounts' entities, tokens, counters, logs.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// A deal (lead) as the sandbox stores it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Lead {
    pub id: u64,
    pub name: String,
    pub price: i64,
    pub pipeline_id: u64,
    pub status_id: u64,
    pub responsible_user_id: u64,
    pub created_by: u64,
    pub updated_by: u64,
    /// Sandbox-clock unix seconds.
    pub created_at: i64,
    pub updated_at: i64,
    pub closed_at: Option<i64>,
    pub custom_fields_values: Vec<FieldValues>,
    pub tags: Vec<Tag>,
    pub contact_ids: Vec<u64>,
    pub company_id: Option<u64>,
    /// The `request_id` given when the lead was created through the API, if any.
    pub request_id: Option<String>,
}

/// A contact; phones and e-mails live in `custom_fields_values` under the codes `PHONE` / `EMAIL`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Contact {
    pub id: u64,
    pub name: String,
    pub first_name: String,
    pub last_name: String,
    pub responsible_user_id: u64,
    pub created_at: i64,
    pub updated_at: i64,
    pub custom_fields_values: Vec<FieldValues>,
    pub company_id: Option<u64>,
    pub lead_ids: Vec<u64>,
}

impl Contact {
    /// All values of the multitext field with this code (`PHONE`, `EMAIL`).
    pub fn values_of(&self, code: &str) -> Vec<String> {
        values_of(&self.custom_fields_values, code)
    }
}

/// A company.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Company {
    pub id: u64,
    pub name: String,
    pub responsible_user_id: u64,
    pub created_at: i64,
    pub updated_at: i64,
    pub custom_fields_values: Vec<FieldValues>,
    pub contact_ids: Vec<u64>,
    pub lead_ids: Vec<u64>,
}

/// The values one entity holds for one custom field.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FieldValues {
    pub field_id: u64,
    pub field_name: String,
    pub field_code: Option<String>,
    pub field_type: String,
    pub values: Vec<FieldValue>,
}

/// One value of a custom field (`enum_id` for selects, `enum_code` for multitext such as `WORK`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FieldValue {
    pub value: serde_json::Value,
    pub enum_id: Option<u64>,
    pub enum_code: Option<String>,
}

impl FieldValue {
    /// The value as amoCRM's webhooks carry it: a string.
    pub fn as_text(&self) -> String {
        match &self.value {
            serde_json::Value::String(s) => s.clone(),
            serde_json::Value::Null => String::new(),
            serde_json::Value::Bool(b) => if *b { "1" } else { "0" }.to_owned(),
            other => other.to_string(),
        }
    }
}

/// Finds the values of the field with `code` (case-insensitive) in a list of field values.
pub fn values_of(fields: &[FieldValues], code: &str) -> Vec<String> {
    fields
        .iter()
        .filter(|f| {
            f.field_code
                .as_deref()
                .is_some_and(|c| c.eq_ignore_ascii_case(code))
        })
        .flat_map(|f| f.values.iter().map(FieldValue::as_text))
        .collect()
}

/// A tag on a lead.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tag {
    pub id: u64,
    pub name: String,
}

/// A pipeline with its statuses (system ones included).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pipeline {
    pub id: u64,
    pub name: String,
    pub sort: i64,
    pub is_main: bool,
    pub is_unsorted_on: bool,
    pub is_archive: bool,
    pub statuses: Vec<Status>,
}

impl Pipeline {
    /// The status with this id in this pipeline.
    pub fn status(&self, id: u64) -> Option<&Status> {
        self.statuses.iter().find(|s| s.id == id)
    }
}

/// A pipeline stage. `type_` 1 is the incoming (unsorted) stage; 142 and 143 are the same ids everywhere.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Status {
    pub id: u64,
    pub name: String,
    pub sort: i64,
    pub color: String,
    #[serde(rename = "type")]
    pub type_: u8,
    pub is_editable: bool,
    pub pipeline_id: u64,
}

/// A lead custom field.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CustomField {
    pub id: u64,
    pub name: String,
    #[serde(rename = "type")]
    pub type_: String,
    pub code: Option<String>,
    pub sort: i64,
    pub is_api_only: bool,
    pub enums: Vec<FieldEnum>,
    /// `leads` or `contacts` (companies share the contacts' fields).
    pub entity_type: String,
}

/// One option of a select-like custom field.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FieldEnum {
    pub id: u64,
    pub value: String,
    pub sort: i64,
}

/// A webhook subscription of an account.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Webhook {
    pub id: u64,
    pub destination: String,
    pub settings: Vec<String>,
    pub sort: i64,
    pub disabled: bool,
    pub created_at: i64,
    pub updated_at: i64,
    /// Failed deliveries within the last 2 hours.
    pub recent_failures: u32,
}

/// A freshly minted token pair, shaped like amoCRM's token response.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenPair {
    pub token_type: String,
    pub expires_in: i64,
    pub access_token: String,
    pub refresh_token: String,
    pub server_time: i64,
    /// The account the grant belongs to (also inside the access token's claims).
    pub account_id: u64,
}

/// Per-account counters (or their sum over all accounts).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counters {
    /// Every request addressed to the account, including refused ones.
    pub requests: u64,
    /// Requests that passed the rate limit (and forced 429s).
    pub admitted: u64,
    /// Successful `authorization_code` grants.
    pub code_exchanges: u64,
    /// Refused `authorization_code` grants.
    pub rejected_code_exchanges: u64,
    /// Successful `refresh_token` grants.
    pub refreshes: u64,
    /// Refused `refresh_token` grants (revoked, expired, unknown token, bad client…), not faults.
    pub rejected_refreshes: u64,
    /// 429 answers (rate limit and forced).
    pub rate_limited: u64,
    /// 500 answers injected by `fail_next`.
    pub injected_failures: u64,
    /// Requests applied and never answered (`drop_after_write_next`).
    pub dropped: u64,
    /// API requests refused with 401.
    pub unauthorized: u64,
    /// `POST /api/v4/leads/complex` calls that created leads.
    pub complex_calls: u64,
    /// Leads created (any route).
    pub leads_created: u64,
}

impl Counters {
    /// Adds another account's counters to these.
    pub fn add(&mut self, o: &Counters) {
        self.requests += o.requests;
        self.admitted += o.admitted;
        self.code_exchanges += o.code_exchanges;
        self.rejected_code_exchanges += o.rejected_code_exchanges;
        self.refreshes += o.refreshes;
        self.rejected_refreshes += o.rejected_refreshes;
        self.rate_limited += o.rate_limited;
        self.injected_failures += o.injected_failures;
        self.dropped += o.dropped;
        self.unauthorized += o.unauthorized;
        self.complex_calls += o.complex_calls;
        self.leads_created += o.leads_created;
    }
}

/// One request the sandbox received (admin routes under `/_sandbox` are not logged).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LoggedRequest {
    /// Increasing sequence number, for `?since=`.
    pub seq: u64,
    pub method: String,
    /// Path as the account sees it (`/api/v4/leads`, `/oauth2/access_token`), or the full path for
    /// requests not addressed to an account (`/oauth`).
    pub path: String,
    /// Account host from the path (`None` for the consent page).
    pub host: Option<String>,
    /// `grant_type` of token requests.
    pub grant_type: Option<String>,
    pub status: u16,
    /// The request was applied but never answered.
    pub dropped: bool,
    pub at: DateTime<Utc>,
}

/// What kind of outgoing request a delivery was.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeliveryKind {
    Webhook,
    Uninstall,
    /// The code sent to the redirect URI when the integration is installed from amoCRM's widget
    /// catalogue (`from_widget=1`, no `state`).
    WidgetInstall,
}

/// One outgoing request (webhook or uninstall hook) and its outcome.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Delivery {
    pub seq: u64,
    pub kind: DeliveryKind,
    pub host: String,
    /// Destination URL (for the uninstall hook, with its query).
    pub url: String,
    /// The form body (webhooks); empty for the uninstall hook.
    pub body: String,
    /// HTTP status received; `None` on timeout or connection error.
    pub status: Option<u16>,
    pub error: Option<String>,
    pub ok: bool,
    pub at: DateTime<Utc>,
}

/// Summary of an account for listings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccountInfo {
    pub id: u64,
    pub host: String,
    pub subdomain: String,
    pub name: String,
}
