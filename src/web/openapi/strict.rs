//! Request schemas as strict as the checks behind them, so a body the document allows is one the service
//! takes (only what depends on stored state, such as whether a seller has connected, can still refuse it).
//! Written as JSON over the generated document: the checks live in `domain` and `services`, and several
//! accept shapes (a number as a seller id, a name or a list of events) that derive macros cannot state.

use serde_json::{Map, Value, json};

use crate::domain::events::EventKind;
use crate::domain::order::MAX_ITEMS;
use crate::domain::platform::Platform;
use crate::domain::settings::{
    Entry, MAX_DUE_MINUTES, MAX_ROUND_ROBIN_USERS, MAX_TASK_TEXT, MatchMode, ProductsMode,
    ResponsibleMode, STATUS_KEYS,
};
use crate::domain::status::OrderStatus;

/// What `SellerId::parse` takes.
pub const SELLER_PATTERN: &str = "^[A-Za-z0-9._:-]{1,64}$";
/// A subscription URL that `services::subscriptions::check_url` takes whatever the configuration: http(s),
/// a host name whose last label starts with a letter (so it is never read as an address), not `localhost`
/// and no IDNA `xn--` label (whose punycode may not decode), a port below 10,000, no credentials and no
/// fragment.
const URL_PATTERN: &str = "^[Hh][Tt][Tt][Pp][Ss]?://(?![^/?]*[Ll][Oo][Cc][Aa][Ll][Hh][Oo][Ss][Tt])(?![^/?]*[Xx][Nn]--)\
([A-Za-z0-9-]+\\.)*[A-Za-z][A-Za-z0-9-]*(:[0-9]{1,4})?([/?][^\\s#]*)?$";
/// The languages of notes and pages.
const LANGS: [&str; 3] = ["uz", "ru", "en"];

fn seller_string() -> Value {
    json!({"type": "string", "pattern": SELLER_PATTERN, "example": "seller-42"})
}

/// A seller id in a body: a string, or a whole number taken as its decimal form.
fn seller_in_body(integer_min: Option<i64>) -> Value {
    let mut int = json!({"type": "integer"});
    if let Some(min) = integer_min {
        int["minimum"] = json!(min);
    }
    json!({
        "description": "The marketplace's seller id: letters, digits, '-', '_', '.' and ':' (1 to 64); a whole \
    number is taken as its decimal form.",
        "oneOf": [seller_string(), int],
    })
}

/// A positive amoCRM id.
fn amo_id() -> Value {
    json!({"type": "integer", "minimum": 1, "maximum": i64::MAX})
}

fn one_of(names: &[&str]) -> Value {
    json!({"type": "string", "enum": names})
}

fn nullable(mut v: Value) -> Value {
    match v.get("type").cloned() {
        Some(Value::String(t)) => v["type"] = json!([t, "null"]),
        _ => return json!({"anyOf": [v, {"type": "null"}]}),
    }
    if let Some(Value::Array(e)) = v.get_mut("enum") {
        e.push(Value::Null);
    }
    v
}

fn object(props: Value, required: &[&str]) -> Value {
    json!({
        "type": "object",
        "properties": props,
        "required": required,
        "additionalProperties": false,
    })
}

/// Event names a subscription takes: the catalogue's, or `*` for all.
fn event_name() -> Value {
    let mut names = EventKind::names();
    names.push("*");
    one_of(&names)
}

/// The two-letter codes the phone library knows (the check of `contacts.default_country`).
fn countries() -> Vec<String> {
    let mut out = Vec::new();
    for a in b'A'..=b'Z' {
        for b in b'A'..=b'Z' {
            let code = String::from_utf8(vec![a, b]).unwrap_or_default();
            if crate::domain::buyer::country(&code).is_some() {
                out.push(code);
            }
        }
    }
    out
}

/// `PUT /api/v1/connections/{seller_id}/settings`: any subset of the keys, each exactly as `SellerSettings::merge`
/// checks it (unknown keys are refused there).
fn settings_in() -> Value {
    let statuses: Map<String, Value> = STATUS_KEYS
        .iter()
        .map(|k| ((*k).to_owned(), amo_id()))
        .collect();
    let field_id = nullable(amo_id());
    json!({
        "type": "object",
        "description": "Any subset of the seller's settings (CONTRACT §10); keys not sent keep their value.",
        "additionalProperties": false,
        "properties": {
            "language": one_of(&LANGS),
            "entry": one_of(Entry::NAMES),
            "pipeline": object(json!({
                "pipeline_id": amo_id(),
                "statuses": {"type": "object", "properties": statuses, "additionalProperties": false},
            }), &["pipeline_id"]),
            "responsible": {
                "type": "object",
                "additionalProperties": false,
                "properties": {
                    "mode": one_of(ResponsibleMode::NAMES),
                    "user_ids": {"type": "array", "items": amo_id(), "maxItems": MAX_ROUND_ROBIN_USERS},
                },
                "if": {"properties": {"mode": {"const": "round_robin"}}, "required": ["mode"]},
                "then": {"required": ["user_ids"], "properties": {"user_ids": {"minItems": 1}}},
            },
            "contacts": object(json!({
                "match": one_of(MatchMode::NAMES),
                "default_country": {"type": "string", "enum": countries()},
            }), &[]),
            "items": object(json!({
                "note": {"type": "boolean"},
                "products": one_of(ProductsMode::NAMES),
            }), &[]),
            "task": object(json!({
                "enabled": {"type": "boolean"},
                "text": {"type": "string", "minLength": 1, "maxLength": MAX_TASK_TEXT, "pattern": "\\S"},
                "due_in_minutes": {"type": "integer", "minimum": 1, "maximum": MAX_DUE_MINUTES},
            }), &[]),
            "fields": object(json!({
                "delivery_method": field_id,
                "delivery_address": field_id,
                "payment_method": field_id,
                "source": field_id,
            }), &[]),
        },
    })
}

fn set(doc: &mut Value, pointer: &str, v: Value) {
    if let Some(slot) = doc.pointer_mut(pointer) {
        *slot = v;
    }
}

fn set_request(doc: &mut Value, path: &str, method: &str, schema: &str) {
    let pointer = format!(
        "/paths/{}/{method}/requestBody/content/application~1json/schema",
        path.replace('~', "~0").replace('/', "~1")
    );
    set(
        doc,
        &pointer,
        json!({"$ref": format!("#/components/schemas/{schema}")}),
    );
}

/// Tightens the request schemas of the generated document (see the module's comment).
pub fn apply(doc: &mut Value) {
    let s = "/components/schemas";
    let lang = nullable(one_of(&LANGS));
    let platform = nullable(one_of(Platform::NAMES));
    let return_url = json!({"type": ["string", "null"], "maxLength": 2048,
        "pattern": "^$|^\\s*[Hh][Tt][Tt][Pp][Ss]?://",
        "description": "An http(s) URL starting with one of `CONNECT_RETURN_URL_ALLOWLIST`; empty: none."});
    set(
        doc,
        &format!("{s}/ConnectSessionIn"),
        object(
            json!({
                "seller_id": seller_in_body(None),
                "return_url": return_url,
                "lang": lang,
                "platform": platform,
            }),
            &["seller_id"],
        ),
    );
    open_to_more(doc, &format!("{s}/ConnectSessionIn"));
    set(
        doc,
        &format!("{s}/SettingsSessionIn"),
        object(
            json!({
                "seller_id": seller_in_body(None),
                "return_url": return_url,
                "lang": lang,
            }),
            &["seller_id"],
        ),
    );
    open_to_more(doc, &format!("{s}/SettingsSessionIn"));
    // Orders: the marketplace may send more than we read, so extra keys stay allowed.
    set(
        doc,
        &format!("{s}/OrderIn/properties/seller_id"),
        seller_in_body(Some(0)),
    );
    set(
        doc,
        &format!("{s}/OrderIn/properties/status"),
        nullable(one_of(&OrderStatus::ALL.map(OrderStatus::as_str))),
    );
    set(
        doc,
        &format!("{s}/OrderIn/properties/items"),
        json!({"type": "array", "items": {"$ref": "#/components/schemas/OrderItem"},
            "minItems": 1, "maxItems": MAX_ITEMS}),
    );
    set(
        doc,
        &format!("{s}/OrderIn/properties/total_amount"),
        json!({"type": "number", "minimum": 0}),
    );
    for field in ["product_id", "name"] {
        set(
            doc,
            &format!("{s}/OrderItem/properties/{field}"),
            json!({"type": "string", "minLength": 1, "maxLength": 255, "pattern": "\\S"}),
        );
    }
    set(
        doc,
        &format!("{s}/OrderItem/properties/quantity"),
        json!({"type": "integer", "minimum": 1, "maximum": 1_000_000}),
    );
    set(
        doc,
        &format!("{s}/OrderItem/properties/price"),
        json!({"type": "number", "minimum": 0}),
    );
    set(
        doc,
        &format!("{s}/OrderCustomer/properties/company"),
        json!({"description": "A name, or an object with a name.",
            "anyOf": [{"type": "string", "maxLength": 255}, {"type": "null"},
                object(json!({"name": {"type": "string", "minLength": 1, "maxLength": 255}}), &["name"])]}),
    );
    set(
        doc,
        &format!("{s}/OrderStatusIn"),
        object(
            json!({"status": one_of(&OrderStatus::ALL.map(OrderStatus::as_str))}),
            &["status"],
        ),
    );
    let events = json!({"description": "Event names from CONTRACT §7, or `*` for all: one name or a list.",
        "oneOf": [event_name(), {"type": "array", "items": event_name(), "minItems": 1}]});
    // A host name, never an address literal or `localhost`: those pass only when `WEBHOOK_ALLOWED_HOSTS`
    // (configuration) allows them, and names are checked again when a delivery resolves them.
    let url = json!({"type": "string", "minLength": 1, "maxLength": 2048,
        "pattern": URL_PATTERN,
        "description": "An http(s) URL of a host name, without credentials or a fragment; loopback, private and \
link-local addresses are refused unless on `WEBHOOK_ALLOWED_HOSTS`.",
        "example": "https://marketplace.example/hooks/amocrm"});
    for (name, required, patch) in [
        ("SubscriptionIn", &["url", "events", "secret"][..], false),
        ("SubscriptionPatch", &[][..], true),
    ] {
        let base = format!("{s}/{name}");
        let (url, events) = if patch {
            (
                nullable(url.clone()),
                json!({"anyOf": [events.clone(), {"type": "null"}]}),
            )
        } else {
            (url.clone(), events.clone())
        };
        set(doc, &format!("{base}/properties/url"), url);
        set(doc, &format!("{base}/properties/events"), events);
        if let Some(o) = doc.pointer_mut(&base).and_then(Value::as_object_mut) {
            o.insert("additionalProperties".into(), json!(false));
            o.insert("required".into(), json!(required));
        }
    }
    for (name, field, schema) in [
        (
            "LoginBody",
            "email",
            json!({"type": "string", "pattern": "\\S", "maxLength": 254, "example": "ops@example.com"}),
        ),
        (
            "LoginBody",
            "password",
            json!({"type": "string", "minLength": 1, "maxLength": 1024}),
        ),
        (
            "RefreshBody",
            "refresh_token",
            json!({"type": "string", "minLength": 1}),
        ),
    ] {
        set(doc, &format!("{s}/{name}/properties/{field}"), schema);
    }
    set(
        doc,
        &format!("{s}/PipelineMapping/properties/pipeline_id"),
        amo_id(),
    );
    if let Some(stages) = doc
        .pointer_mut(&format!("{s}/StageMap/properties"))
        .and_then(Value::as_object_mut)
    {
        for v in stages.values_mut() {
            let description = v.get("description").cloned();
            *v = amo_id();
            if let Some(d) = description {
                v["description"] = d;
            }
        }
    }
    if let Some(o) = doc
        .pointer_mut(&format!("{s}/StageMap"))
        .and_then(Value::as_object_mut)
    {
        o.insert("additionalProperties".into(), json!(false));
    }
    if let Some(o) = doc.pointer_mut(s).and_then(Value::as_object_mut) {
        o.insert("SettingsIn".into(), settings_in());
    }
    set_request(
        doc,
        "/api/v1/connections/{seller_id}/settings",
        "put",
        "SettingsIn",
    );
    for name in REQUEST_SCHEMAS {
        if let Some(schema) = doc.pointer_mut(&format!("{s}/{name}")) {
            no_nul(schema);
        }
    }
}

/// The request bodies' schemas.
const REQUEST_SCHEMAS: [&str; 11] = [
    "LoginBody",
    "RefreshBody",
    "ConnectSessionIn",
    "SettingsSessionIn",
    "OrderIn",
    "OrderItem",
    "OrderCustomer",
    "OrderStatusIn",
    "SubscriptionIn",
    "SubscriptionPatch",
    "SettingsIn",
];

/// The body reader refuses a NUL character in any string it keeps (PostgreSQL cannot store one): every free
/// string of a request schema says so.
fn no_nul(schema: &mut Value) {
    const NO_NUL: &str = "^[^\\u0000]*$";
    let is_string = match schema.get("type") {
        Some(Value::String(t)) => t == "string",
        Some(Value::Array(ts)) => ts.iter().any(|t| t == "string"),
        _ => false,
    };
    if is_string && schema.get("enum").is_none() {
        match schema.get("pattern").and_then(Value::as_str) {
            None => schema["pattern"] = json!(NO_NUL),
            Some("\\S") => schema["pattern"] = json!("^[^\\u0000]*[^\\s\\u0000][^\\u0000]*$"),
            Some(_) => {}
        }
    }
    match schema {
        Value::Object(m) => m.values_mut().for_each(no_nul),
        Value::Array(a) => a.iter_mut().for_each(no_nul),
        _ => {}
    }
}

/// A body whose unknown keys are ignored, not refused.
fn open_to_more(doc: &mut Value, pointer: &str) {
    if let Some(o) = doc.pointer_mut(pointer).and_then(Value::as_object_mut) {
        o.remove("additionalProperties");
    }
}
