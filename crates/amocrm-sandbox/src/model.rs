//! Public, inspectable records of the sandbox: accounts' entities, tokens, counters, logs.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// A deal (lead) as the sandbox stores it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Lead {
    /// amoCRM's id of this lead.
    pub id: u64,
    /// Name as amoCRM shows it.
    pub name: String,
    /// Sale value in whole currency units.
    pub price: i64,
    /// The pipeline it belongs to.
    pub pipeline_id: u64,
    /// The pipeline stage.
    pub status_id: u64,
    /// The amoCRM user responsible for it.
    pub responsible_user_id: u64,
    /// The user who created it.
    pub created_by: u64,
    /// The user who changed it last.
    pub updated_by: u64,
    /// Sandbox-clock unix seconds.
    pub created_at: i64,
    /// When it last changed (Unix seconds).
    pub updated_at: i64,
    /// When the lead was won or lost (Unix seconds).
    pub closed_at: Option<i64>,
    /// Custom field values (each names its field by id or code).
    pub custom_fields_values: Vec<FieldValues>,
    /// Tags shown on the lead.
    pub tags: Vec<Tag>,
    /// Linked contacts.
    pub contact_ids: Vec<u64>,
    /// Linked company, if any.
    pub company_id: Option<u64>,
    /// The `request_id` given when the lead was created through the API, if any.
    pub request_id: Option<String>,
}

/// A contact; phones and e-mails live in `custom_fields_values` under the codes `PHONE` / `EMAIL`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Contact {
    /// amoCRM's id of this contact.
    pub id: u64,
    /// Name as amoCRM shows it.
    pub name: String,
    /// Given name.
    pub first_name: String,
    /// Family name.
    pub last_name: String,
    /// The amoCRM user responsible for it.
    pub responsible_user_id: u64,
    /// When it was created (Unix seconds).
    pub created_at: i64,
    /// When it last changed (Unix seconds).
    pub updated_at: i64,
    /// Custom field values (each names its field by id or code).
    pub custom_fields_values: Vec<FieldValues>,
    /// Linked company, if any.
    pub company_id: Option<u64>,
    /// Linked leads.
    pub lead_ids: Vec<u64>,
}

impl Contact {
    /// All values of the multitext field with this code (`PHONE`, `EMAIL`).
    pub fn values_of(&self, code: &str) -> Vec<String> {
        values_of(&self.custom_fields_values, code)
    }

    pub(crate) fn party(&self) -> Party<'_> {
        Party {
            id: self.id,
            name: &self.name,
            responsible: self.responsible_user_id,
            created_at: self.created_at,
            updated_at: self.updated_at,
            fields: &self.custom_fields_values,
            linked_company: self.company_id,
            lead_ids: &self.lead_ids,
            kind: "contact",
        }
    }
}

/// A company.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Company {
    /// amoCRM's id of this company.
    pub id: u64,
    /// Name as amoCRM shows it.
    pub name: String,
    /// The amoCRM user responsible for it.
    pub responsible_user_id: u64,
    /// When it was created (Unix seconds).
    pub created_at: i64,
    /// When it last changed (Unix seconds).
    pub updated_at: i64,
    /// Custom field values (each names its field by id or code).
    pub custom_fields_values: Vec<FieldValues>,
    /// Linked contacts.
    pub contact_ids: Vec<u64>,
    /// Linked leads.
    pub lead_ids: Vec<u64>,
}

impl Company {
    pub(crate) fn party(&self) -> Party<'_> {
        Party {
            id: self.id,
            name: &self.name,
            responsible: self.responsible_user_id,
            created_at: self.created_at,
            updated_at: self.updated_at,
            fields: &self.custom_fields_values,
            linked_company: None,
            lead_ids: &self.lead_ids,
            kind: "company",
        }
    }
}

/// What contacts and companies share, as the API answers and webhooks show them alike.
pub(crate) struct Party<'a> {
    pub id: u64,
    pub name: &'a str,
    pub responsible: u64,
    pub created_at: i64,
    pub updated_at: i64,
    pub fields: &'a [FieldValues],
    /// A contact's company.
    pub linked_company: Option<u64>,
    pub lead_ids: &'a [u64],
    /// `contact` or `company`.
    pub kind: &'static str,
}

/// The values one entity holds for one custom field.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FieldValues {
    /// Field id in this account.
    pub field_id: u64,
    /// Field name as the account shows it.
    pub field_name: String,
    /// Field code, when it has one.
    pub field_code: Option<String>,
    /// Field type (`text`, `numeric`, `multitext`, `select`, …).
    pub field_type: String,
    /// The field's values (multitext fields hold several).
    pub values: Vec<FieldValue>,
}

/// One value of a custom field (`enum_id` for selects, `enum_code` for multitext such as `WORK`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FieldValue {
    /// The value: a string for most types, a number or boolean for some.
    pub value: serde_json::Value,
    /// The chosen option's id (select fields, `WORK`/`MOB` of multitext fields).
    pub enum_id: Option<u64>,
    /// The chosen option's code (`WORK`, `MOB`…).
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
    /// amoCRM's id of this tag.
    pub id: u64,
    /// Name as amoCRM shows it.
    pub name: String,
}

/// A pipeline with its statuses (system ones included).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pipeline {
    /// amoCRM's id of this pipeline.
    pub id: u64,
    /// Name as amoCRM shows it.
    pub name: String,
    /// Position among its siblings (lower comes first).
    pub sort: i64,
    /// Whether this is the account's main pipeline (or main contact).
    pub is_main: bool,
    /// Whether the incoming (unsorted) stage takes requests; unsorted calls need it on.
    pub is_unsorted_on: bool,
    /// Whether the pipeline is archived.
    pub is_archive: bool,
    /// Its stages, in order.
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
    /// amoCRM's id of this status.
    pub id: u64,
    /// Name as amoCRM shows it.
    pub name: String,
    /// Position among its siblings (lower comes first).
    pub sort: i64,
    /// Stage colour as a `#rrggbb` string.
    pub color: String,
    #[serde(rename = "type")]
    /// 1 for the incoming (unsorted) stage, 0 otherwise.
    pub type_: u8,
    /// Whether a manager may rename or delete the stage (won, lost and incoming stages are fixed).
    pub is_editable: bool,
    /// The pipeline it belongs to.
    pub pipeline_id: u64,
}

/// A lead custom field.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CustomField {
    /// amoCRM's id of this custom field.
    pub id: u64,
    /// Name as amoCRM shows it.
    pub name: String,
    #[serde(rename = "type")]
    /// Field type (`text`, `select`, `multitext`…).
    pub type_: String,
    /// The field's code (`PHONE`, `EMAIL`, `SKU`…): stable across accounts, unlike ids.
    pub code: Option<String>,
    /// Position among its siblings (lower comes first).
    pub sort: i64,
    /// Whether only integrations may edit the field (hidden from managers' edit forms).
    pub is_api_only: bool,
    /// The options of a select field.
    pub enums: Vec<FieldEnum>,
    /// `leads` or `contacts` (companies share the contacts' fields).
    pub entity_type: String,
}

/// One option of a select-like custom field.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FieldEnum {
    /// amoCRM's id of this field enum.
    pub id: u64,
    /// The option's text.
    pub value: String,
    /// Position among its siblings (lower comes first).
    pub sort: i64,
}

/// A webhook subscription of an account.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Webhook {
    /// amoCRM's id of this webhook.
    pub id: u64,
    /// The URL webhooks are posted to.
    pub destination: String,
    /// The events the destination is subscribed to (`add_lead`, `status_lead`, …).
    pub settings: Vec<String>,
    /// Position among its siblings (lower comes first).
    pub sort: i64,
    /// Whether amoCRM stopped sending to it after repeated failures.
    pub disabled: bool,
    /// When it was created (Unix seconds).
    pub created_at: i64,
    /// When it last changed (Unix seconds).
    pub updated_at: i64,
    /// Failed deliveries within the last 2 hours.
    pub recent_failures: u32,
}

/// A freshly minted token pair, shaped like amoCRM's token response.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenPair {
    /// Always `Bearer`.
    pub token_type: String,
    /// Seconds the access token lives (86400).
    pub expires_in: i64,
    /// The access token sent as `Authorization: Bearer`.
    pub access_token: String,
    /// The refresh token (single-use: each refresh returns a new one).
    pub refresh_token: String,
    /// The sandbox's clock when the pair was issued (Unix seconds).
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
    /// amoCRM's id of this user.
    pub id: u64,
    /// Name as amoCRM shows it.
    pub name: String,
    /// E-mail address.
    pub email: String,
    /// Whether the user administers the account (needed for admin-only routes such as `GET users`).
    pub is_admin: bool,
    /// Whether the user may still sign in; an inactive user's tokens are refused with 403.
    pub is_active: bool,
}

/// A user to add to an account (handle and control API).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct NewUser {
    /// Name as amoCRM shows it.
    pub name: String,
    /// Empty: one is made up from the name.
    pub email: String,
    /// Whether the user administers the account (needed for admin-only routes such as `GET users`).
    pub is_admin: bool,
}

/// A contact to create as a manager would in the UI (handle and control API).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct ContactSeed {
    /// Name as amoCRM shows it.
    pub name: String,
    /// Given name.
    pub first_name: String,
    /// Family name.
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
    /// Name as amoCRM shows it.
    pub name: Option<String>,
    /// Phone numbers (stored under `PHONE`, enum `WORK`).
    pub phones: Option<Vec<String>>,
    /// E-mail addresses (stored under `EMAIL`, enum `WORK`).
    pub emails: Option<Vec<String>>,
    /// The amoCRM user responsible for it.
    pub responsible_user_id: Option<u64>,
}

/// A note on a lead.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Note {
    /// amoCRM's id of this note.
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
    /// The amoCRM user responsible for it.
    pub responsible_user_id: u64,
    /// When it was created (Unix seconds).
    pub created_at: i64,
    /// When it last changed (Unix seconds).
    pub updated_at: i64,
    /// The caller's correlation id: amoCRM echoes it so results can be matched to what was sent.
    pub request_id: Option<String>,
}

/// A task.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Task {
    /// amoCRM's id of this task.
    pub id: u64,
    /// The text a manager sees.
    pub text: String,
    /// Unix seconds.
    pub complete_till: i64,
    /// The lead (or other entity) it is attached to.
    pub entity_id: Option<u64>,
    /// `leads`, `contacts` or `companies`.
    pub entity_type: Option<String>,
    /// The amoCRM user responsible for it.
    pub responsible_user_id: u64,
    /// 1 call, 2 meeting.
    pub task_type_id: u64,
    /// Whether the task is done.
    pub is_completed: bool,
    /// The user who created it.
    pub created_by: u64,
    /// When it was created (Unix seconds).
    pub created_at: i64,
    /// When it last changed (Unix seconds).
    pub updated_at: i64,
    /// The caller's correlation id: amoCRM echoes it so results can be matched to what was sent.
    pub request_id: Option<String>,
}

/// A list ("catalog"): `regular`, `invoices` or `products` (at most one of these).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Catalog {
    /// amoCRM's id of this catalog.
    pub id: u64,
    /// Name as amoCRM shows it.
    pub name: String,
    #[serde(rename = "type")]
    /// `regular`, `invoices` or `products`.
    pub type_: String,
    /// Position among its siblings (lower comes first).
    pub sort: i64,
    /// When it was created (Unix seconds).
    pub created_at: i64,
}

/// An element of a list (a product of the products list).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CatalogElement {
    /// amoCRM's id of this catalog element.
    pub id: u64,
    /// The list (catalog) the element belongs to.
    pub catalog_id: u64,
    /// Name as amoCRM shows it.
    pub name: String,
    /// Products: `SKU`, `PRICE`, `DESCRIPTION` by code.
    pub custom_fields_values: Vec<FieldValues>,
    /// When it was created (Unix seconds).
    pub created_at: i64,
    /// When it last changed (Unix seconds).
    pub updated_at: i64,
    /// The caller's correlation id: amoCRM echoes it so results can be matched to what was sent.
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
    /// The lead it concerns.
    pub lead_id: u64,
    /// `catalog_elements` or `contacts`.
    pub to_entity_type: String,
    /// The linked entity (a contact, company or list element).
    pub to_entity_id: u64,
    /// The list (catalog) the element belongs to.
    pub catalog_id: Option<u64>,
    /// How many of the element the lead holds.
    pub quantity: Option<f64>,
}

/// Where an unsorted ("incoming") request stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UnsortedState {
    /// Waiting for a manager.
    Pending,
    /// Accepted: the lead is in the pipeline.
    Accepted,
    /// Declined: the lead is closed as lost.
    Declined,
}

/// An unsorted ("incoming") request: a lead waiting in its pipeline's incoming stage.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UnsortedEntry {
    /// The unsorted request's id (a string, not a number).
    pub uid: String,
    /// The caller's id of the source the request came from.
    pub source_uid: String,
    /// Name of that source.
    pub source_name: String,
    /// `forms`.
    pub category: String,
    /// The pipeline it belongs to.
    pub pipeline_id: u64,
    /// When it was created (Unix seconds).
    pub created_at: i64,
    /// `metadata` as sent (`form_id`, `form_name`, `form_page`, `form_sent_at`, …).
    pub metadata: serde_json::Value,
    /// The lead it concerns.
    pub lead_id: u64,
    /// Linked contacts.
    pub contact_ids: Vec<u64>,
    /// Linked company, if any.
    pub company_id: Option<u64>,
    /// The caller's correlation id: amoCRM echoes it so results can be matched to what was sent.
    pub request_id: Option<String>,
    /// Where the request stands.
    pub state: UnsortedState,
}

/// One request the sandbox received (admin routes under `/_sandbox` are not logged).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LoggedRequest {
    /// Increasing sequence number, for `?since=`.
    pub seq: u64,
    /// HTTP method.
    pub method: String,
    /// Path as the account sees it (`/api/v4/leads`, `/oauth2/access_token`), or the full path for
    /// requests not addressed to an account (`/oauth`).
    pub path: String,
    /// Account host from the path (`None` for the consent page).
    pub host: Option<String>,
    /// `grant_type` of token requests.
    pub grant_type: Option<String>,
    /// HTTP status of the answer.
    pub status: u16,
    /// The request was applied but never answered.
    pub dropped: bool,
    /// When it happened.
    pub at: DateTime<Utc>,
}

/// What kind of outgoing request a delivery was.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeliveryKind {
    /// An event webhook to a subscribed destination.
    Webhook,
    /// The uninstall hook to an integration's disconnect URL.
    Uninstall,
    /// The code sent to the redirect URI when the integration is installed from amoCRM's widget
    /// catalogue (`from_widget=1`, no `state`).
    WidgetInstall,
}

/// One outgoing request (webhook or uninstall hook) and its outcome.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Delivery {
    /// Order in which deliveries were started.
    pub seq: u64,
    /// Which kind of delivery it was.
    pub kind: DeliveryKind,
    /// The account host (`sellerone.amocrm.ru`).
    pub host: String,
    /// Destination URL (for the uninstall hook, with its query).
    pub url: String,
    /// The form body (webhooks); empty for the uninstall hook.
    pub body: String,
    /// HTTP status received; `None` on timeout or connection error.
    pub status: Option<u16>,
    /// Why it failed (timeout, connection error), if it did.
    pub error: Option<String>,
    /// Whether the receiver answered 100–299 in time.
    pub ok: bool,
    /// When it happened.
    pub at: DateTime<Utc>,
}

/// Summary of an account for listings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccountInfo {
    /// amoCRM's id of this account info.
    pub id: u64,
    /// The account host (`sellerone.amocrm.ru`).
    pub host: String,
    /// The account's subdomain (`sellerone` for `sellerone.amocrm.ru`).
    pub subdomain: String,
    /// Name as amoCRM shows it.
    pub name: String,
}
