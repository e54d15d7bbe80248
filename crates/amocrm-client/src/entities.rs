//! API v4 objects beyond leads: notes, contacts and companies, lists ("catalogs") and their elements, entity
//! links, users, tasks, unsorted requests, and the `leads/complex` options [`ComplexLead`] does not carry
//! ([`ComplexLeadItem`]). Read leniently like [`crate::models`]: ids from numbers or numeric strings, `null`
//! lists as empty, unknown fields ignored.

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::models::{
    ComplexLead, FieldValue, FieldValueItem, LinkedEntity, NewCompany, NewContact, de,
};

/// Note type of an ordinary text note (what shop connectors write the order summary as).
pub const NOTE_COMMON: &str = "common";
/// Note type of a collapsible system message "added by an integration" (`params.service` + `text`).
pub const NOTE_EXTENDED_SERVICE_MESSAGE: &str = "extended_service_message";

/// A note to add to a lead.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewNote {
    /// The lead (ignored by [`crate::AccountApi::create_notes_for_lead`], which names it in the path).
    pub lead_id: u64,
    /// [`NOTE_COMMON`], [`NOTE_EXTENDED_SERVICE_MESSAGE`], …
    pub note_type: String,
    /// The text a manager sees.
    pub text: String,
    /// `params.service`: the integration's name, for service messages.
    pub service: Option<String>,
    /// Echoed back in [`CreatedNote::request_id`].
    pub request_id: Option<String>,
    /// The author; `Some(0)` is "the robot". `None`: the token's user.
    pub created_by: Option<u64>,
    /// The amoCRM user responsible for it.
    pub responsible_user_id: Option<u64>,
}

impl NewNote {
    /// A plain text note.
    pub fn common(lead_id: u64, text: impl Into<String>) -> Self {
        Self {
            lead_id,
            note_type: NOTE_COMMON.to_owned(),
            text: text.into(),
            service: None,
            request_id: None,
            created_by: None,
            responsible_user_id: None,
        }
    }

    /// A collapsible system message signed by `service`.
    pub fn extended_service_message(
        lead_id: u64,
        service: impl Into<String>,
        text: impl Into<String>,
    ) -> Self {
        Self {
            service: Some(service.into()),
            note_type: NOTE_EXTENDED_SERVICE_MESSAGE.to_owned(),
            ..Self::common(lead_id, text)
        }
    }

    /// Sets the correlation id amoCRM echoes back.
    pub fn with_request_id(mut self, request_id: impl Into<String>) -> Self {
        self.request_id = Some(request_id.into());
        self
    }

    pub(crate) fn to_api(&self, with_entity: bool) -> Value {
        let mut params = json!({ "text": self.text });
        if let Some(s) = &self.service {
            params["service"] = json!(s);
        }
        let mut note = json!({ "note_type": self.note_type, "params": params });
        if with_entity {
            note["entity_id"] = json!(self.lead_id);
        }
        if let Some(r) = &self.request_id {
            note["request_id"] = json!(r);
        }
        if let Some(c) = self.created_by {
            note["created_by"] = json!(c);
        }
        if let Some(r) = self.responsible_user_id {
            note["responsible_user_id"] = json!(r);
        }
        note
    }
}

/// One item of the notes-create answer.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
pub struct CreatedNote {
    #[serde(deserialize_with = "de::u64_flex")]
    /// amoCRM's id of this created note.
    pub id: u64,
    #[serde(default, deserialize_with = "de::opt_u64_flex")]
    /// The lead (or other entity) it is attached to.
    pub entity_id: Option<u64>,
    #[serde(default, deserialize_with = "de::opt_string_or_number")]
    /// The caller's correlation id: amoCRM echoes it so results can be matched to what was sent.
    pub request_id: Option<String>,
}

/// A note's `params` (the fields this client reads).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
pub struct NoteParams {
    #[serde(default, deserialize_with = "de::opt_string_or_number")]
    /// The text a manager sees.
    pub text: Option<String>,
    #[serde(default, deserialize_with = "de::opt_string_or_number")]
    /// The service name shown on a service-message note.
    pub service: Option<String>,
}

/// A note as read back.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
pub struct Note {
    #[serde(deserialize_with = "de::u64_flex")]
    /// amoCRM's id of this note.
    pub id: u64,
    #[serde(default, deserialize_with = "de::opt_u64_flex")]
    /// The lead (or other entity) it is attached to.
    pub entity_id: Option<u64>,
    #[serde(default, deserialize_with = "de::null_as_default")]
    /// amoCRM's note type (`common`, `extended_service_message`, …).
    pub note_type: String,
    #[serde(default, deserialize_with = "de::null_as_default")]
    /// The type-dependent content (text, service name).
    pub params: NoteParams,
    #[serde(default, deserialize_with = "de::opt_u64_flex")]
    /// The user who created it.
    pub created_by: Option<u64>,
    #[serde(default, deserialize_with = "de::opt_u64_flex")]
    /// The amoCRM user responsible for it.
    pub responsible_user_id: Option<u64>,
    #[serde(default, deserialize_with = "de::i64_flex_default")]
    /// When it was created (Unix seconds).
    pub created_at: i64,
}

impl Note {
    /// `params.text`, empty when there is none.
    pub fn text(&self) -> &str {
        self.params.text.as_deref().unwrap_or_default()
    }
}

/// The values of the field with this code (`PHONE`, `EMAIL`, `SKU` …; case-insensitive) as strings.
fn texts_by_code(fields: &[FieldValue], code: &str) -> Vec<String> {
    fields
        .iter()
        .filter(|f| {
            f.field_code
                .as_deref()
                .is_some_and(|c| c.eq_ignore_ascii_case(code))
        })
        .flat_map(FieldValue::texts)
        .collect()
}

/// The entities linked to a contact (leads only when read with leads).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
pub struct ContactLinks {
    #[serde(default, deserialize_with = "de::null_as_default")]
    /// Leads the contact is linked to (read with `with=leads`).
    pub leads: Vec<LinkedEntity>,
    #[serde(default, deserialize_with = "de::null_as_default")]
    /// Companies the contact is linked to.
    pub companies: Vec<LinkedEntity>,
}

/// A contact as read back (`GET /api/v4/contacts[/{id}]`).
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
pub struct Contact {
    #[serde(deserialize_with = "de::u64_flex")]
    /// amoCRM's id of this contact.
    pub id: u64,
    #[serde(default, deserialize_with = "de::null_as_default")]
    /// Name as amoCRM shows it.
    pub name: String,
    #[serde(default, deserialize_with = "de::null_as_default")]
    /// Given name.
    pub first_name: String,
    #[serde(default, deserialize_with = "de::null_as_default")]
    /// Family name.
    pub last_name: String,
    #[serde(default, deserialize_with = "de::opt_u64_flex")]
    /// The amoCRM user responsible for it.
    pub responsible_user_id: Option<u64>,
    #[serde(default, deserialize_with = "de::null_as_default")]
    /// Custom field values (each names its field by id or code).
    pub custom_fields_values: Vec<FieldValue>,
    /// The contact belongs to an unsorted request not yet accepted.
    #[serde(default, deserialize_with = "de::null_as_default")]
    pub is_unsorted: bool,
    #[serde(
        default,
        rename = "_embedded",
        deserialize_with = "de::null_as_default"
    )]
    /// Its links, from `_embedded`.
    pub embedded: ContactLinks,
}

impl Contact {
    /// The values of the field with this code (`PHONE`, `EMAIL`), as typed in amoCRM.
    pub fn values_by_code(&self, code: &str) -> Vec<String> {
        texts_by_code(&self.custom_fields_values, code)
    }

    /// The contact's `PHONE` values, as typed in amoCRM.
    pub fn phones(&self) -> Vec<String> {
        self.values_by_code("PHONE")
    }

    /// The contact's `EMAIL` values.
    pub fn emails(&self) -> Vec<String> {
        self.values_by_code("EMAIL")
    }

    /// Linked leads (only when read with leads).
    pub fn lead_ids(&self) -> Vec<u64> {
        self.embedded.leads.iter().map(|l| l.id).collect()
    }
}

/// One page of contacts and whether amoCRM announced a next one.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ContactsPage {
    /// The contacts on this page.
    pub contacts: Vec<Contact>,
    /// Whether amoCRM links a next page.
    pub has_next: bool,
}

/// A contact to create with `POST /api/v4/contacts`.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct ContactCreate {
    #[serde(skip_serializing_if = "String::is_empty")]
    /// Name as amoCRM shows it.
    pub name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    /// Given name.
    pub first_name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    /// Family name.
    pub last_name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    /// The amoCRM user responsible for it.
    pub responsible_user_id: Option<u64>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    /// Custom field values (each names its field by id or code).
    pub custom_fields_values: Vec<FieldValue>,
    #[serde(skip_serializing_if = "Option::is_none")]
    /// The caller's correlation id: amoCRM echoes it so results can be matched to what was sent.
    pub request_id: Option<String>,
}

impl From<&NewContact> for ContactCreate {
    /// The buyer with phone and e-mail as `PHONE`/`EMAIL` values of enum `WORK`.
    fn from(c: &NewContact) -> Self {
        Self {
            name: c.name.clone(),
            custom_fields_values: c.field_values(),
            ..Self::default()
        }
    }
}

/// One item of the contacts-create answer.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
pub struct CreatedContact {
    #[serde(deserialize_with = "de::u64_flex")]
    /// amoCRM's id of this created contact.
    pub id: u64,
    #[serde(default, deserialize_with = "de::opt_string_or_number")]
    /// The caller's correlation id: amoCRM echoes it so results can be matched to what was sent.
    pub request_id: Option<String>,
}

/// A `PATCH /api/v4/contacts` item. amoCRM replaces the whole value list of every field sent: send the
/// values to keep too ([`ContactUpdate::adding`] does).
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct ContactUpdate {
    /// amoCRM's id of this contact update.
    pub id: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    /// Name as amoCRM shows it.
    pub name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    /// The amoCRM user responsible for it.
    pub responsible_user_id: Option<u64>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    /// Custom field values (each names its field by id or code).
    pub custom_fields_values: Vec<FieldValue>,
}

impl ContactUpdate {
    /// Adds `value` to the contact's field `code` (`PHONE`, `EMAIL`) keeping its current values; `None` when
    /// an equal value (exact text, or case-insensitive for `EMAIL`) is already there. The found contact is
    /// never overwritten.
    pub fn adding(contact: &Contact, code: &str, value: &str, enum_code: &str) -> Option<Self> {
        let same = |v: &str| {
            if code.eq_ignore_ascii_case("EMAIL") {
                v.trim().eq_ignore_ascii_case(value.trim())
            } else {
                v.trim() == value.trim()
            }
        };
        if contact.values_by_code(code).iter().any(|v| same(v)) {
            return None;
        }
        let existing = contact.custom_fields_values.iter().find(|f| {
            f.field_code
                .as_deref()
                .is_some_and(|c| c.eq_ignore_ascii_case(code))
        });
        let mut values: Vec<FieldValueItem> =
            existing.map(|f| f.values.clone()).unwrap_or_default();
        values.push(FieldValueItem {
            value: Value::String(value.to_owned()),
            enum_id: None,
            enum_code: Some(enum_code.to_owned()),
        });
        Some(Self {
            id: contact.id,
            custom_fields_values: vec![FieldValue {
                field_id: existing.and_then(|f| f.field_id),
                field_code: if existing.and_then(|f| f.field_id).is_some() {
                    None
                } else {
                    Some(code.to_owned())
                },
                field_name: None,
                field_type: None,
                values,
            }],
            ..Self::default()
        })
    }
}

/// One item of the contacts-patch answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
pub struct UpdatedContact {
    #[serde(deserialize_with = "de::u64_flex")]
    /// amoCRM's id of this updated contact.
    pub id: u64,
    #[serde(default, deserialize_with = "de::opt_i64_flex")]
    /// When it last changed (Unix seconds).
    pub updated_at: Option<i64>,
}

/// A company as read back.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
pub struct Company {
    #[serde(deserialize_with = "de::u64_flex")]
    /// amoCRM's id of this company.
    pub id: u64,
    #[serde(default, deserialize_with = "de::null_as_default")]
    /// Name as amoCRM shows it.
    pub name: String,
    #[serde(default, deserialize_with = "de::opt_u64_flex")]
    /// The amoCRM user responsible for it.
    pub responsible_user_id: Option<u64>,
    #[serde(default, deserialize_with = "de::null_as_default")]
    /// Custom field values (each names its field by id or code).
    pub custom_fields_values: Vec<FieldValue>,
}

/// The `type` of the products list.
pub const CATALOG_PRODUCTS: &str = "products";

/// A list ("catalog"). Find the products list by `type_`, never by its localised name.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
pub struct Catalog {
    #[serde(deserialize_with = "de::u64_flex")]
    /// amoCRM's id of this catalog.
    pub id: u64,
    #[serde(default, deserialize_with = "de::null_as_default")]
    /// Name as amoCRM shows it.
    pub name: String,
    /// `regular`, `invoices` or `products`.
    #[serde(rename = "type", default, deserialize_with = "de::null_as_default")]
    pub type_: String,
}

impl Catalog {
    /// Whether this is the account's Products list (found by type, never by its localised name).
    pub fn is_products(&self) -> bool {
        self.type_ == CATALOG_PRODUCTS
    }
}

/// An element of a list (a product: `SKU`, `PRICE`, `DESCRIPTION` by code).
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
pub struct CatalogElement {
    #[serde(deserialize_with = "de::u64_flex")]
    /// amoCRM's id of this catalog element.
    pub id: u64,
    #[serde(default, deserialize_with = "de::null_as_default")]
    /// Name as amoCRM shows it.
    pub name: String,
    #[serde(default, deserialize_with = "de::opt_u64_flex")]
    /// The list (catalog) the element belongs to.
    pub catalog_id: Option<u64>,
    #[serde(default, deserialize_with = "de::null_as_default")]
    /// Custom field values (each names its field by id or code).
    pub custom_fields_values: Vec<FieldValue>,
    /// Echoed on create.
    #[serde(default, deserialize_with = "de::opt_string_or_number")]
    pub request_id: Option<String>,
}

impl CatalogElement {
    /// The values of the field with this code (`SKU`, `PRICE`…), as strings.
    pub fn values_by_code(&self, code: &str) -> Vec<String> {
        texts_by_code(&self.custom_fields_values, code)
    }

    /// The `SKU` value, if any (compare it exactly: `query` matches substrings of any field).
    pub fn sku(&self) -> Option<String> {
        self.values_by_code("SKU").into_iter().next()
    }

    /// The `PRICE` value as a number, if any.
    pub fn price(&self) -> Option<f64> {
        self.values_by_code("PRICE")
            .into_iter()
            .find_map(|p| p.trim().parse().ok())
    }
}

/// An element to create in a list.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct NewCatalogElement {
    /// Name as amoCRM shows it.
    pub name: String,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    /// Custom field values (each names its field by id or code).
    pub custom_fields_values: Vec<FieldValue>,
    #[serde(skip_serializing_if = "Option::is_none")]
    /// The caller's correlation id: amoCRM echoes it so results can be matched to what was sent.
    pub request_id: Option<String>,
}

impl NewCatalogElement {
    /// A product of the products list with its predefined fields.
    pub fn product(
        name: impl Into<String>,
        sku: Option<&str>,
        price: Option<f64>,
        description: Option<&str>,
    ) -> Self {
        let mut fields = Vec::new();
        if let Some(s) = sku.filter(|s| !s.is_empty()) {
            fields.push(FieldValue::by_code_value("SKU", json!(s)));
        }
        if let Some(p) = price.filter(|p| p.is_finite()) {
            fields.push(FieldValue::by_code_value("PRICE", json!(p)));
        }
        if let Some(d) = description.filter(|d| !d.is_empty()) {
            fields.push(FieldValue::by_code_value("DESCRIPTION", json!(d)));
        }
        Self {
            name: name.into(),
            custom_fields_values: fields,
            request_id: None,
        }
    }

    /// Sets the correlation id amoCRM echoes back for this item.
    pub fn with_request_id(mut self, request_id: impl Into<String>) -> Self {
        self.request_id = Some(request_id.into());
        self
    }
}

/// The `to_entity_type` of a product link.
pub const LINK_CATALOG_ELEMENTS: &str = "catalog_elements";

/// A link to make (`POST /api/v4/leads/link`) or undo (`…/unlink`) from a lead.
#[derive(Debug, Clone, PartialEq)]
pub struct NewLink {
    /// The lead.
    pub entity_id: u64,
    /// The linked entity (a contact, company or list element).
    pub to_entity_id: u64,
    /// [`LINK_CATALOG_ELEMENTS`] or `contacts`.
    pub to_entity_type: String,
    /// For list elements.
    pub catalog_id: Option<u64>,
    /// For list elements; linking an element again sets this quantity.
    pub quantity: Option<f64>,
}

impl NewLink {
    /// A product of list `catalog_id` on a lead, `quantity` times.
    pub fn product(lead_id: u64, element_id: u64, catalog_id: u64, quantity: f64) -> Self {
        Self {
            entity_id: lead_id,
            to_entity_id: element_id,
            to_entity_type: LINK_CATALOG_ELEMENTS.to_owned(),
            catalog_id: Some(catalog_id),
            quantity: Some(quantity),
        }
    }

    /// `metadata.updated_by` is never sent: amoCRM refuses the whole request when that user was deleted.
    pub(crate) fn to_api(&self) -> Value {
        let mut link = json!({
            "entity_id": self.entity_id,
            "to_entity_id": self.to_entity_id,
            "to_entity_type": self.to_entity_type,
        });
        let mut meta = serde_json::Map::new();
        if let Some(c) = self.catalog_id {
            meta.insert("catalog_id".into(), json!(c));
        }
        if let Some(q) = self.quantity {
            meta.insert("quantity".into(), quantity_json(q));
        }
        if !meta.is_empty() {
            link["metadata"] = Value::Object(meta);
        }
        link
    }
}

/// A quantity as amoCRM writes it: an integer when whole.
fn quantity_json(q: f64) -> Value {
    if q.fract() == 0.0 && q.abs() < 9.0e15 {
        json!(q as i64)
    } else {
        json!(q)
    }
}

/// A link's `metadata` (what this client reads).
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
pub struct LinkMetadata {
    #[serde(default, deserialize_with = "opt_f64_flex")]
    /// How many of the element the lead holds.
    pub quantity: Option<f64>,
    #[serde(default, deserialize_with = "de::opt_u64_flex")]
    /// The list (catalog) the element belongs to.
    pub catalog_id: Option<u64>,
    #[serde(default)]
    /// Whether the contact is the lead's main contact.
    pub main_contact: Option<bool>,
}

/// A link as amoCRM reports it.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
pub struct EntityLink {
    #[serde(default, deserialize_with = "de::opt_u64_flex")]
    /// The lead (or other entity) it is attached to.
    pub entity_id: Option<u64>,
    #[serde(default, deserialize_with = "de::null_as_default")]
    /// Entity type it is attached to (`leads`, `contacts`, `companies`).
    pub entity_type: String,
    #[serde(deserialize_with = "de::u64_flex")]
    /// The linked entity (a contact, company or list element).
    pub to_entity_id: u64,
    #[serde(default, deserialize_with = "de::null_as_default")]
    /// Type of the linked entity (`contacts`, `companies`, `catalog_elements`).
    pub to_entity_type: String,
    #[serde(default, deserialize_with = "de::null_as_default")]
    /// Extra data amoCRM keeps with it.
    pub metadata: LinkMetadata,
}

/// The links of `sent` that `read` does not show with the same quantity: amoCRM was seen to answer 200 for a
/// batch while leaving links out (100 sent, 91 linked), so read the lead's links back and resend these.
pub fn unconfirmed_links(sent: &[NewLink], read: &[EntityLink]) -> Vec<NewLink> {
    sent.iter()
        .filter(|s| {
            !read.iter().any(|r| {
                r.entity_id.is_none_or(|e| e == s.entity_id)
                    && r.to_entity_id == s.to_entity_id
                    && r.to_entity_type == s.to_entity_type
                    && match (s.quantity, r.metadata.quantity) {
                        (Some(want), Some(got)) => (want - got).abs() < 1e-9,
                        (Some(_), None) => false,
                        (None, _) => true,
                    }
            })
        })
        .cloned()
        .collect()
}

/// One product on a lead (`with=catalog_elements`).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LinkedElement {
    /// amoCRM's id of this linked element.
    pub id: u64,
    /// How many of the element the lead holds.
    pub quantity: Option<f64>,
    /// The list (catalog) the element belongs to.
    pub catalog_id: Option<u64>,
}

/// A lead's products.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LeadProducts {
    /// The lead it concerns.
    pub lead_id: u64,
    /// List elements linked to the lead.
    pub elements: Vec<LinkedElement>,
}

#[derive(Deserialize)]
pub(crate) struct RawLeadProducts {
    #[serde(deserialize_with = "de::u64_flex")]
    id: u64,
    #[serde(
        default,
        rename = "_embedded",
        deserialize_with = "de::null_as_default"
    )]
    embedded: RawLeadProductsEmbedded,
}

#[derive(Deserialize, Default)]
struct RawLeadProductsEmbedded {
    #[serde(default, deserialize_with = "de::null_as_default")]
    catalog_elements: Vec<RawLinkedElement>,
}

#[derive(Deserialize)]
struct RawLinkedElement {
    #[serde(deserialize_with = "de::u64_flex")]
    id: u64,
    #[serde(default, deserialize_with = "de::null_as_default")]
    metadata: LinkMetadata,
}

impl From<RawLeadProducts> for LeadProducts {
    fn from(r: RawLeadProducts) -> Self {
        Self {
            lead_id: r.id,
            elements: r
                .embedded
                .catalog_elements
                .into_iter()
                .map(|e| LinkedElement {
                    id: e.id,
                    quantity: e.metadata.quantity,
                    catalog_id: e.metadata.catalog_id,
                })
                .collect(),
        }
    }
}

/// A user's rights (the flags this client reads).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
pub struct UserRights {
    #[serde(default, deserialize_with = "de::null_as_default")]
    /// Whether the user may still sign in; an inactive user's tokens are refused with 403.
    pub is_active: bool,
    #[serde(default, deserialize_with = "de::null_as_default")]
    /// Whether the user administers the account (needed for admin-only routes such as `GET users`).
    pub is_admin: bool,
}

/// A user of the account (`GET /api/v4/users`, administrators only).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
pub struct User {
    #[serde(deserialize_with = "de::u64_flex")]
    /// amoCRM's id of this user.
    pub id: u64,
    #[serde(default, deserialize_with = "de::null_as_default")]
    /// Name as amoCRM shows it.
    pub name: String,
    #[serde(default, deserialize_with = "de::null_as_default")]
    /// E-mail address.
    pub email: String,
    #[serde(default, deserialize_with = "de::null_as_default")]
    /// What the user may do in the account.
    pub rights: UserRights,
}

impl User {
    /// Whether the user may be made responsible (amoCRM refuses inactive and deleted users).
    pub fn is_active(&self) -> bool {
        self.rights.is_active
    }

    /// Whether the user is an administrator.
    pub fn is_admin(&self) -> bool {
        self.rights.is_admin
    }
}

/// Task type "call" (every account has it).
pub const TASK_TYPE_CALL: u64 = 1;
/// Task type "meeting".
pub const TASK_TYPE_MEETING: u64 = 2;

/// A task to create; `text` and `complete_till` are required by amoCRM.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct NewTask {
    /// The text a manager sees.
    pub text: String,
    /// Unix seconds.
    pub complete_till: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    /// The lead (or other entity) it is attached to.
    pub entity_id: Option<u64>,
    /// `leads`, `contacts` or `companies`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub entity_type: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    /// The amoCRM user responsible for it.
    pub responsible_user_id: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    /// Task type (1 call, 2 meeting, or an account's own type).
    pub task_type_id: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    /// The caller's correlation id: amoCRM echoes it so results can be matched to what was sent.
    pub request_id: Option<String>,
}

impl NewTask {
    /// A call task on a lead.
    pub fn for_lead(lead_id: u64, text: impl Into<String>, complete_till: i64) -> Self {
        Self {
            text: text.into(),
            complete_till,
            entity_id: Some(lead_id),
            entity_type: Some("leads".to_owned()),
            responsible_user_id: None,
            task_type_id: Some(TASK_TYPE_CALL),
            request_id: None,
        }
    }
}

/// One item of the tasks-create answer.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
pub struct CreatedTask {
    #[serde(deserialize_with = "de::u64_flex")]
    /// amoCRM's id of this created task.
    pub id: u64,
    #[serde(default, deserialize_with = "de::opt_string_or_number")]
    /// The caller's correlation id: amoCRM echoes it so results can be matched to what was sent.
    pub request_id: Option<String>,
}

/// A task as read back.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
pub struct Task {
    #[serde(deserialize_with = "de::u64_flex")]
    /// amoCRM's id of this task.
    pub id: u64,
    #[serde(default, deserialize_with = "de::null_as_default")]
    /// The text a manager sees.
    pub text: String,
    #[serde(default, deserialize_with = "de::i64_flex_default")]
    /// Deadline (Unix seconds); amoCRM requires one.
    pub complete_till: i64,
    #[serde(default, deserialize_with = "de::opt_u64_flex")]
    /// The lead (or other entity) it is attached to.
    pub entity_id: Option<u64>,
    #[serde(default)]
    /// Entity type it is attached to (`leads`, `contacts`, `companies`).
    pub entity_type: Option<String>,
    #[serde(default, deserialize_with = "de::opt_u64_flex")]
    /// The amoCRM user responsible for it.
    pub responsible_user_id: Option<u64>,
    #[serde(default, deserialize_with = "de::opt_u64_flex")]
    /// Task type (1 call, 2 meeting, or an account's own type).
    pub task_type_id: Option<u64>,
    #[serde(default, deserialize_with = "de::null_as_default")]
    /// Whether the task is done.
    pub is_completed: bool,
}

/// A web form's `metadata` for an unsorted request (all but `referer` and `ip` required by amoCRM).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FormMetadata {
    /// The form's id in the caller's system, shown in the request's source.
    pub form_id: String,
    /// The form's name, shown to the manager who sorts the request.
    pub form_name: String,
    /// The page the form was sent from (a URL).
    pub form_page: String,
    /// Unix seconds.
    pub form_sent_at: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    /// The page the form was sent from.
    pub referer: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    /// The sender's IP address, as the form saw it.
    pub ip: Option<String>,
}

/// A contact inside a request: an existing one by id, or a new one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EmbeddedContact {
    /// A contact that already exists, by id.
    Existing(u64),
    /// A contact to create with the request.
    New(NewContact),
}

/// A company inside a request: an existing one by id, or a new one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EmbeddedCompany {
    /// A company that already exists, by id.
    Existing(u64),
    /// A company to create with the request.
    New(NewCompany),
}

impl EmbeddedContact {
    pub(crate) fn to_api(&self) -> Value {
        match self {
            Self::Existing(id) => json!({ "id": id }),
            Self::New(c) => c.to_api(),
        }
    }
}

impl EmbeddedCompany {
    pub(crate) fn to_api(&self) -> Value {
        match self {
            Self::Existing(id) => json!({ "id": id }),
            Self::New(c) => json!({ "name": c.name }),
        }
    }
}

/// The lead of an unsorted request (its status is always the incoming stage).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct UnsortedLead {
    /// Name as amoCRM shows it.
    pub name: String,
    /// Sale value in whole currency units.
    pub price: Option<i64>,
    /// Custom field values (each names its field by id or code).
    pub custom_fields_values: Vec<FieldValue>,
    /// Tags shown on the lead.
    pub tags: Vec<String>,
}

/// A web-form request for `POST /api/v4/leads/unsorted/forms`: the lead waits in the incoming stage until a
/// manager accepts it.
#[derive(Debug, Clone, PartialEq)]
pub struct NewUnsortedForm {
    /// The caller's correlation id: amoCRM echoes it so results can be matched to what was sent.
    pub request_id: String,
    /// Shown as the request's source, e.g. the marketplace's name.
    pub source_name: String,
    /// Our id of the request (the order id).
    pub source_uid: String,
    /// `None`: the main pipeline. The pipeline must have incoming leads turned on.
    pub pipeline_id: Option<u64>,
    /// When it was created (Unix seconds).
    pub created_at: Option<i64>,
    /// Extra data amoCRM keeps with it.
    pub metadata: FormMetadata,
    /// The lead the request becomes once accepted.
    pub lead: UnsortedLead,
    /// The buyer, existing or new.
    pub contact: Option<EmbeddedContact>,
    /// The buyer's company, existing or new.
    pub company: Option<EmbeddedCompany>,
}

impl NewUnsortedForm {
    pub(crate) fn to_api(&self) -> Value {
        let mut lead = json!({ "name": self.lead.name });
        if let Some(p) = self.lead.price {
            lead["price"] = json!(p);
        }
        if !self.lead.custom_fields_values.is_empty() {
            lead["custom_fields_values"] = json!(self.lead.custom_fields_values);
        }
        if !self.lead.tags.is_empty() {
            let tags: Vec<Value> = self
                .lead
                .tags
                .iter()
                .map(|t| json!({ "name": t }))
                .collect();
            lead["_embedded"] = json!({ "tags": tags });
        }
        let mut embedded = json!({ "leads": [lead] });
        if let Some(c) = &self.contact {
            embedded["contacts"] = json!([c.to_api()]);
        }
        if let Some(c) = &self.company {
            embedded["companies"] = json!([c.to_api()]);
        }
        let mut form = json!({
            "request_id": self.request_id,
            "source_name": self.source_name,
            "source_uid": self.source_uid,
            "metadata": self.metadata,
            "_embedded": embedded,
        });
        if let Some(p) = self.pipeline_id {
            form["pipeline_id"] = json!(p);
        }
        if let Some(c) = self.created_at {
            form["created_at"] = json!(c);
        }
        form
    }
}

#[derive(Deserialize, Default)]
pub(crate) struct RawIds {
    #[serde(default, deserialize_with = "de::null_as_default")]
    leads: Vec<LinkedEntity>,
    #[serde(default, deserialize_with = "de::null_as_default")]
    contacts: Vec<LinkedEntity>,
    #[serde(default, deserialize_with = "de::null_as_default")]
    companies: Vec<LinkedEntity>,
}

fn ids(list: &[LinkedEntity]) -> Vec<u64> {
    list.iter().map(|e| e.id).collect()
}

/// An unsorted request: created, read, accepted or declined.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(from = "RawUnsorted")]
pub struct Unsorted {
    /// The unsorted request's id (a string, not a number).
    pub uid: String,
    /// The caller's correlation id: amoCRM echoes it so results can be matched to what was sent.
    pub request_id: Option<String>,
    /// The caller's id of the source the request came from.
    pub source_uid: Option<String>,
    /// Name of that source.
    pub source_name: Option<String>,
    /// Request category (`forms` for these).
    pub category: Option<String>,
    /// The pipeline it belongs to.
    pub pipeline_id: Option<u64>,
    /// Linked leads.
    pub lead_ids: Vec<u64>,
    /// Linked contacts.
    pub contact_ids: Vec<u64>,
    /// Companies created or linked with the request.
    pub company_ids: Vec<u64>,
}

impl Unsorted {
    /// The request's lead (amoCRM files one per request).
    pub fn lead_id(&self) -> Option<u64> {
        self.lead_ids.first().copied()
    }
}

#[derive(Deserialize)]
pub(crate) struct RawUnsorted {
    #[serde(default, deserialize_with = "de::null_as_default")]
    uid: String,
    #[serde(default, deserialize_with = "de::opt_string_or_number")]
    request_id: Option<String>,
    #[serde(default, deserialize_with = "de::opt_string_or_number")]
    source_uid: Option<String>,
    #[serde(default, deserialize_with = "de::opt_string_or_number")]
    source_name: Option<String>,
    #[serde(default, deserialize_with = "de::opt_string_or_number")]
    category: Option<String>,
    #[serde(default, deserialize_with = "de::opt_u64_flex")]
    pipeline_id: Option<u64>,
    #[serde(
        default,
        rename = "_embedded",
        deserialize_with = "de::null_as_default"
    )]
    embedded: RawIds,
}

impl From<RawUnsorted> for Unsorted {
    fn from(r: RawUnsorted) -> Self {
        Self {
            uid: r.uid,
            request_id: r.request_id,
            source_uid: r.source_uid,
            source_name: r.source_name,
            category: r.category,
            pipeline_id: r.pipeline_id,
            lead_ids: ids(&r.embedded.leads),
            contact_ids: ids(&r.embedded.contacts),
            company_ids: ids(&r.embedded.companies),
        }
    }
}

/// A [`ComplexLead`] with the `leads/complex` options it does not carry: an existing contact or company by
/// id (instead of creating one), responsible users, and filing the lead as an unsorted web-form request.
#[derive(Debug, Clone, PartialEq)]
pub struct ComplexLeadItem {
    /// The lead, its new contact and company.
    pub lead: ComplexLead,
    /// Attach this existing contact (`_embedded.contacts: [{"id"}]`); `lead.contact` is then not sent.
    pub contact_id: Option<u64>,
    /// Attach this existing company; `lead.company` is then not sent.
    pub company_id: Option<u64>,
    /// The lead's responsible user; `None`: the account's default.
    pub responsible_user_id: Option<u64>,
    /// The responsible user of a new contact (`_embedded.contacts.0.responsible_user_id`).
    pub contact_responsible_user_id: Option<u64>,
    /// The responsible user of a new company.
    pub company_responsible_user_id: Option<u64>,
    /// File the lead as an unsorted request (`_embedded.metadata` with `category: forms`); amoCRM then ignores
    /// `status_id` and puts the lead in the pipeline's incoming stage.
    pub unsorted: Option<FormMetadata>,
}

impl From<ComplexLead> for ComplexLeadItem {
    fn from(lead: ComplexLead) -> Self {
        Self {
            lead,
            contact_id: None,
            company_id: None,
            responsible_user_id: None,
            contact_responsible_user_id: None,
            company_responsible_user_id: None,
            unsorted: None,
        }
    }
}

impl ComplexLeadItem {
    pub(crate) fn to_api(&self) -> Value {
        let mut lead = self.lead.to_api();
        let Some(obj) = lead.as_object_mut() else {
            return lead;
        };
        if let Some(r) = self.responsible_user_id {
            obj.insert("responsible_user_id".into(), json!(r));
        }
        let mut embedded = match obj.remove("_embedded") {
            Some(Value::Object(m)) => m,
            _ => serde_json::Map::new(),
        };
        let party = |existing: Option<u64>,
                     current: Option<&Value>,
                     responsible: Option<u64>|
         -> Option<Value> {
            if let Some(id) = existing {
                return Some(json!([{ "id": id }]));
            }
            let mut first = current?.as_array()?.first()?.clone();
            if let (Some(r), Some(o)) = (responsible, first.as_object_mut()) {
                o.insert("responsible_user_id".into(), json!(r));
            }
            Some(json!([first]))
        };
        for (key, existing, responsible) in [
            (
                "contacts",
                self.contact_id,
                self.contact_responsible_user_id,
            ),
            (
                "companies",
                self.company_id,
                self.company_responsible_user_id,
            ),
        ] {
            match party(existing, embedded.get(key), responsible) {
                Some(v) => {
                    embedded.insert(key.into(), v);
                }
                None => {
                    embedded.remove(key);
                }
            }
        }
        if let Some(meta) = &self.unsorted {
            let mut m = json!(meta);
            m["category"] = json!("forms");
            embedded.insert("metadata".into(), m);
        }
        if !embedded.is_empty() {
            obj.insert("_embedded".into(), Value::Object(embedded));
        }
        lead
    }
}

/// A number or numeric string; anything else is `None`.
fn opt_f64_flex<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<f64>, D::Error> {
    Ok(match Value::deserialize(d)? {
        Value::Number(n) => n.as_f64(),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    })
}

#[cfg(test)]
mod tests {
    #![expect(clippy::unwrap_used, reason = "tests fail loudly on unexpected errors")]
    use super::*;

    fn lead() -> ComplexLead {
        ComplexLead {
            name: "Buyurtma #1".into(),
            price: 100,
            pipeline_id: 1,
            status_id: 2,
            request_id: "ord_1".into(),
            custom_fields_values: Vec::new(),
            tags: vec!["shop".into()],
            contact: Some(NewContact {
                name: "Ali".into(),
                phone: Some("+998901234567".into()),
                email: None,
            }),
            company: Some(NewCompany {
                name: "Ali LLC".into(),
            }),
        }
    }

    #[test]
    fn a_complex_item_attaches_by_id_sets_responsibles_and_files_as_unsorted() {
        let mut item = ComplexLeadItem::from(lead());
        assert_eq!(item.to_api(), lead().to_api(), "no options: the plain lead");
        item.contact_id = Some(77);
        item.company_responsible_user_id = Some(6);
        item.responsible_user_id = Some(5);
        item.unsorted = Some(FormMetadata {
            form_id: "checkout".into(),
            form_name: "Checkout".into(),
            form_page: "https://shop.example/checkout".into(),
            form_sent_at: 1_700_000_000,
            referer: None,
            ip: Some("203.0.113.7".into()),
        });
        let v = item.to_api();
        assert_eq!(v["responsible_user_id"], 5);
        assert_eq!(v["_embedded"]["contacts"], json!([{"id": 77}]));
        assert_eq!(
            v["_embedded"]["companies"],
            json!([{"name": "Ali LLC", "responsible_user_id": 6}])
        );
        assert_eq!(v["_embedded"]["tags"], json!([{"name": "shop"}]));
        assert_eq!(
            v["_embedded"]["metadata"],
            json!({"category": "forms", "form_id": "checkout", "form_name": "Checkout",
                   "form_page": "https://shop.example/checkout", "form_sent_at": 1_700_000_000, "ip": "203.0.113.7"})
        );
        let mut bare = ComplexLeadItem::from(ComplexLead {
            contact: None,
            company: None,
            tags: vec![],
            ..lead()
        });
        bare.contact_responsible_user_id = Some(9);
        assert!(
            bare.to_api().get("_embedded").is_none(),
            "no contact to set it on"
        );
        bare.company_id = Some(3);
        assert_eq!(
            bare.to_api()["_embedded"],
            json!({"companies": [{"id": 3}]})
        );
    }

    #[test]
    fn notes_are_written_and_read_in_amocrm_shape() {
        let n = NewNote::common(7, "2 × Tea").with_request_id("n1");
        assert_eq!(
            n.to_api(true),
            json!({"entity_id": 7, "note_type": "common", "params": {"text": "2 × Tea"}, "request_id": "n1"})
        );
        let s = NewNote::extended_service_message(7, "Shop", "Paid");
        assert_eq!(
            s.to_api(false),
            json!({"note_type": "extended_service_message", "params": {"text": "Paid", "service": "Shop"}})
        );
        // GET /api/v4/leads/{id}/notes item (amoCRM reference, trimmed).
        let note: Note = serde_json::from_value(json!({
            "id": 42, "entity_id": "7", "created_by": 0, "updated_by": 0, "created_at": 1_588_841_241,
            "updated_at": 1_588_841_241, "responsible_user_id": 8_000_001, "group_id": 0, "note_type": "common",
            "params": {"text": "Текст примечания"}, "account_id": 31_000_001,
            "_links": {"self": {"href": "https://x.amocrm.ru/api/v4/leads/7/notes/42"}}
        }))
        .unwrap();
        assert_eq!(
            (note.id, note.entity_id, note.text()),
            (42, Some(7), "Текст примечания")
        );
        assert_eq!(note.created_by, Some(0));
        let created: CreatedNote =
            serde_json::from_value(json!({"id": 1, "entity_id": 7, "request_id": 0})).unwrap();
        assert_eq!(created.request_id.as_deref(), Some("0"));
    }

    #[test]
    fn contacts_read_with_phones_emails_and_leads_and_patches_keep_existing_values() {
        // GET /api/v4/contacts/{id}?with=leads (amoCRM reference, trimmed).
        let c: Contact = serde_json::from_value(json!({
            "id": 3, "name": "Ali Valiyev", "first_name": "Ali", "last_name": null, "responsible_user_id": "504141",
            "custom_fields_values": [
                {"field_id": 3, "field_name": "Телефон", "field_code": "PHONE", "field_type": "multitext",
                 "values": [{"value": "+998 90 123 45 67", "enum_id": 1, "enum_code": "WORK"}]},
                {"field_id": 5, "field_name": "Email", "field_code": "EMAIL", "field_type": "multitext",
                 "values": [{"value": "Ali@Example.uz", "enum_id": 7, "enum_code": "WORK"}]}
            ],
            "is_unsorted": false,
            "_embedded": {"tags": [], "leads": [{"id": 11, "_links": {}}], "companies": []}
        }))
        .unwrap();
        assert_eq!(c.phones(), vec!["+998 90 123 45 67".to_owned()]);
        assert_eq!(c.emails(), vec!["Ali@Example.uz".to_owned()]);
        assert_eq!(
            (c.lead_ids(), c.responsible_user_id, c.last_name.as_str()),
            (vec![11], Some(504_141), "")
        );

        assert!(
            ContactUpdate::adding(&c, "EMAIL", "ali@example.UZ", "WORK").is_none(),
            "already there"
        );
        let add = ContactUpdate::adding(&c, "PHONE", "+998935554433", "MOB").unwrap();
        assert_eq!(
            serde_json::to_value(&add).unwrap(),
            json!({"id": 3, "custom_fields_values": [{"field_id": 3, "values": [
                {"value": "+998 90 123 45 67", "enum_id": 1, "enum_code": "WORK"},
                {"value": "+998935554433", "enum_code": "MOB"}]}]})
        );
        let bare: Contact =
            serde_json::from_value(json!({"id": 4, "custom_fields_values": null})).unwrap();
        let add = ContactUpdate::adding(&bare, "EMAIL", "b@mail.uz", "WORK").unwrap();
        assert_eq!(
            add.custom_fields_values[0].field_code.as_deref(),
            Some("EMAIL")
        );
        let create = ContactCreate::from(&NewContact {
            name: "Vali".into(),
            phone: Some("+998911112233".into()),
            email: Some(" ".into()),
        });
        assert_eq!(
            serde_json::to_value(&create).unwrap(),
            json!({"name": "Vali", "custom_fields_values": [
                {"field_code": "PHONE", "values": [{"value": "+998911112233", "enum_code": "WORK"}]}]})
        );
    }

    #[test]
    fn catalogs_elements_and_links_are_read_and_written_in_amocrm_shape() {
        // GET /api/v4/catalogs item and GET /api/v4/catalogs/{id}/elements item (amoCRM reference, trimmed).
        let cats: Vec<Catalog> = serde_json::from_value(json!([
            {"id": 4, "name": "Счета", "type": "invoices", "sort": 10},
            {"id": "5", "name": "Товары", "type": "products", "can_add_elements": true}
        ]))
        .unwrap();
        assert_eq!(cats.iter().find(|c| c.is_products()).map(|c| c.id), Some(5));
        let e: CatalogElement = serde_json::from_value(json!({
            "id": 9, "name": "Tea", "catalog_id": 5, "is_deleted": false,
            "custom_fields_values": [
                {"field_id": 1, "field_code": "SKU", "values": [{"value": "SKU-1"}]},
                {"field_id": 2, "field_code": "PRICE", "values": [{"value": "15000.5"}]}
            ]
        }))
        .unwrap();
        assert_eq!(
            (e.sku().as_deref(), e.price()),
            (Some("SKU-1"), Some(15_000.5))
        );
        let p = NewCatalogElement::product("Tea", Some("SKU-1"), Some(15_000.0), None)
            .with_request_id("p1");
        assert_eq!(
            serde_json::to_value(&p).unwrap(),
            json!({"name": "Tea", "request_id": "p1", "custom_fields_values": [
                {"field_code": "SKU", "values": [{"value": "SKU-1"}]},
                {"field_code": "PRICE", "values": [{"value": 15000.0}]}]})
        );

        let link = NewLink::product(7, 9, 5, 2.0);
        let v = link.to_api();
        assert_eq!(
            v,
            json!({"entity_id": 7, "to_entity_id": 9, "to_entity_type": "catalog_elements",
                   "metadata": {"catalog_id": 5, "quantity": 2}})
        );
        assert!(v["metadata"].get("updated_by").is_none());
        // POST /api/v4/leads/link answer item and GET /api/v4/leads/{id}/links item.
        let read: Vec<EntityLink> = serde_json::from_value(json!([
            {"entity_id": 7, "entity_type": "leads", "to_entity_id": 9, "to_entity_type": "catalog_elements",
             "metadata": {"quantity": "2", "catalog_id": 5}},
            {"entity_id": 7, "entity_type": "leads", "to_entity_id": 3, "to_entity_type": "contacts",
             "metadata": {"main_contact": true}},
            {"entity_id": 7, "entity_type": "leads", "to_entity_id": 1, "to_entity_type": "companies", "metadata": null}
        ]))
        .unwrap();
        assert_eq!(read[0].metadata.quantity, Some(2.0));
        assert_eq!(read[1].metadata.main_contact, Some(true));
        let other = NewLink::product(7, 10, 5, 1.0);
        let changed = NewLink::product(7, 9, 5, 3.0);
        assert_eq!(
            unconfirmed_links(&[link.clone(), other.clone()], &read),
            vec![other]
        );
        assert_eq!(
            unconfirmed_links(std::slice::from_ref(&changed), &read),
            vec![changed]
        );
        let with: Vec<RawLeadProducts> = serde_json::from_value(json!([
            {"id": 7, "_embedded": {"catalog_elements": [{"id": 9, "metadata": {"quantity": 2, "catalog_id": 5}}]}},
            {"id": 8, "_embedded": {"tags": []}}
        ]))
        .unwrap();
        let products: Vec<LeadProducts> = with.into_iter().map(LeadProducts::from).collect();
        assert_eq!(
            products[0].elements,
            vec![LinkedElement {
                id: 9,
                quantity: Some(2.0),
                catalog_id: Some(5)
            }]
        );
        assert!(products[1].elements.is_empty());
    }

    #[test]
    fn users_tasks_and_unsorted_answers_are_read() {
        // GET /api/v4/users item (amoCRM reference, trimmed).
        let u: User = serde_json::from_value(json!({
            "id": 504_141, "name": "Имя", "email": "mail@example.com", "lang": "ru",
            "rights": {"leads": {"view": "A"}, "is_admin": true, "is_free": false, "is_active": true,
                       "group_id": null, "role_id": null},
            "_embedded": {"roles": [], "groups": [{"id": 0, "name": "Отдел продаж"}]}
        }))
        .unwrap();
        assert!(u.is_admin() && u.is_active());
        let t = NewTask::for_lead(7, "Call the buyer", 1_900_000_000);
        assert_eq!(
            serde_json::to_value(&t).unwrap(),
            json!({"text": "Call the buyer", "complete_till": 1_900_000_000, "entity_id": 7,
                   "entity_type": "leads", "task_type_id": 1})
        );
        let task: Task = serde_json::from_value(json!({
            "id": 1, "text": "x", "complete_till": "1900000000", "entity_id": 7, "entity_type": "leads",
            "is_completed": false, "task_type_id": 1, "responsible_user_id": 5, "result": []
        }))
        .unwrap();
        assert_eq!(
            (task.complete_till, task.entity_id),
            (1_900_000_000, Some(7))
        );
        // POST /api/v4/leads/unsorted/forms answer item (amoCRM reference, trimmed).
        let created: Unsorted = serde_json::from_value(json!({
            "uid": "a1fee7c0fc436088e64ba2e8822ba2b3", "account_id": 28_805_383, "request_id": "123",
            "_embedded": {"leads": [{"id": 663_389, "_links": {}}], "contacts": [{"id": 12_345}], "companies": []}
        }))
        .unwrap();
        assert_eq!(
            (created.lead_id(), created.contact_ids.clone()),
            (Some(663_389), vec![12_345])
        );
        assert_eq!(created.request_id.as_deref(), Some("123"));
        let form = NewUnsortedForm {
            request_id: "u1".into(),
            source_name: "Shop".into(),
            source_uid: "order-1".into(),
            pipeline_id: Some(3),
            created_at: None,
            metadata: FormMetadata {
                form_id: "checkout".into(),
                form_name: "Checkout".into(),
                form_page: "https://shop.example".into(),
                form_sent_at: 1,
                referer: None,
                ip: None,
            },
            lead: UnsortedLead {
                name: "Order 1".into(),
                price: Some(100),
                ..UnsortedLead::default()
            },
            contact: Some(EmbeddedContact::Existing(12)),
            company: Some(EmbeddedCompany::New(NewCompany { name: "LLC".into() })),
        };
        assert_eq!(
            form.to_api(),
            json!({"request_id": "u1", "source_name": "Shop", "source_uid": "order-1", "pipeline_id": 3,
                   "metadata": {"form_id": "checkout", "form_name": "Checkout", "form_page": "https://shop.example",
                                "form_sent_at": 1},
                   "_embedded": {"leads": [{"name": "Order 1", "price": 100}], "contacts": [{"id": 12}],
                                 "companies": [{"name": "LLC"}]}})
        );
    }
}
