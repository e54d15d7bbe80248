//! amoCRM API v4 objects as the service uses them: what it sends (`New*`, [`ComplexLead`], [`LeadUpdate`]) and
//! what it reads back ([`Account`], [`Pipeline`], [`Lead`] …). Unknown response fields are ignored; ids are read
//! from numbers or numeric strings; `null` lists read as empty.

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

/// `GET /api/v4/account`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
pub struct Account {
    #[serde(deserialize_with = "de::u64_flex")]
    /// amoCRM's id of this account.
    pub id: u64,
    #[serde(default)]
    /// Name as amoCRM shows it.
    pub name: String,
    #[serde(default)]
    /// The account's subdomain (`sellerone` for `sellerone.amocrm.ru`).
    pub subdomain: String,
    #[serde(default)]
    /// The account's currency code (`RUB`, `UZS`…).
    pub currency: Option<String>,
}

/// Where an account lives now: the answer of `GET {api_domain}/oauth2/account/current/subdomain`
/// (`{"id", "subdomain", "domain", "top_level_domain"}`), used to find a renamed account.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct AccountDomain {
    #[serde(deserialize_with = "de::u64_flex")]
    /// amoCRM's id of this account domain.
    pub id: u64,
    #[serde(default)]
    /// The account's subdomain (`sellerone` for `sellerone.amocrm.ru`).
    pub subdomain: String,
    /// The account host, e.g. `newname.amocrm.ru`.
    #[serde(default)]
    pub domain: String,
    #[serde(default)]
    /// `ru` or `com`, which decides the consent page and API domain to use.
    pub top_level_domain: String,
}

/// A pipeline with its statuses (system statuses 142/143 included, as amoCRM returns them).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Pipeline {
    /// amoCRM's id of this pipeline.
    pub id: u64,
    /// Name as amoCRM shows it.
    pub name: String,
    /// Position among its siblings (lower comes first).
    pub sort: i64,
    /// Whether this is the account's main pipeline (or main contact).
    pub is_main: bool,
    /// Its stages, in order.
    pub statuses: Vec<Status>,
}

/// A pipeline stage. `type_` is 1 for the incoming (unsorted) stage, 0 otherwise; 142 won, 143 lost.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
pub struct Status {
    #[serde(deserialize_with = "de::u64_flex")]
    /// amoCRM's id of this status.
    pub id: u64,
    #[serde(default)]
    /// Name as amoCRM shows it.
    pub name: String,
    #[serde(default, deserialize_with = "de::null_as_default")]
    /// Position among its siblings (lower comes first).
    pub sort: i64,
    #[serde(default)]
    /// Stage colour as a `#rrggbb` string.
    pub color: Option<String>,
    #[serde(rename = "type", default, deserialize_with = "de::null_as_default")]
    /// 1 for the incoming (unsorted) stage, 0 otherwise.
    pub type_: i64,
    #[serde(default, deserialize_with = "de::opt_u64_flex")]
    /// The pipeline it belongs to.
    pub pipeline_id: Option<u64>,
}

impl Status {
    /// amoCRM's "won" status, the same id in every pipeline.
    pub const WON: u64 = 142;
    /// amoCRM's "lost" status, the same id in every pipeline.
    pub const LOST: u64 = 143;
}

impl Pipeline {
    /// The status called `name` (exact match), if any.
    pub fn status_named(&self, name: &str) -> Option<&Status> {
        self.statuses.iter().find(|s| s.name == name)
    }
}

#[derive(Deserialize)]
pub(crate) struct RawPipeline {
    #[serde(deserialize_with = "de::u64_flex")]
    id: u64,
    #[serde(default)]
    name: String,
    #[serde(default, deserialize_with = "de::null_as_default")]
    sort: i64,
    #[serde(default, deserialize_with = "de::null_as_default")]
    is_main: bool,
    #[serde(default, rename = "_embedded")]
    embedded: Option<RawPipelineEmbedded>,
}

#[derive(Deserialize)]
struct RawPipelineEmbedded {
    #[serde(default, deserialize_with = "de::null_as_default")]
    statuses: Vec<Status>,
}

impl From<RawPipeline> for Pipeline {
    fn from(r: RawPipeline) -> Self {
        Pipeline {
            id: r.id,
            name: r.name,
            sort: r.sort,
            is_main: r.is_main,
            statuses: r.embedded.map(|e| e.statuses).unwrap_or_default(),
        }
    }
}

/// A pipeline to create with its own stages (amoCRM adds the incoming stage, 142 and 143 itself).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewPipeline {
    /// Name as amoCRM shows it.
    pub name: String,
    /// Position among its siblings (lower comes first).
    pub sort: Option<i64>,
    /// Its stages, in order.
    pub statuses: Vec<NewStatus>,
}

/// A stage of a [`NewPipeline`]. `color` must be one of amoCRM's palette (e.g. `#fffeb2`). To rename a system
/// status, use its id (142/143) in `id`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct NewStatus {
    #[serde(skip_serializing_if = "Option::is_none")]
    /// amoCRM's id of this new status.
    pub id: Option<u64>,
    /// Name as amoCRM shows it.
    pub name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    /// Position among its siblings (lower comes first).
    pub sort: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    /// Stage colour as a `#rrggbb` string.
    pub color: Option<String>,
}

impl NewStatus {
    /// An ordinary stage.
    pub fn new(name: impl Into<String>, sort: i64, color: impl Into<String>) -> Self {
        Self {
            id: None,
            name: name.into(),
            sort: Some(sort),
            color: Some(color.into()),
        }
    }
}

impl NewPipeline {
    pub(crate) fn to_api(&self) -> Value {
        let mut p = json!({
            "name": self.name,
            "is_main": false,
            "is_unsorted_on": false,
            "_embedded": { "statuses": self.statuses },
        });
        if let (Some(sort), Some(obj)) = (self.sort, p.as_object_mut()) {
            obj.insert("sort".into(), json!(sort));
        }
        p
    }
}

/// A lead custom field (`GET /api/v4/leads/custom_fields`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
pub struct CustomField {
    #[serde(deserialize_with = "de::u64_flex")]
    /// amoCRM's id of this custom field.
    pub id: u64,
    #[serde(default)]
    /// Name as amoCRM shows it.
    pub name: String,
    #[serde(rename = "type", default)]
    /// Field type (`text`, `select`, `multitext`…).
    pub type_: String,
    #[serde(default)]
    /// The field's code (`PHONE`, `EMAIL`, `SKU`…): stable across accounts, unlike ids.
    pub code: Option<String>,
    #[serde(default, deserialize_with = "de::null_as_default")]
    /// Whether only integrations may edit the field (hidden from managers' edit forms).
    pub is_api_only: bool,
}

/// A lead custom field to create; `type_` e.g. `text`, `url`, `numeric`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct NewCustomField {
    /// Name as amoCRM shows it.
    pub name: String,
    #[serde(rename = "type")]
    /// Field type (`text`, `select`, `multitext`…).
    pub type_: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    /// The field's code (`PHONE`, `EMAIL`, `SKU`…): stable across accounts, unlike ids.
    pub code: Option<String>,
    /// Whether only integrations may edit the field (hidden from managers' edit forms).
    pub is_api_only: bool,
}

/// A custom field value, written (`field_id` or `field_code`) or read (with name and type) in API v4 shape.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
pub struct FieldValue {
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "de::opt_u64_flex"
    )]
    /// Field id in this account.
    pub field_id: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    /// Field code, when it has one.
    pub field_code: Option<String>,
    #[serde(default, skip_serializing)]
    /// Field name as the account shows it.
    pub field_name: Option<String>,
    #[serde(default, skip_serializing)]
    /// Field type (`text`, `numeric`, `multitext`, `select`, …).
    pub field_type: Option<String>,
    #[serde(default, deserialize_with = "de::null_as_default")]
    /// The field's values (multitext fields hold several).
    pub values: Vec<FieldValueItem>,
}

/// One value of a [`FieldValue`]: `value` is a string for text/url fields, a number for numeric ones.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
pub struct FieldValueItem {
    #[serde(default)]
    /// The value: a string for most types, a number or boolean for some.
    pub value: Value,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "de::opt_u64_flex"
    )]
    /// The chosen option's id (select fields, `WORK`/`MOB` of multitext fields).
    pub enum_id: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    /// The chosen option's code (`WORK`, `MOB`…).
    pub enum_code: Option<String>,
}

impl FieldValue {
    /// A single text-like value (text, url, textarea) for the field with this id.
    pub fn text(field_id: u64, value: impl Into<String>) -> Self {
        Self::single(Some(field_id), None, Value::String(value.into()), None)
    }

    /// A multitext value addressed by code, e.g. `PHONE` / `WORK`.
    pub fn by_code(code: &str, value: impl Into<String>, enum_code: &str) -> Self {
        Self::single(
            None,
            Some(code),
            Value::String(value.into()),
            Some(enum_code),
        )
    }

    /// A single value (no enum) for the field with this code, e.g. a product's `SKU` or `PRICE`.
    pub fn by_code_value(code: &str, value: Value) -> Self {
        Self::single(None, Some(code), value, None)
    }

    /// One value to write, for the field named by id or by code; name and type are only ever read back.
    fn single(
        field_id: Option<u64>,
        field_code: Option<&str>,
        value: Value,
        enum_code: Option<&str>,
    ) -> Self {
        Self {
            field_id,
            field_code: field_code.map(str::to_owned),
            field_name: None,
            field_type: None,
            values: vec![FieldValueItem {
                value,
                enum_id: None,
                enum_code: enum_code.map(str::to_owned),
            }],
        }
    }

    /// The values as strings (numbers and booleans rendered, nulls skipped).
    pub fn texts(&self) -> Vec<String> {
        self.values
            .iter()
            .filter_map(|v| match &v.value {
                Value::String(s) => Some(s.clone()),
                Value::Null => None,
                other => Some(other.to_string()),
            })
            .collect()
    }
}

/// A lead for `POST /api/v4/leads/complex`, with at most one contact and one company.
#[derive(Debug, Clone, PartialEq)]
pub struct ComplexLead {
    /// Name as amoCRM shows it.
    pub name: String,
    /// Sale value in whole currency units.
    pub price: i64,
    /// The pipeline it belongs to.
    pub pipeline_id: u64,
    /// The pipeline stage.
    pub status_id: u64,
    /// Our correlation id (the order id); amoCRM echoes it in [`ComplexLeadResult::request_id`].
    pub request_id: String,
    /// Custom field values (each names its field by id or code).
    pub custom_fields_values: Vec<FieldValue>,
    /// Tags shown on the lead.
    pub tags: Vec<String>,
    /// A new contact created and linked with the lead.
    pub contact: Option<NewContact>,
    /// A new company created and linked with the lead.
    pub company: Option<NewCompany>,
}

/// The buyer: phone and email go into the `PHONE`/`EMAIL` multitext fields with enum `WORK`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewContact {
    /// Name as amoCRM shows it.
    pub name: String,
    /// Phone number, stored under `PHONE` with enum `WORK`.
    pub phone: Option<String>,
    /// E-mail address.
    pub email: Option<String>,
}

impl NewContact {
    /// Phone and e-mail as `PHONE`/`EMAIL` values of enum `WORK` (blank ones left out).
    pub(crate) fn field_values(&self) -> Vec<FieldValue> {
        let mut fields = Vec::new();
        if let Some(p) = self.phone.as_deref().filter(|p| !p.trim().is_empty()) {
            fields.push(FieldValue::by_code("PHONE", p, "WORK"));
        }
        if let Some(e) = self.email.as_deref().filter(|e| !e.trim().is_empty()) {
            fields.push(FieldValue::by_code("EMAIL", e, "WORK"));
        }
        fields
    }

    /// The contact as `leads/complex` and unsorted requests embed it.
    pub(crate) fn to_api(&self) -> Value {
        let fields = self.field_values();
        let mut contact = json!({ "name": self.name });
        if !fields.is_empty()
            && let Some(obj) = contact.as_object_mut()
        {
            obj.insert("custom_fields_values".into(), json!(fields));
        }
        contact
    }
}

/// The buyer's company.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewCompany {
    /// Name as amoCRM shows it.
    pub name: String,
}

impl ComplexLead {
    pub(crate) fn to_api(&self) -> Value {
        let mut embedded = serde_json::Map::new();
        if !self.tags.is_empty() {
            let tags: Vec<Value> = self.tags.iter().map(|t| json!({ "name": t })).collect();
            embedded.insert("tags".into(), Value::Array(tags));
        }
        if let Some(c) = &self.contact {
            embedded.insert("contacts".into(), json!([c.to_api()]));
        }
        if let Some(c) = &self.company {
            embedded.insert("companies".into(), json!([{ "name": c.name }]));
        }
        let mut lead = json!({
            "name": self.name,
            "price": self.price,
            "pipeline_id": self.pipeline_id,
            "status_id": self.status_id,
            "request_id": self.request_id,
        });
        if let Some(obj) = lead.as_object_mut() {
            if !self.custom_fields_values.is_empty() {
                obj.insert(
                    "custom_fields_values".into(),
                    json!(self.custom_fields_values),
                );
            }
            if !embedded.is_empty() {
                obj.insert("_embedded".into(), Value::Object(embedded));
            }
        }
        lead
    }
}

/// One item of the `leads/complex` answer. `request_id` is a list because amoCRM may merge several items into
/// one lead; `merged` means `id` is an existing lead amoCRM matched as a duplicate.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
pub struct ComplexLeadResult {
    #[serde(deserialize_with = "de::u64_flex")]
    /// amoCRM's id of this complex lead result.
    pub id: u64,
    #[serde(default, deserialize_with = "de::opt_u64_flex")]
    /// The contact created with the lead.
    pub contact_id: Option<u64>,
    #[serde(default, deserialize_with = "de::opt_u64_flex")]
    /// Linked company, if any.
    pub company_id: Option<u64>,
    #[serde(default, deserialize_with = "de::string_list")]
    /// The caller's correlation id: amoCRM echoes it so results can be matched to what was sent.
    pub request_id: Vec<String>,
    #[serde(default, deserialize_with = "de::null_as_default")]
    /// Whether amoCRM's duplicate control merged the lead into an existing one.
    pub merged: bool,
}

/// Filters for `GET /api/v4/leads`; empty fields are not sent.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LeadQuery {
    /// amoCRM's full-text `query` (matches names and field values, e.g. an order number).
    pub query: Option<String>,
    /// Only these lead ids (empty: no id filter).
    pub ids: Vec<u64>,
    /// The pipeline it belongs to.
    pub pipeline_id: Option<u64>,
    /// Page number, from 1.
    pub page: Option<u32>,
    /// At most 250 (amoCRM's limit); larger values are clamped.
    pub limit: Option<u32>,
    /// Ask for each lead's contacts (`with=contacts`); companies come without asking.
    pub with_contacts: bool,
}

impl LeadQuery {
    pub(crate) fn to_pairs(&self) -> Vec<(String, String)> {
        let mut pairs = Vec::new();
        if let Some(q) = self.query.as_deref().filter(|q| !q.is_empty()) {
            pairs.push(("query".to_owned(), q.to_owned()));
        }
        for id in &self.ids {
            pairs.push(("filter[id][]".to_owned(), id.to_string()));
        }
        if let Some(p) = self.pipeline_id {
            pairs.push(("filter[pipeline_id]".to_owned(), p.to_string()));
        }
        if let Some(p) = self.page {
            pairs.push(("page".to_owned(), p.max(1).to_string()));
        }
        if let Some(l) = self.limit {
            pairs.push(("limit".to_owned(), l.clamp(1, 250).to_string()));
        }
        if self.with_contacts {
            pairs.push(("with".to_owned(), "contacts".to_owned()));
        }
        pairs
    }
}

/// A lead as read back (`GET /api/v4/leads[/{id}]`).
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
pub struct Lead {
    #[serde(deserialize_with = "de::u64_flex")]
    /// amoCRM's id of this lead.
    pub id: u64,
    #[serde(default, deserialize_with = "de::null_as_default")]
    /// Name as amoCRM shows it.
    pub name: String,
    #[serde(default, deserialize_with = "de::i64_flex_default")]
    /// Sale value in whole currency units.
    pub price: i64,
    #[serde(default, deserialize_with = "de::opt_u64_flex")]
    /// The pipeline it belongs to.
    pub pipeline_id: Option<u64>,
    #[serde(default, deserialize_with = "de::opt_u64_flex")]
    /// The pipeline stage.
    pub status_id: Option<u64>,
    #[serde(default, deserialize_with = "de::null_as_default")]
    /// Custom field values (each names its field by id or code).
    pub custom_fields_values: Vec<FieldValue>,
    #[serde(default, deserialize_with = "de::i64_flex_default")]
    /// When it last changed (Unix seconds).
    pub updated_at: i64,
    #[serde(default, deserialize_with = "de::i64_flex_default")]
    /// When it was created (Unix seconds).
    pub created_at: i64,
    /// Linked contacts (only when read `with=contacts`) and companies.
    #[serde(
        default,
        rename = "_embedded",
        deserialize_with = "de::null_as_default"
    )]
    pub embedded: LeadLinks,
}

/// The entities linked to a lead, as ids.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
pub struct LeadLinks {
    #[serde(default, deserialize_with = "de::null_as_default")]
    /// Contacts linked to the lead.
    pub contacts: Vec<LinkedEntity>,
    #[serde(default, deserialize_with = "de::null_as_default")]
    /// Companies linked to the lead.
    pub companies: Vec<LinkedEntity>,
}

/// One linked contact or company.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
pub struct LinkedEntity {
    #[serde(deserialize_with = "de::u64_flex")]
    /// amoCRM's id of this linked entity.
    pub id: u64,
    #[serde(default)]
    /// Whether this is the account's main pipeline (or main contact).
    pub is_main: bool,
}

impl Lead {
    /// The main contact (the first one when none is marked main), if the lead was read `with=contacts`.
    pub fn main_contact_id(&self) -> Option<u64> {
        let contacts = &self.embedded.contacts;
        contacts
            .iter()
            .find(|c| c.is_main)
            .or_else(|| contacts.first())
            .map(|c| c.id)
    }

    /// The lead's company (amoCRM links at most one).
    pub fn company_id(&self) -> Option<u64> {
        self.embedded.companies.first().map(|c| c.id)
    }

    /// The values of custom field `field_id` as strings (empty when the lead does not have it).
    pub fn field_texts(&self, field_id: u64) -> Vec<String> {
        self.custom_fields_values
            .iter()
            .filter(|f| f.field_id == Some(field_id))
            .flat_map(FieldValue::texts)
            .collect()
    }
}

/// A stage move for `PATCH /api/v4/leads`: statuses 142/143 exist in every pipeline, so both ids are sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct LeadUpdate {
    /// amoCRM's id of this lead update.
    pub id: u64,
    /// The pipeline it belongs to.
    pub pipeline_id: u64,
    /// The pipeline stage.
    pub status_id: u64,
}

/// One item of the `PATCH /api/v4/leads` answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
pub struct UpdatedLead {
    #[serde(deserialize_with = "de::u64_flex")]
    /// amoCRM's id of this updated lead.
    pub id: u64,
    #[serde(default, deserialize_with = "de::opt_i64_flex")]
    /// When it last changed (Unix seconds).
    pub updated_at: Option<i64>,
}

/// An amoCRM webhook subscription. `disabled` turns true when amoCRM gave up on the destination.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
pub struct Webhook {
    #[serde(deserialize_with = "de::u64_flex")]
    /// amoCRM's id of this webhook.
    pub id: u64,
    #[serde(default)]
    /// The URL webhooks are posted to.
    pub destination: String,
    #[serde(default, deserialize_with = "de::string_list")]
    /// The events the destination is subscribed to (`add_lead`, `status_lead`, …).
    pub settings: Vec<String>,
    #[serde(default, deserialize_with = "de::null_as_default")]
    /// Whether amoCRM stopped sending to it after repeated failures.
    pub disabled: bool,
    #[serde(default, deserialize_with = "de::opt_i64_flex")]
    /// Position among its siblings (lower comes first).
    pub sort: Option<i64>,
}

/// Lenient deserializers for amoCRM's loosely typed JSON.
pub(crate) mod de {
    use serde::{Deserialize, Deserializer, de::Error};
    use serde_json::Value;

    fn value_to_u64(v: &Value) -> Option<u64> {
        match v {
            Value::Number(n) => n.as_u64(),
            Value::String(s) => s.trim().parse().ok(),
            _ => None,
        }
    }

    fn value_to_i64(v: &Value) -> Option<i64> {
        match v {
            Value::Number(n) => n.as_i64().or_else(|| n.as_f64().map(|f| f as i64)),
            Value::String(s) => {
                let s = s.trim();
                s.parse().ok().or_else(|| {
                    s.parse::<f64>()
                        .ok()
                        .filter(|f| f.is_finite())
                        .map(|f| f as i64)
                })
            }
            _ => None,
        }
    }

    pub fn u64_flex<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
        let v = Value::deserialize(d)?;
        value_to_u64(&v).ok_or_else(|| D::Error::custom("expected an unsigned integer id"))
    }

    pub fn opt_u64_flex<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
        let v = Value::deserialize(d)?;
        Ok(value_to_u64(&v).filter(|_| !v.is_null()))
    }

    pub fn opt_i64_flex<'de, D: Deserializer<'de>>(d: D) -> Result<Option<i64>, D::Error> {
        let v = Value::deserialize(d)?;
        Ok(value_to_i64(&v))
    }

    pub fn i64_flex_default<'de, D: Deserializer<'de>>(d: D) -> Result<i64, D::Error> {
        let v = Value::deserialize(d)?;
        Ok(value_to_i64(&v).unwrap_or_default())
    }

    pub fn null_as_default<'de, D, T>(d: D) -> Result<T, D::Error>
    where
        D: Deserializer<'de>,
        T: Deserialize<'de> + Default,
    {
        Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
    }

    pub fn opt_string_or_number<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<Option<String>, D::Error> {
        Ok(match Value::deserialize(d)? {
            Value::String(s) => Some(s),
            Value::Number(n) => Some(n.to_string()),
            _ => None,
        })
    }

    /// A list of strings, or a single string, numbers rendered; `null` is empty.
    pub fn string_list<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
        let one = |v: Value| match v {
            Value::String(s) => Some(s),
            Value::Number(n) => Some(n.to_string()),
            _ => None,
        };
        Ok(match Value::deserialize(d)? {
            Value::Array(items) => items.into_iter().filter_map(one).collect(),
            Value::Null => Vec::new(),
            other => one(other).into_iter().collect(),
        })
    }
}

#[cfg(test)]
mod tests {
    #![expect(clippy::unwrap_used, reason = "tests fail loudly on unexpected errors")]
    use super::*;
    use crate::test_support::fixture;

    #[test]
    fn a_lead_read_with_contacts_names_its_main_contact_and_company() {
        // The shape of `GET /api/v4/leads?with=contacts` (amoCRM reference, trimmed).
        let lead: Lead = serde_json::from_value(json!({
            "id": 19619, "name": "Buyurtma #A-1", "price": 46333, "status_id": 142, "pipeline_id": 1300,
            "custom_fields_values": null, "created_at": 1548280113, "updated_at": 1548280115,
            "_embedded": {
                "tags": [],
                "companies": [{"id": 1, "_links": {"self": {"href": "https://x.amocrm.ru/api/v4/companies/1"}}}],
                "contacts": [
                    {"id": 7, "is_main": false},
                    {"id": 8, "is_main": true}
                ]
            }
        }))
        .unwrap();
        assert_eq!(lead.main_contact_id(), Some(8));
        assert_eq!(lead.company_id(), Some(1));
        let bare: Lead = serde_json::from_value(json!({"id": "5", "_embedded": null})).unwrap();
        assert_eq!((bare.main_contact_id(), bare.company_id()), (None, None));
        let q = LeadQuery {
            query: Some("A-1".into()),
            with_contacts: true,
            ..LeadQuery::default()
        };
        assert!(
            q.to_pairs()
                .contains(&("with".to_owned(), "contacts".to_owned()))
        );
    }

    #[test]
    fn account_response_is_read() {
        let a: Account =
            serde_json::from_slice(&fixture("account-response-kommo-docs.json")).unwrap();
        assert_eq!(a.id, 123_123_123);
        assert_eq!(a.subdomain, "yourdomain");
        assert_eq!(a.currency.as_deref(), Some("EUR"));
    }

    #[test]
    fn pipeline_list_and_create_responses_are_read_with_their_statuses() {
        #[derive(Deserialize)]
        struct Page {
            #[serde(rename = "_embedded")]
            embedded: Emb,
        }
        #[derive(Deserialize)]
        struct Emb {
            pipelines: Vec<RawPipeline>,
        }
        for file in [
            "pipelines-list-response-kommo-docs.json",
            "pipelines-create-response-kommo-docs.json",
        ] {
            let page: Page = serde_json::from_slice(&fixture(file)).unwrap();
            let p: Pipeline = page.embedded.pipelines.into_iter().next().unwrap().into();
            assert!(p.id > 0);
            assert!(!p.statuses.is_empty(), "{file}");
            assert_eq!(p.statuses[0].type_, 1, "incoming stage first in {file}");
        }
        let page: Page =
            serde_json::from_slice(&fixture("pipelines-create-response-kommo-docs.json")).unwrap();
        let p: Pipeline = page.embedded.pipelines.into_iter().next().unwrap().into();
        assert!(p.statuses.iter().any(|s| s.id == Status::WON));
        assert!(p.statuses.iter().any(|s| s.id == Status::LOST));
    }

    #[test]
    fn complex_responses_are_read_including_merged_duplicates() {
        let r: Vec<ComplexLeadResult> =
            serde_json::from_slice(&fixture("complex-response-kommo-docs-1.json")).unwrap();
        assert_eq!(
            r,
            vec![ComplexLeadResult {
                id: 9_774_766,
                contact_id: Some(12_117_258),
                company_id: Some(12_117_260),
                request_id: vec!["1".into()],
                merged: false
            }]
        );
        let r: Vec<ComplexLeadResult> =
            serde_json::from_slice(&fixture("complex-response-kommo-docs-2-merged.json")).unwrap();
        assert!(r[0].merged);
        let r: Vec<ComplexLeadResult> = serde_json::from_slice(
            br#"[{"id":1,"contact_id":null,"company_id":null,"request_id":"x"}]"#,
        )
        .unwrap();
        assert_eq!(
            (r[0].contact_id, r[0].request_id.clone(), r[0].merged),
            (None, vec!["x".to_owned()], false)
        );
    }

    #[test]
    fn custom_field_create_response_is_read() {
        let f: CustomField =
            serde_json::from_slice(&fixture("custom-field-create-response-kommo-docs.json"))
                .unwrap();
        assert_eq!(
            (f.id, f.type_.as_str(), f.code),
            (1_016_236, "select", None)
        );
    }

    #[test]
    fn complex_lead_is_written_in_amocrm_shape() {
        let lead = ComplexLead {
            name: "Buyurtma #1042".into(),
            price: 150_000,
            pipeline_id: 7,
            status_id: 70,
            request_id: "ord_1".into(),
            custom_fields_values: vec![FieldValue::text(990_001, "1042")],
            tags: vec!["marketplace".into()],
            contact: Some(NewContact {
                name: "Ali".into(),
                phone: Some("+998901234567".into()),
                email: Some("ali@example.com".into()),
            }),
            company: Some(NewCompany {
                name: "Ali LLC".into(),
            }),
        };
        let v = lead.to_api();
        assert_eq!(
            v,
            json!({
                "name": "Buyurtma #1042", "price": 150000, "pipeline_id": 7, "status_id": 70,
                "request_id": "ord_1",
                "custom_fields_values": [{"field_id": 990001, "values": [{"value": "1042"}]}],
                "_embedded": {
                    "tags": [{"name": "marketplace"}],
                    "contacts": [{"name": "Ali", "custom_fields_values": [
                        {"field_code": "PHONE", "values": [{"value": "+998901234567", "enum_code": "WORK"}]},
                        {"field_code": "EMAIL", "values": [{"value": "ali@example.com", "enum_code": "WORK"}]}
                    ]}],
                    "companies": [{"name": "Ali LLC"}]
                }
            })
        );
        let bare = ComplexLead {
            contact: None,
            company: None,
            tags: vec![],
            custom_fields_values: vec![],
            ..lead
        };
        assert!(bare.to_api().get("_embedded").is_none());
    }

    #[test]
    fn new_pipeline_carries_its_statuses_under_embedded() {
        let p = NewPipeline {
            name: "Marketplace".into(),
            sort: None,
            statuses: vec![NewStatus::new("Yangi", 10, "#fffeb2")],
        };
        assert_eq!(
            p.to_api(),
            json!({"name": "Marketplace", "is_main": false, "is_unsorted_on": false,
                   "_embedded": {"statuses": [{"name": "Yangi", "sort": 10, "color": "#fffeb2"}]}})
        );
    }

    #[test]
    fn leads_read_with_nulls_and_string_numbers() {
        let l: Lead = serde_json::from_value(json!({
            "id": "5", "name": null, "price": null, "pipeline_id": 7, "status_id": "142",
            "custom_fields_values": [{"field_id": 9, "field_name": "Order", "field_type": "text",
                                      "values": [{"value": "1042"}, {"value": 3}]}],
            "updated_at": 1_700_000_000
        }))
        .unwrap();
        assert_eq!((l.id, l.price, l.status_id), (5, 0, Some(142)));
        assert_eq!(l.field_texts(9), vec!["1042".to_owned(), "3".to_owned()]);
        let l: Lead =
            serde_json::from_value(json!({"id": 6, "custom_fields_values": null})).unwrap();
        assert!(l.custom_fields_values.is_empty());
    }

    #[test]
    fn lead_query_sends_only_what_is_set() {
        assert!(LeadQuery::default().to_pairs().is_empty());
        let q = LeadQuery {
            query: Some("1042".into()),
            ids: vec![1, 2],
            pipeline_id: Some(7),
            page: Some(0),
            limit: Some(1000),
            with_contacts: false,
        };
        let pairs = q.to_pairs();
        assert!(pairs.contains(&("filter[id][]".into(), "2".into())));
        assert!(pairs.contains(&("limit".into(), "250".into())));
        assert!(pairs.contains(&("page".into(), "1".into())));
    }
}
