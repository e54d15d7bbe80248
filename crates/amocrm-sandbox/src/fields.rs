//! Validation of request values: integers, strings, and `custom_fields_values` against field types.

use std::collections::BTreeMap;

use serde_json::Value;

use crate::model::{CustomField, FieldValue, FieldValues};
use crate::problem::FieldError;

/// Custom field types amoCRM knows (amocrm-api.md §7).
pub const FIELD_TYPES: [&str; 22] = [
    "text",
    "numeric",
    "checkbox",
    "select",
    "multiselect",
    "date",
    "url",
    "textarea",
    "radiobutton",
    "streetaddress",
    "smart_address",
    "birthday",
    "legal_entity",
    "date_time",
    "price",
    "category",
    "file",
    "chained_list",
    "tracking_data",
    "linked_entity",
    "monetary",
    "multitext",
];

/// At most this many custom-field values per entity.
pub const MAX_FIELD_VALUES: usize = 40;

/// A JSON integer (not a float, not a string).
pub fn as_int(v: &Value) -> Option<i64> {
    match v {
        Value::Number(n) => n.as_i64(),
        _ => None,
    }
}

/// A non-negative JSON integer.
pub fn as_id(v: &Value) -> Option<u64> {
    match v {
        Value::Number(n) => n.as_u64(),
        _ => None,
    }
}

/// Joins a path prefix and a key the way amoCRM reports it (`_embedded.contacts.0.name`).
pub fn join(prefix: &str, key: &str) -> String {
    if prefix.is_empty() {
        key.to_owned()
    } else {
        format!("{prefix}.{key}")
    }
}

/// Reads an optional field with `read`, recording an `InvalidType` error (of type `ty`) when it is present
/// but `read` refuses it; absent and `null` are both `None`.
fn opt_field<T>(
    obj: &serde_json::Map<String, Value>,
    key: &str,
    prefix: &str,
    errs: &mut Vec<FieldError>,
    ty: &str,
    read: impl FnOnce(&Value) -> Option<T>,
) -> Option<T> {
    match obj.get(key) {
        None | Some(Value::Null) => None,
        Some(v) => {
            let value = read(v);
            if value.is_none() {
                errs.push(FieldError::invalid_type(join(prefix, key), ty));
            }
            value
        }
    }
}

/// Reads an optional integer field, recording an `InvalidType` error when present but not an int.
pub fn opt_int(
    obj: &serde_json::Map<String, Value>,
    key: &str,
    prefix: &str,
    errs: &mut Vec<FieldError>,
) -> Option<i64> {
    opt_field(obj, key, prefix, errs, "int", as_int)
}

/// Reads an optional string field, recording an `InvalidType` error when present but not a string.
pub fn opt_str(
    obj: &serde_json::Map<String, Value>,
    key: &str,
    prefix: &str,
    errs: &mut Vec<FieldError>,
) -> Option<String> {
    opt_field(obj, key, prefix, errs, "string", |v| {
        v.as_str().map(str::to_owned)
    })
}

/// Reads a string field that must not be blank, recording `NotBlank` when it is missing or blank (after any
/// `InvalidType`, as amoCRM reports both).
pub fn required_str(
    obj: &serde_json::Map<String, Value>,
    key: &str,
    errs: &mut Vec<FieldError>,
) -> Option<String> {
    let s = opt_str(obj, key, "", errs).filter(|s| !s.trim().is_empty());
    if s.is_none() {
        errs.push(FieldError::required(key));
    }
    s
}

/// Reads an optional bool field.
pub fn opt_bool(
    obj: &serde_json::Map<String, Value>,
    key: &str,
    prefix: &str,
    errs: &mut Vec<FieldError>,
) -> Option<bool> {
    opt_field(obj, key, prefix, errs, "bool", Value::as_bool)
}

/// An absolute `http`/`https` URL with a host, as amoCRM accepts for links and webhook destinations.
pub fn is_web_url(s: &str) -> bool {
    url::Url::parse(s).is_ok_and(|u| matches!(u.scheme(), "http" | "https") && u.host().is_some())
}

/// Validates the item's `custom_fields_values` against `fields`; returns what to store (None: field not
/// given).
pub fn parse_values(
    fields: &BTreeMap<u64, CustomField>,
    obj: &serde_json::Map<String, Value>,
    prefix: &str,
    errs: &mut Vec<FieldError>,
) -> Option<Vec<FieldValues>> {
    let path = join(prefix, "custom_fields_values");
    let items = match obj.get("custom_fields_values") {
        None | Some(Value::Null) => return None,
        Some(Value::Array(a)) => a,
        Some(_) => {
            errs.push(FieldError::invalid_type(path, "array"));
            return None;
        }
    };
    if items.len() > MAX_FIELD_VALUES {
        errs.push(FieldError::new(
            "TooManyValues",
            path.clone(),
            format!("This collection should contain {MAX_FIELD_VALUES} elements or less."),
        ));
        return None;
    }
    let mut out: Vec<FieldValues> = Vec::new();
    for (i, item) in items.iter().enumerate() {
        let ip = format!("{path}.{i}");
        let Some(obj) = item.as_object() else {
            errs.push(FieldError::invalid_type(ip, "object"));
            continue;
        };
        let field = if let Some(idv) = obj.get("field_id").filter(|v| !v.is_null()) {
            match as_id(idv) {
                Some(id) => match fields.get(&id) {
                    Some(f) => f,
                    None => {
                        errs.push(FieldError::not_supported(format!("{ip}.field_id")));
                        continue;
                    }
                },
                None => {
                    errs.push(FieldError::invalid_type(format!("{ip}.field_id"), "int"));
                    continue;
                }
            }
        } else if let Some(code) = obj.get("field_code").filter(|v| !v.is_null()) {
            let found = code.as_str().and_then(|c| {
                fields.values().find(|f| {
                    f.code
                        .as_deref()
                        .is_some_and(|fc| fc.eq_ignore_ascii_case(c))
                })
            });
            match found {
                Some(f) => f,
                None => {
                    errs.push(FieldError::not_supported(format!("{ip}.field_code")));
                    continue;
                }
            }
        } else {
            errs.push(FieldError::required(format!("{ip}.field_id")));
            continue;
        };
        let values = match obj.get("values") {
            Some(Value::Array(a)) => a,
            Some(Value::Null) => {
                out.retain(|f| f.field_id != field.id);
                out.push(empty_values(field));
                continue;
            }
            Some(_) => {
                errs.push(FieldError::invalid_type(format!("{ip}.values"), "array"));
                continue;
            }
            None => {
                errs.push(FieldError::required(format!("{ip}.values")));
                continue;
            }
        };
        let mut stored = Vec::new();
        for (j, val) in values.iter().enumerate() {
            let vp = format!("{ip}.values.{j}");
            if let Some(v) = parse_value(field, val, &vp, errs) {
                stored.push(v);
            }
        }
        out.retain(|f| f.field_id != field.id);
        out.push(FieldValues {
            values: stored,
            ..empty_values(field)
        });
    }
    Some(out)
}

fn empty_values(field: &CustomField) -> FieldValues {
    FieldValues {
        field_id: field.id,
        field_name: field.name.clone(),
        field_code: field.code.clone(),
        field_type: field.type_.clone(),
        values: Vec::new(),
    }
}

fn parse_value(
    field: &CustomField,
    val: &Value,
    vp: &str,
    errs: &mut Vec<FieldError>,
) -> Option<FieldValue> {
    let Some(obj) = val.as_object() else {
        errs.push(FieldError::invalid_type(vp, "object"));
        return None;
    };
    let value = obj.get("value").cloned().unwrap_or(Value::Null);
    let value_path = format!("{vp}.value");
    let mut enum_id = None;
    let mut enum_code = None;
    match field.type_.as_str() {
        "text" | "textarea" | "streetaddress" => match &value {
            Value::String(_) => {}
            Value::Number(_) => {}
            _ => {
                errs.push(FieldError::invalid_type(value_path, "string"));
                return None;
            }
        },
        "numeric" | "price" | "monetary" => {
            let ok = match &value {
                Value::Number(_) => true,
                Value::String(s) => s.trim().parse::<f64>().is_ok(),
                _ => false,
            };
            if !ok {
                errs.push(FieldError::invalid_type(value_path, "numeric"));
                return None;
            }
        }
        "url" if !value.as_str().is_some_and(is_web_url) => {
            errs.push(FieldError::invalid_url(value_path));
            return None;
        }
        "checkbox" if !value.is_boolean() => {
            errs.push(FieldError::invalid_type(value_path, "bool"));
            return None;
        }
        "date" | "date_time" | "birthday" if as_int(&value).is_none() => {
            errs.push(FieldError::invalid_type(value_path, "int"));
            return None;
        }
        "select" | "multiselect" | "radiobutton" | "category" => {
            let by_id = obj
                .get("enum_id")
                .and_then(as_id)
                .and_then(|id| field.enums.iter().find(|e| e.id == id));
            let by_value = value
                .as_str()
                .and_then(|s| field.enums.iter().find(|e| e.value == s));
            match by_id.or(by_value) {
                Some(e) => {
                    enum_id = Some(e.id);
                    return Some(FieldValue {
                        value: Value::String(e.value.clone()),
                        enum_id,
                        enum_code,
                    });
                }
                None => {
                    errs.push(FieldError::not_supported(format!("{vp}.enum_id")));
                    return None;
                }
            }
        }
        "multitext" => {
            if !value.is_string() {
                errs.push(FieldError::invalid_type(value_path, "string"));
                return None;
            }
            let code = match obj.get("enum_code") {
                None | Some(Value::Null) => field.enums.first().map(|e| e.value.clone()),
                Some(Value::String(c)) => Some(c.to_ascii_uppercase()),
                Some(_) => {
                    errs.push(FieldError::invalid_type(
                        format!("{vp}.enum_code"),
                        "string",
                    ));
                    return None;
                }
            };
            match code.and_then(|c| field.enums.iter().find(|e| e.value == c)) {
                Some(e) => {
                    enum_id = Some(e.id);
                    enum_code = Some(e.value.clone());
                }
                None => {
                    errs.push(FieldError::not_supported(format!("{vp}.enum_code")));
                    return None;
                }
            }
        }
        _ => {}
    }
    Some(FieldValue {
        value,
        enum_id,
        enum_code,
    })
}

/// Merges patched field values into stored ones (fields given replace, others stay).
pub fn merge(stored: &mut Vec<FieldValues>, patch: Vec<FieldValues>) {
    for f in patch {
        stored.retain(|s| s.field_id != f.field_id);
        if !f.values.is_empty() {
            stored.push(f);
        }
    }
}

/// Whether `name` or any of the field values contains the lower-cased `needle`, ignoring case: amoCRM's
/// `query` search.
pub fn matches(name: &str, values: &[FieldValues], needle: &str) -> bool {
    name.to_lowercase().contains(needle)
        || values.iter().any(|f| {
            f.values
                .iter()
                .any(|v| v.as_text().to_lowercase().contains(needle))
        })
}

/// The v4 JSON of stored values (`null` when none, as amoCRM does).
pub fn values_json(values: &[FieldValues]) -> Value {
    if values.is_empty() {
        return Value::Null;
    }
    Value::Array(
        values
            .iter()
            .map(|f| {
                serde_json::json!({
                    "field_id": f.field_id,
                    "field_name": f.field_name,
                    "field_code": f.field_code,
                    "field_type": f.field_type,
                    "values": f.values.iter().map(|v| {
                        let mut o = serde_json::Map::new();
                        o.insert("value".to_owned(), v.value.clone());
                        if let Some(e) = v.enum_id { o.insert("enum_id".to_owned(), e.into()); }
                        if let Some(c) = &v.enum_code { o.insert("enum_code".to_owned(), c.clone().into()); }
                        Value::Object(o)
                    }).collect::<Vec<_>>(),
                })
            })
            .collect(),
    )
}
