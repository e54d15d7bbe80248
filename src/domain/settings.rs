//! A seller's settings (docs/CONTRACT.md §10): how their orders become deals. The pipeline part lives with the
//! connection (it is provisioned there); everything else is this value, stored whole.
//!
//! A `PUT` may carry any subset of keys: [`SellerSettings::merge`] applies it over the current value and
//! reports every bad or unknown key at once, so the API answers one 422 with all of them. Ids that only the
//! seller's amoCRM can confirm (users, fields) are checked live by the use case, not here.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::lang::Lang;
use super::order::FieldErrors;

super::wire_enum! {
    /// Where an order lands in amoCRM.
    pub enum Entry {
        /// A lead in the mapped stage.
        Lead => "lead",
        /// amoCRM's Unsorted: a manager accepts or declines each order.
        Incoming => "incoming",
    }
}

super::wire_enum! {
    /// Who is made responsible for an order's lead.
    pub enum ResponsibleMode {
        /// The account's default user (amoCRM decides).
        Default => "default",
        /// The owner of the buyer's existing contact; the default for a new buyer.
        ContactOwner => "contact_owner",
        /// Each of `user_ids` in turn, fairly across instances.
        RoundRobin => "round_robin",
    }
}

super::wire_enum! {
    /// How a buyer is matched to an existing contact.
    pub enum MatchMode {
        PhoneThenEmail => "phone_then_email",
        Phone => "phone",
        Email => "email",
        /// Every order makes a new contact.
        Off => "off",
    }
}

super::wire_enum! {
    /// Whether order items are linked as catalog products.
    pub enum ProductsMode {
        /// When the account has a products catalog.
        Auto => "auto",
        Off => "off",
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Responsible {
    pub mode: ResponsibleMode,
    pub user_ids: Vec<i64>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Contacts {
    #[serde(rename = "match")]
    pub match_mode: MatchMode,
    /// ISO 3166 alpha-2 country whose numbering a phone without a country code follows.
    pub default_country: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Items {
    pub note: bool,
    pub products: ProductsMode,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Task {
    pub enabled: bool,
    pub text: String,
    pub due_in_minutes: i64,
}

/// The seller's own lead fields that order values go into (`None`: not sent).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FieldMap {
    pub delivery_method: Option<i64>,
    pub delivery_address: Option<i64>,
    pub payment_method: Option<i64>,
    pub source: Option<i64>,
}

impl FieldMap {
    /// `(key, field id)` of every mapped field.
    pub fn mapped(&self) -> Vec<(&'static str, i64)> {
        [
            ("delivery_method", self.delivery_method),
            ("delivery_address", self.delivery_address),
            ("payment_method", self.payment_method),
            ("source", self.source),
        ]
        .into_iter()
        .filter_map(|(k, v)| v.map(|v| (k, v)))
        .collect()
    }
}

/// Everything of §10 but the pipeline.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SellerSettings {
    pub language: Lang,
    pub entry: Entry,
    pub responsible: Responsible,
    pub contacts: Contacts,
    pub items: Items,
    pub task: Task,
    pub fields: FieldMap,
}

impl Default for SellerSettings {
    fn default() -> Self {
        Self {
            language: Lang::Uz,
            entry: Entry::Lead,
            responsible: Responsible {
                mode: ResponsibleMode::Default,
                user_ids: Vec::new(),
            },
            contacts: Contacts {
                match_mode: MatchMode::PhoneThenEmail,
                default_country: "UZ".to_owned(),
            },
            items: Items {
                note: true,
                products: ProductsMode::Auto,
            },
            task: Task {
                enabled: false,
                text: "Buyurtmani tasdiqlang".to_owned(),
                due_in_minutes: 60,
            },
            fields: FieldMap::default(),
        }
    }
}

/// Longest task text amoCRM shows without cutting.
pub const MAX_TASK_TEXT: usize = 255;
/// Most users a round-robin goes over.
pub const MAX_ROUND_ROBIN_USERS: usize = 50;
/// A task is due at most a year after the order.
pub const MAX_DUE_MINUTES: i64 = 525_600;

/// The settings of one update, split: the pipeline part (for the connection) and the rest.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Update {
    pub settings: SellerSettings,
    /// `pipeline_id` and the six status ids (in `OrderStatus::ALL` order), when the update names a pipeline.
    pub pipeline: Option<PipelineChoice>,
    /// Top-level keys the update changed, for `settings.updated`.
    pub changed: Vec<String>,
}

/// A pipeline and the stage of each order status in it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PipelineChoice {
    pub pipeline_id: i64,
    /// Each status's stage; `None` keeps the current one (or amoCRM's 142/143 for the closing statuses).
    pub statuses: [Option<i64>; 6],
}

/// Collects the problems of one update.
struct Problems(FieldErrors);

impl Problems {
    fn add(&mut self, path: &str, msg: impl Into<String>) {
        self.0.entry(path.to_owned()).or_default().push(msg.into());
    }

    /// The object at `path`, reporting keys outside `known`.
    fn object<'v>(
        &mut self,
        v: &'v Value,
        path: &str,
        known: &[&str],
    ) -> Option<&'v Map<String, Value>> {
        let Some(obj) = v.as_object() else {
            self.add(path, "must be an object");
            return None;
        };
        for k in obj.keys().filter(|k| !known.contains(&k.as_str())) {
            self.add(&join(path, k), "is not a settings key");
        }
        Some(obj)
    }

    /// One of `all` (a wire enum's `ALL`), by its spelling.
    fn choice<T: Copy + std::fmt::Display>(
        &mut self,
        v: &Value,
        path: &str,
        all: &[T],
    ) -> Option<T> {
        let spelled = |c: &T| c.to_string();
        let found = v
            .as_str()
            .and_then(|s| all.iter().copied().find(|c| spelled(c) == s));
        if found.is_none() {
            let names: Vec<String> = all.iter().map(spelled).collect();
            self.add(path, format!("must be one of {}", names.join(", ")));
        }
        found
    }

    fn id(&mut self, v: &Value, path: &str) -> Option<i64> {
        match super::whole_number(v) {
            Some(n) if n > 0 => Some(n),
            _ => {
                self.add(path, "must be a positive amoCRM id");
                None
            }
        }
    }

    fn flag(&mut self, v: &Value, path: &str) -> Option<bool> {
        let b = v.as_bool();
        if b.is_none() {
            self.add(path, "must be true or false");
        }
        b
    }
}

fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_owned()
    } else {
        format!("{path}.{key}")
    }
}

const TOP_KEYS: &[&str] = &[
    "language",
    "entry",
    "pipeline",
    "responsible",
    "contacts",
    "items",
    "task",
    "fields",
];
/// The status keys of `pipeline.statuses`, in `OrderStatus::ALL` order.
pub const STATUS_KEYS: [&str; 6] = [
    "pending",
    "awaiting_payment",
    "paid",
    "shipping",
    "completed",
    "cancelled",
];
const FIELD_KEYS: [&str; 4] = [
    "delivery_method",
    "delivery_address",
    "payment_method",
    "source",
];

impl SellerSettings {
    /// Applies an update (any subset of keys) over `self`; every problem is reported at once.
    pub fn merge(&self, body: &Value) -> Result<Update, FieldErrors> {
        let mut p = Problems(FieldErrors::new());
        let mut next = self.clone();
        let mut pipeline = None;
        let Some(obj) = p.object(body, "", TOP_KEYS) else {
            return Err(p.0);
        };
        for (key, v) in obj {
            match key.as_str() {
                "language" => {
                    if let Some(l) = v.as_str().and_then(Lang::parse) {
                        next.language = l;
                    } else {
                        p.add("language", "must be one of uz, ru, en");
                    }
                }
                "entry" => {
                    if let Some(e) = p.choice(v, "entry", Entry::ALL) {
                        next.entry = e;
                    }
                }
                "pipeline" => pipeline = merge_pipeline(&mut p, v),
                "responsible" => merge_responsible(&mut p, v, &mut next.responsible),
                "contacts" => merge_contacts(&mut p, v, &mut next.contacts),
                "items" => merge_items(&mut p, v, &mut next.items),
                "task" => merge_task(&mut p, v, &mut next.task),
                "fields" => merge_fields(&mut p, v, &mut next.fields),
                _ => {}
            }
        }
        if next.responsible.mode == ResponsibleMode::RoundRobin
            && next.responsible.user_ids.is_empty()
        {
            p.add(
                "responsible.user_ids",
                "round_robin needs at least one user",
            );
        }
        if !p.0.is_empty() {
            return Err(p.0);
        }
        let mut changed: Vec<String> = TOP_KEYS
            .iter()
            .filter(|k| **k != "pipeline" && obj.contains_key(**k))
            .filter(|k| section(self, k) != section(&next, k))
            .map(|k| (*k).to_owned())
            .collect();
        if pipeline.is_some() {
            changed.push("pipeline".to_owned());
        }
        Ok(Update {
            settings: next,
            pipeline,
            changed,
        })
    }

    /// The contract's object, with the pipeline part given by the connection.
    pub fn to_json(&self, pipeline: Value) -> Value {
        let mut v = serde_json::to_value(self).unwrap_or(Value::Null);
        if let Some(o) = v.as_object_mut() {
            o.insert("pipeline".to_owned(), pipeline);
        }
        v
    }
}

fn section(s: &SellerSettings, key: &str) -> Value {
    serde_json::to_value(s)
        .ok()
        .and_then(|v| v.get(key).cloned())
        .unwrap_or(Value::Null)
}

fn merge_pipeline(p: &mut Problems, v: &Value) -> Option<PipelineChoice> {
    let obj = p.object(v, "pipeline", &["pipeline_id", "statuses"])?;
    let Some(pid) = obj.get("pipeline_id") else {
        p.add("pipeline.pipeline_id", "is required with pipeline");
        return None;
    };
    let pipeline_id = p.id(pid, "pipeline.pipeline_id")?;
    let mut statuses = [None; 6];
    if let Some(sv) = obj.get("statuses") {
        let so = p.object(sv, "pipeline.statuses", &STATUS_KEYS)?;
        for (i, key) in STATUS_KEYS.iter().enumerate() {
            if let Some(id) = so.get(*key) {
                statuses[i] = p.id(id, &format!("pipeline.statuses.{key}"));
            }
        }
    }
    Some(PipelineChoice {
        pipeline_id,
        statuses,
    })
}

fn merge_responsible(p: &mut Problems, v: &Value, r: &mut Responsible) {
    let Some(obj) = p.object(v, "responsible", &["mode", "user_ids"]) else {
        return;
    };
    if let Some(m) = obj.get("mode")
        && let Some(m) = p.choice(m, "responsible.mode", ResponsibleMode::ALL)
    {
        r.mode = m;
    }
    if let Some(ids) = obj.get("user_ids") {
        let Some(list) = ids.as_array() else {
            p.add("responsible.user_ids", "must be a list of user ids");
            return;
        };
        if list.len() > MAX_ROUND_ROBIN_USERS {
            p.add(
                "responsible.user_ids",
                format!("must hold at most {MAX_ROUND_ROBIN_USERS} users"),
            );
            return;
        }
        let mut out = Vec::new();
        for (i, id) in list.iter().enumerate() {
            if let Some(id) = p.id(id, &format!("responsible.user_ids[{i}]"))
                && !out.contains(&id)
            {
                out.push(id);
            }
        }
        r.user_ids = out;
    }
}

fn merge_contacts(p: &mut Problems, v: &Value, c: &mut Contacts) {
    let Some(obj) = p.object(v, "contacts", &["match", "default_country"]) else {
        return;
    };
    if let Some(m) = obj.get("match")
        && let Some(m) = p.choice(m, "contacts.match", MatchMode::ALL)
    {
        c.match_mode = m;
    }
    if let Some(cc) = obj.get("default_country") {
        match cc.as_str().map(str::to_ascii_uppercase) {
            Some(code) if super::buyer::country(&code).is_some() => c.default_country = code,
            _ => p.add(
                "contacts.default_country",
                "must be an ISO 3166 two-letter country code such as UZ",
            ),
        }
    }
}

fn merge_items(p: &mut Problems, v: &Value, it: &mut Items) {
    let Some(obj) = p.object(v, "items", &["note", "products"]) else {
        return;
    };
    if let Some(n) = obj.get("note").and_then(|n| p.flag(n, "items.note")) {
        it.note = n;
    }
    if let Some(m) = obj.get("products")
        && let Some(m) = p.choice(m, "items.products", ProductsMode::ALL)
    {
        it.products = m;
    }
}

fn merge_task(p: &mut Problems, v: &Value, t: &mut Task) {
    let Some(obj) = p.object(v, "task", &["enabled", "text", "due_in_minutes"]) else {
        return;
    };
    if let Some(e) = obj.get("enabled").and_then(|e| p.flag(e, "task.enabled")) {
        t.enabled = e;
    }
    if let Some(text) = obj.get("text") {
        match text.as_str().map(str::trim) {
            Some(s) if !s.is_empty() && s.chars().count() <= MAX_TASK_TEXT => {
                t.text = s.to_owned();
            }
            _ => p.add(
                "task.text",
                format!("must be a text of 1 to {MAX_TASK_TEXT} characters"),
            ),
        }
    }
    if let Some(d) = obj.get("due_in_minutes") {
        match super::whole_number(d) {
            Some(m) if (1..=MAX_DUE_MINUTES).contains(&m) => t.due_in_minutes = m,
            _ => p.add(
                "task.due_in_minutes",
                format!("must be a whole number from 1 to {MAX_DUE_MINUTES}"),
            ),
        }
    }
}

fn merge_fields(p: &mut Problems, v: &Value, f: &mut FieldMap) {
    let Some(obj) = p.object(v, "fields", &FIELD_KEYS) else {
        return;
    };
    for key in FIELD_KEYS {
        let Some(v) = obj.get(key) else { continue };
        let id = if v.is_null() {
            Some(None)
        } else {
            p.id(v, &format!("fields.{key}")).map(Some)
        };
        if let Some(id) = id {
            match key {
                "delivery_method" => f.delivery_method = id,
                "delivery_address" => f.delivery_address = id,
                "payment_method" => f.payment_method = id,
                _ => f.source = id,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![expect(clippy::unwrap_used, reason = "test assertions")]
    use serde_json::json;

    use super::*;

    #[test]
    fn defaults_are_the_contracts() {
        let v = SellerSettings::default().to_json(json!(null));
        assert_eq!(v["language"], "uz");
        assert_eq!(v["entry"], "lead");
        assert_eq!(v["responsible"], json!({"mode": "default", "user_ids": []}));
        assert_eq!(
            v["contacts"],
            json!({"match": "phone_then_email", "default_country": "UZ"})
        );
        assert_eq!(v["items"], json!({"note": true, "products": "auto"}));
        assert_eq!(v["task"]["due_in_minutes"], 60);
        assert_eq!(v["fields"]["source"], Value::Null);
    }

    #[test]
    fn a_partial_update_changes_only_its_keys_and_names_them() {
        let s = SellerSettings::default();
        let u = s
            .merge(
                &json!({"responsible": {"mode": "round_robin", "user_ids": [3, 4, 3]},
                           "language": "uz"}),
            )
            .unwrap();
        assert_eq!(u.settings.responsible.user_ids, vec![3, 4]);
        assert_eq!(u.settings.contacts, s.contacts);
        assert_eq!(u.changed, vec!["responsible".to_owned()]);
        assert!(u.pipeline.is_none());
    }

    #[test]
    fn every_problem_is_reported_at_once() {
        let errs = SellerSettings::default()
            .merge(
                &json!({"entry": "deal", "contacts": {"default_country": "XX", "x": 1},
                           "task": {"text": "", "due_in_minutes": 0},
                           "fields": {"source": -1}, "colour": "red",
                           "pipeline": {"statuses": {}}}),
            )
            .unwrap_err();
        for key in [
            "entry",
            "contacts.default_country",
            "contacts.x",
            "task.text",
            "task.due_in_minutes",
            "fields.source",
            "colour",
            "pipeline.pipeline_id",
        ] {
            assert!(errs.contains_key(key), "{key}: {errs:?}");
        }
    }

    #[test]
    fn round_robin_needs_users_and_a_pipeline_names_its_stages() {
        let errs = SellerSettings::default()
            .merge(&json!({"responsible": {"mode": "round_robin"}}))
            .unwrap_err();
        assert!(errs.contains_key("responsible.user_ids"));
        let u = SellerSettings::default()
            .merge(&json!({"pipeline": {"pipeline_id": 7, "statuses": {"paid": 70}}}))
            .unwrap();
        let p = u.pipeline.unwrap();
        assert_eq!(p.pipeline_id, 7);
        assert_eq!(p.statuses[2], Some(70));
        assert_eq!(p.statuses[0], None);
        assert_eq!(u.changed, vec!["pipeline".to_owned()]);
    }
}
