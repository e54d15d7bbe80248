//! amoCRM's webhook bodies as they travel: `application/x-www-form-urlencoded` with bracketed keys
//! (`leads[status][0][id]=…`). Public captures come either decoded (a JSON tree, as Kommo's docs print
//! them) or as a form stored unescaped (brackets and Cyrillic raw); tests of a webhook parser turn both
//! back into wire bytes with these two functions.

use serde_json::Value;

/// The form body amoCRM would send for a decoded webhook: each leaf becomes one `key[sub][0]=value`
/// pair, in the tree's order; numbers and booleans are written as JSON writes them.
pub fn from_json(v: &Value) -> String {
    fn walk(prefix: &str, v: &Value, out: &mut Vec<(String, String)>) {
        match v {
            Value::Object(m) => {
                for (k, v) in m {
                    let key = if prefix.is_empty() {
                        k.clone()
                    } else {
                        format!("{prefix}[{k}]")
                    };
                    walk(&key, v, out);
                }
            }
            Value::Array(a) => {
                for (i, v) in a.iter().enumerate() {
                    walk(&format!("{prefix}[{i}]"), v, out);
                }
            }
            Value::String(s) => out.push((prefix.to_owned(), s.clone())),
            other => out.push((prefix.to_owned(), other.to_string())),
        }
    }
    let mut pairs = Vec::new();
    walk("", v, &mut pairs);
    serde_urlencoded::to_string(&pairs).unwrap_or_default()
}

/// Percent-encodes what a form encoder would (non-ASCII, brackets, `:` `/` `?` …) in a capture stored
/// unescaped, keeping `=`, `&`, `+` (a space) and existing `%XX` escapes.
pub fn percent_encode(raw: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(raw.len());
    for &b in raw {
        if b.is_ascii_alphanumeric() || b"-_.~=&+%".contains(&b) {
            out.push(b);
        } else {
            out.extend_from_slice(format!("%{b:02X}").as_bytes());
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tree_becomes_bracketed_pairs_and_a_raw_capture_its_wire_bytes() {
        let v =
            serde_json::json!({"leads": {"status": [{"id": "7", "price": 10, "name": "Заказ 1"}]}});
        let form = from_json(&v);
        let pairs: Vec<(String, String)> = serde_urlencoded::from_str(&form).expect("a form");
        assert_eq!(
            pairs,
            vec![
                ("leads[status][0][id]".to_owned(), "7".to_owned()),
                ("leads[status][0][name]".to_owned(), "Заказ 1".to_owned()),
                ("leads[status][0][price]".to_owned(), "10".to_owned()),
            ]
        );
        let wire = percent_encode("leads[add][0][name]=Заказ+1&a=%20".as_bytes());
        assert_eq!(
            String::from_utf8(wire).expect("ASCII"),
            "leads%5Badd%5D%5B0%5D%5Bname%5D=%D0%97%D0%B0%D0%BA%D0%B0%D0%B7+1&a=%20"
        );
    }
}
