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
    /// Links the `drop_links_*` faults silently left out of a `leads/link` batch.
    #[serde(default)]
    pub links_dropped: u64,
    /// API requests by endpoint family, counted on arrival (refused ones included), so a test or a
    /// benchmark can print how many calls of each kind one order took.
    #[serde(default)]
    pub endpoints: EndpointCounters,
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
        self.links_dropped += o.links_dropped;
        self.endpoints.add(&o.endpoints);
    }
}

/// Declares [`EndpointCounters`] from one list of family names, so the struct, `bump`, `add` and
/// `families` cannot drift apart.
macro_rules! endpoint_counters {
    ($($(#[doc = $doc:literal])* $name:ident),* $(,)?) => {
        /// API requests per endpoint family (see the crate's README for which routes each one counts).
        #[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
        #[serde(default)]
        pub struct EndpointCounters {
            $($(#[doc = $doc])* pub $name: u64,)*
        }

        impl EndpointCounters {
            /// Counts one request of `family` (an unknown name counts as `other`).
            pub fn bump(&mut self, family: &str) {
                match family {
                    $(stringify!($name) => self.$name += 1,)*
                    _ => self.other += 1,
                }
            }

            /// Adds another account's counts to these.
            pub fn add(&mut self, o: &EndpointCounters) {
                $(self.$name += o.$name;)*
            }

            /// `(family, count)` for every family, in declaration order.
            pub fn families(&self) -> Vec<(&'static str, u64)> {
                vec![$((stringify!($name), self.$name),)*]
            }

            /// All API requests counted.
            pub fn total(&self) -> u64 {
                0 $(+ self.$name)*
            }
        }
    };
}

endpoint_counters! {
    /// `GET account`.
    account,
    /// `leads/pipelines…` (any method).
    pipelines,
    /// `leads/custom_fields…` (any method).
    custom_fields,
    /// `webhooks` (any method).
    webhooks,
    /// `POST leads/complex`.
    complex,
    /// `GET leads`, `GET leads/{id}`.
    leads_read,
    /// `POST leads`, `PATCH leads`, `PATCH leads/{id}`.
    leads_write,
    /// `POST leads/notes`, `POST leads/{id}/notes`.
    notes_create,
    /// `GET leads/notes`, `GET leads/{id}/notes`.
    notes_read,
    /// `POST leads/link`, `POST leads/unlink`.
    links_create,
    /// `GET leads/{id}/links`.
    links_read,
    /// `GET contacts?query=…`.
    contacts_search,
    /// `GET contacts` without `query`, `GET contacts/{id}`.
    contacts_read,
    /// `POST contacts`.
    contacts_create,
    /// `PATCH contacts`, `PATCH contacts/{id}`.
    contacts_patch,
    /// `GET companies…`.
    companies_read,
    /// `GET catalogs`, `GET catalogs/{id}`.
    catalogs,
    /// `GET catalogs/{id}/elements…`.
    elements_search,
    /// `POST catalogs/{id}/elements`.
    elements_create,
    /// `POST tasks`.
    tasks_create,
    /// `GET tasks…`.
    tasks_read,
    /// `GET users…`.
    users,
    /// `POST leads/unsorted/forms`.
    unsorted_create,
    /// `POST leads/unsorted/{uid}/accept`.
    unsorted_accept,
    /// `DELETE leads/unsorted/{uid}/decline`.
    unsorted_decline,
    /// `GET leads/unsorted…`.
    unsorted_read,
    /// Any other API route (unknown ones included).
    other,
}

/// A user of an account. Deleted users are gone; deactivated ones stay listed with `is_active: false`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct User {
    pub id: u64,
    pub name: String,
    pub email: String,
    pub is_admin: bool,
    pub is_active: bool,
}

/// A user to add to an account (handle and control API).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct NewUser {
    pub name: String,
    /// Empty: one is made up from the name.
    pub email: String,
    pub is_admin: bool,
}

/// A contact to create as a manager would in the UI (handle and control API).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct ContactSeed {
    pub name: String,
    pub first_name: String,
    pub last_name: String,
    /// Stored as typed, under `PHONE` with enum `WORK`.
    pub phones: Vec<String>,
    /// Under `EMAIL` with enum `WORK`.
    pub emails: Vec<String>,
    /// `None`: the account's default user.
    pub responsible_user_id: Option<u64>,
}

/// A manager's edit of a contact; `None` leaves a part as it is, a list replaces all values.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct ContactChange {
    pub name: Option<String>,
    pub phones: Option<Vec<String>>,
    pub emails: Option<Vec<String>>,
    pub responsible_user_id: Option<u64>,
}

/// A note on a lead.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Note {
    pub id: u64,
    /// The lead.
    pub entity_id: u64,
    /// `common`, `extended_service_message`, …
    pub note_type: String,
    /// `params.text`.
    pub text: String,
    /// `params` as sent.
    pub params: serde_json::Value,
    /// 0 is "the robot".
    pub created_by: u64,
    pub responsible_user_id: u64,
    pub created_at: i64,
    pub updated_at: i64,
    pub request_id: Option<String>,
}

/// A task.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Task {
    pub id: u64,
    pub text: String,
    /// Unix seconds.
    pub complete_till: i64,
    pub entity_id: Option<u64>,
    /// `leads`, `contacts` or `companies`.
    pub entity_type: Option<String>,
    pub responsible_user_id: u64,
    /// 1 call, 2 meeting.
    pub task_type_id: u64,
    pub is_completed: bool,
    pub created_by: u64,
    pub created_at: i64,
    pub updated_at: i64,
    pub request_id: Option<String>,
}

/// A list ("catalog"): `regular`, `invoices` or `products` (at most one of these).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Catalog {
    pub id: u64,
    pub name: String,
    #[serde(rename = "type")]
    pub type_: String,
    pub sort: i64,
    pub created_at: i64,
}

/// An element of a list (a product of the products list).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CatalogElement {
    pub id: u64,
    pub catalog_id: u64,
    pub name: String,
    /// Products: `SKU`, `PRICE`, `DESCRIPTION` by code.
    pub custom_fields_values: Vec<FieldValues>,
    pub created_at: i64,
    pub updated_at: i64,
    pub request_id: Option<String>,
}

impl CatalogElement {
    /// All values of the field with this code (`SKU`, `PRICE`, `DESCRIPTION`).
    pub fn values_of(&self, code: &str) -> Vec<String> {
        values_of(&self.custom_fields_values, code)
    }
}

/// A link from a lead to a list element (with quantity) or to a contact.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EntityLink {
    pub lead_id: u64,
    /// `catalog_elements` or `contacts`.
    pub to_entity_type: String,
    pub to_entity_id: u64,
    pub catalog_id: Option<u64>,
    pub quantity: Option<f64>,
}

/// Where an unsorted ("incoming") request stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UnsortedState {
    Pending,
    Accepted,
    Declined,
}

/// An unsorted ("incoming") request: a lead waiting in its pipeline's incoming stage.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UnsortedEntry {
    pub uid: String,
    pub source_uid: String,
    pub source_name: String,
    /// `forms`.
    pub category: String,
    pub pipeline_id: u64,
    pub created_at: i64,
    /// `metadata` as sent (`form_id`, `form_name`, `form_page`, `form_sent_at`, …).
    pub metadata: serde_json::Value,
    pub lead_id: u64,
    pub contact_ids: Vec<u64>,
    pub company_id: Option<u64>,
    pub request_id: Option<String>,
    pub state: UnsortedState,
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
