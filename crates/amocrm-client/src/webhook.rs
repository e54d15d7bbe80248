//! amoCRM webhook bodies (form-encoded PHP-style brackets, all values strings) into typed events.
//!
//! Both formats are accepted: the full account webhook (`leads[status][0][id|name|price|custom_fields…]`) and
//! the compact Digital Pipeline one (`id, status_id, pipeline_id, old_status_id, old_pipeline_id` only). One body
//! may carry several entities and actions; companies arrive under `contacts` with `type=company`. The form is
//! parsed by `serde_qs` into a generic tree, then read leniently: only an entity's `id` (and a present
//! `account[id]`) must be numeric. Bodies are bounded in size and nesting; no input makes this panic.

use std::collections::BTreeMap;
use std::fmt;

use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};

/// Largest body parsed by [`parse`] (real bodies are a few KiB; amoCRM batches at most a few hundred entities).
pub const MAX_BODY_BYTES: usize = 1024 * 1024;
/// Deepest bracket nesting parsed (`leads[status][0][custom_fields][0][values][0][value]` is 7).
pub const MAX_DEPTH: usize = 10;

/// A parsed webhook: the account it claims to come from and what happened.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WebhookPayload {
    /// `account[id]` (newer senders only).
    pub account_id: Option<u64>,
    /// `account[subdomain]`.
    pub subdomain: Option<String>,
    /// Lead events, in body order (action by action).
    pub events: Vec<LeadEvent>,
    /// Everything that is not a lead (contacts, companies, tasks, unsorted …): kept, not interpreted.
    pub other: Vec<OtherEntityEvent>,
}

/// What happened to a lead.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum LeadAction {
    /// `leads[add]`: a lead was created.
    Add,
    /// `leads[update]`: fields changed.
    Update,
    /// `leads[status]`: moved to another stage or pipeline.
    Status,
    /// `leads[delete]`: deleted.
    Delete,
    /// `leads[responsible]`: the responsible user changed.
    Responsible,
    /// `leads[note]`: a note was added to the lead.
    Note,
    /// `leads[restore]`: restored from the bin.
    Restore,
    /// An action this parser does not know (kept so nothing is silently dropped).
    Other(String),
}

impl LeadAction {
    fn from_key(key: &str) -> Self {
        match key {
            "add" => Self::Add,
            "update" => Self::Update,
            "status" => Self::Status,
            "delete" => Self::Delete,
            "responsible" => Self::Responsible,
            "note" => Self::Note,
            "restore" => Self::Restore,
            other => Self::Other(other.to_owned()),
        }
    }

    /// The action as amoCRM names it (`status`, `add` …).
    pub fn as_str(&self) -> &str {
        match self {
            Self::Add => "add",
            Self::Update => "update",
            Self::Status => "status",
            Self::Delete => "delete",
            Self::Responsible => "responsible",
            Self::Note => "note",
            Self::Restore => "restore",
            Self::Other(s) => s,
        }
    }
}

impl fmt::Display for LeadAction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One lead event. Fields absent from the body (compact format, deletes) or empty (`price=`) are `None`.
/// For `note`, `lead_id` is the note's `element_id`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeadEvent {
    /// What happened to the lead.
    pub action: LeadAction,
    /// The lead it concerns.
    pub lead_id: u64,
    /// The pipeline stage.
    pub status_id: Option<u64>,
    /// The stage before a move (`status` events).
    pub old_status_id: Option<u64>,
    /// The pipeline it belongs to.
    pub pipeline_id: Option<u64>,
    /// The pipeline before a move between pipelines.
    pub old_pipeline_id: Option<u64>,
    /// Sale value in whole currency units.
    pub price: Option<i64>,
    /// Name as amoCRM shows it.
    pub name: Option<String>,
    /// `last_modified` (or `updated_at`), unix seconds.
    pub last_modified: Option<i64>,
    /// The entity's own `account_id`, to cross-check with the account block.
    pub account_id: Option<u64>,
    /// `custom_fields[i][id]` with its values as strings (`values[j][value]` or bare `values[j]`).
    pub custom_fields: Vec<(u64, Vec<String>)>,
}

/// A non-lead entity event: `entity` is `contact`, `company`, `task`, `unsorted` …
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OtherEntityEvent {
    /// Entity kind (`contact`, `company`, `task`, `unsorted`…).
    pub entity: String,
    /// The event (`add`, `update`, `delete`…).
    pub action: String,
    /// amoCRM's id of this other entity event.
    pub id: Option<u64>,
    /// A contact's `PHONE` values (v2 `custom_fields` with `code`), as typed in amoCRM.
    pub phones: Vec<String>,
    /// A contact's `EMAIL` values.
    pub emails: Vec<String>,
    /// The amoCRM user responsible for it.
    pub responsible_user_id: Option<u64>,
}

/// Why a body is not an amoCRM webhook.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WebhookParseError {
    /// Larger than the caller's limit: refused before parsing, so a huge body costs nothing.
    #[error("webhook body larger than {limit} bytes")]
    TooLarge {
        /// The size limit in bytes.
        limit: usize,
    },
    #[error("webhook body is not a bracket form: {0}")]
    /// Not a form-encoded body (the parser's message).
    Malformed(String),
    #[error("body carries no account and no entity")]
    /// A form body with no entity events in it.
    NotAWebhook,
    /// An id field that is not a number.
    #[error("webhook field {path} is not a valid id")]
    InvalidField {
        /// The bracket path of the unreadable field.
        path: String,
    },
}

/// Parses a webhook body of at most [`MAX_BODY_BYTES`].
pub fn parse(body: &[u8]) -> Result<WebhookPayload, WebhookParseError> {
    parse_with_limit(body, MAX_BODY_BYTES)
}

/// [`parse`] with another size limit.
pub fn parse_with_limit(body: &[u8], limit: usize) -> Result<WebhookPayload, WebhookParseError> {
    if body.len() > limit {
        return Err(WebhookParseError::TooLarge { limit });
    }
    let tree: Tree = serde_qs::Config::new()
        .max_depth(MAX_DEPTH)
        .use_form_encoding(true)
        .deserialize_bytes(body)
        .map_err(|e| WebhookParseError::Malformed(short(&e.to_string())))?;
    let Tree::Node(top) = tree else {
        return Err(WebhookParseError::NotAWebhook);
    };

    let mut out = WebhookPayload::default();
    for (key, value) in &top {
        match key.as_str() {
            "account" => read_account(value, &mut out)?,
            "leads" => read_leads(value, &mut out)?,
            "contacts" => read_others(value, None, &mut out)?,
            _ => {
                if value.as_node().is_some() {
                    read_others(value, Some(key), &mut out)?;
                }
            }
        }
    }
    if out.account_id.is_none()
        && out.subdomain.is_none()
        && out.events.is_empty()
        && out.other.is_empty()
    {
        return Err(WebhookParseError::NotAWebhook);
    }
    Ok(out)
}

fn read_account(value: &Tree, out: &mut WebhookPayload) -> Result<(), WebhookParseError> {
    let Some(obj) = value.as_node() else {
        return Err(WebhookParseError::Malformed("account is not a map".into()));
    };
    out.account_id = strict_id(obj.get("id"), "account[id]")?;
    out.subdomain = obj
        .get("subdomain")
        .and_then(text)
        .filter(|s| !s.is_empty());
    Ok(())
}

fn read_leads(value: &Tree, out: &mut WebhookPayload) -> Result<(), WebhookParseError> {
    let Some(actions) = value.as_node() else {
        return Err(WebhookParseError::Malformed("leads is not a map".into()));
    };
    for (action_key, list) in actions {
        let action = LeadAction::from_key(action_key);
        for (i, item) in items(list).into_iter().enumerate() {
            let Some(item) = item.as_node() else {
                return Err(WebhookParseError::Malformed(format!(
                    "leads[{action_key}][{i}] is not a map"
                )));
            };
            // A note event nests the note; the lead is its element.
            let note = item.get("note").and_then(Tree::as_node);
            let id_value = match (&action, note) {
                (LeadAction::Note, Some(n)) => n.get("element_id").or_else(|| item.get("id")),
                _ => item.get("id"),
            };
            let path = format!("leads[{action_key}][{i}][id]");
            let Some(lead_id) = strict_id(id_value, &path)? else {
                return Err(WebhookParseError::InvalidField { path });
            };
            let src = note.filter(|_| action == LeadAction::Note).unwrap_or(item);
            out.events.push(LeadEvent {
                action: action.clone(),
                lead_id,
                status_id: lenient_u64(item.get("status_id")),
                old_status_id: lenient_u64(item.get("old_status_id")),
                pipeline_id: lenient_u64(item.get("pipeline_id")),
                old_pipeline_id: lenient_u64(item.get("old_pipeline_id")),
                price: lenient_i64(item.get("price")),
                name: item.get("name").and_then(text),
                last_modified: lenient_i64(src.get("last_modified"))
                    .or_else(|| lenient_i64(src.get("updated_at"))),
                account_id: lenient_u64(src.get("account_id")),
                custom_fields: item
                    .get("custom_fields")
                    .map(custom_fields)
                    .unwrap_or_default(),
            });
        }
    }
    Ok(())
}

/// `contacts[...]` (entity from `type`, default contact) or another entity key (`task`, `unsorted` …).
fn read_others(
    value: &Tree,
    entity: Option<&str>,
    out: &mut WebhookPayload,
) -> Result<(), WebhookParseError> {
    let Some(actions) = value.as_node() else {
        return Err(WebhookParseError::Malformed(
            "entity block is not a map".into(),
        ));
    };
    for (action, list) in actions {
        for item in items(list) {
            let Some(item) = item.as_node() else {
                continue;
            };
            let entity = match entity {
                Some(e) => e.to_owned(),
                None => match item.get("type").and_then(text).as_deref() {
                    Some("company") => "company".to_owned(),
                    _ => "contact".to_owned(),
                },
            };
            let coded = item
                .get("custom_fields")
                .map(coded_fields)
                .unwrap_or_default();
            let values_of = |code: &str| -> Vec<String> {
                coded
                    .iter()
                    .filter(|(c, _)| c.eq_ignore_ascii_case(code))
                    .flat_map(|(_, v)| v.clone())
                    .collect()
            };
            out.other.push(OtherEntityEvent {
                entity,
                action: action.clone(),
                id: lenient_u64(item.get("id")),
                phones: values_of("PHONE"),
                emails: values_of("EMAIL"),
                responsible_user_id: lenient_u64(item.get("responsible_user_id")),
            });
        }
    }
    Ok(())
}

/// `custom_fields` by their `code` (contacts' `PHONE`, `EMAIL`): `(code, values)`.
fn coded_fields(value: &Tree) -> Vec<(String, Vec<String>)> {
    items(value)
        .into_iter()
        .filter_map(Tree::as_node)
        .filter_map(|field| {
            let code = field.get("code").and_then(text)?;
            Some((
                code,
                field.get("values").map(field_values).unwrap_or_default(),
            ))
        })
        .collect()
}

fn field_values(v: &Tree) -> Vec<String> {
    match v {
        // `values[value]=…&values[enum]=…` (one value written as a map)
        Tree::Node(m) if m.contains_key("value") => {
            m.get("value").and_then(text).into_iter().collect()
        }
        v => items(v)
            .into_iter()
            .filter_map(|v| match v {
                Tree::Node(m) => m.get("value").and_then(text),
                leaf => text(leaf),
            })
            .collect(),
    }
}

fn custom_fields(value: &Tree) -> Vec<(u64, Vec<String>)> {
    items(value)
        .into_iter()
        .filter_map(Tree::as_node)
        .filter_map(|field| {
            let id = lenient_u64(field.get("id"))?;
            Some((
                id,
                field.get("values").map(field_values).unwrap_or_default(),
            ))
        })
        .collect()
}

/// The elements of a bracket list (`[0]`, `[1]` … in numeric order, then other keys); a bare leaf is one element.
fn items(value: &Tree) -> Vec<&Tree> {
    match value {
        Tree::Node(m) => {
            let mut entries: Vec<(&String, &Tree)> = m.iter().collect();
            entries.sort_by_key(|(k, _)| {
                (
                    k.parse::<u64>().map_or(1, |_| 0),
                    k.parse::<u64>().unwrap_or(0),
                    k.len(),
                )
            });
            entries.into_iter().map(|(_, v)| v).collect()
        }
        Tree::Leaf(_) => vec![value],
    }
}

fn text(value: &Tree) -> Option<String> {
    match value {
        Tree::Leaf(s) => Some(s.clone()),
        Tree::Node(_) => None,
    }
}

fn lenient_u64(value: Option<&Tree>) -> Option<u64> {
    text(value?)?.trim().parse().ok()
}

fn lenient_i64(value: Option<&Tree>) -> Option<i64> {
    let s = text(value?)?;
    let s = s.trim();
    s.parse().ok().or_else(|| {
        s.parse::<f64>()
            .ok()
            .filter(|f| f.is_finite() && f.abs() < 9.0e18)
            .map(|f| f.round() as i64)
    })
}

/// An id that, when present and non-empty, must be numeric.
fn strict_id(value: Option<&Tree>, path: &str) -> Result<Option<u64>, WebhookParseError> {
    match value.and_then(text) {
        None => Ok(None),
        Some(s) if s.trim().is_empty() => Ok(None),
        Some(s) => s
            .trim()
            .parse()
            .map(Some)
            .map_err(|_| WebhookParseError::InvalidField {
                path: path.to_owned(),
            }),
    }
}

fn short(s: &str) -> String {
    crate::error::truncate(s, 200)
}

/// The parsed form as a plain tree. serde_qs turns all-integer keys into sequences and rejects gaps
/// (`linked_leads_id[9982719][ID]`), so nodes are always requested as maps: a leaf arrives as `{"": value}`.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Tree {
    Leaf(String),
    Node(BTreeMap<String, Tree>),
}

impl Tree {
    fn as_node(&self) -> Option<&BTreeMap<String, Tree>> {
        match self {
            Tree::Node(m) => Some(m),
            Tree::Leaf(_) => None,
        }
    }
}

impl<'de> Deserialize<'de> for Tree {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_map(TreeVisitor)
    }
}

struct TreeVisitor;

impl<'de> Visitor<'de> for TreeVisitor {
    type Value = Tree;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a bracket form value")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Tree, A::Error> {
        let mut node = BTreeMap::new();
        while let Some(key) = map.next_key::<String>()? {
            let value = if key.is_empty() {
                Tree::Leaf(map.next_value::<Leaf>()?.0)
            } else {
                map.next_value::<Tree>()?
            };
            node.insert(key, value);
        }
        // `key=` (no value) arrives as an empty map: it is an empty string, as amoCRM meant (`price=`).
        if node.is_empty() {
            return Ok(Tree::Leaf(String::new()));
        }
        if node.len() == 1
            && let Some(Tree::Leaf(_)) = node.get("")
        {
            return Ok(node.remove("").unwrap_or(Tree::Leaf(String::new())));
        }
        Ok(Tree::Node(node))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Tree, A::Error> {
        let mut node = BTreeMap::new();
        let mut i = 0u64;
        while let Some(value) = seq.next_element::<Tree>()? {
            node.insert(i.to_string(), value);
            i += 1;
        }
        Ok(Tree::Node(node))
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Tree, E> {
        Ok(Tree::Leaf(v.to_owned()))
    }

    fn visit_bytes<E: de::Error>(self, v: &[u8]) -> Result<Tree, E> {
        Ok(Tree::Leaf(String::from_utf8_lossy(v).into_owned()))
    }

    fn visit_unit<E: de::Error>(self) -> Result<Tree, E> {
        Ok(Tree::Leaf(String::new()))
    }
}

/// A value that must be a string (the `""` entry serde_qs uses to present a leaf as a map).
struct Leaf(String);

impl<'de> Deserialize<'de> for Leaf {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct LeafVisitor;
        impl<'de> Visitor<'de> for LeafVisitor {
            type Value = Leaf;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Leaf, E> {
                Ok(Leaf(v.to_owned()))
            }
            fn visit_bytes<E: de::Error>(self, v: &[u8]) -> Result<Leaf, E> {
                Ok(Leaf(String::from_utf8_lossy(v).into_owned()))
            }
            fn visit_unit<E: de::Error>(self) -> Result<Leaf, E> {
                Ok(Leaf(String::new()))
            }
        }
        d.deserialize_str(LeafVisitor)
    }
}

#[cfg(test)]
mod tests {
    #![expect(clippy::unwrap_used, reason = "tests fail loudly on unexpected errors")]
    use super::*;

    #[test]
    fn the_compact_digital_pipeline_example_is_read() {
        let body = "leads[status][0][id]=25399013&leads[status][0][status_id]=61234570&leads[status][0][pipeline_id]=7001234\
                    &leads[status][0][old_status_id]=61234567&leads[status][0][old_pipeline_id]=7001234\
                    &account[id]=31000001&account[subdomain]=sellerone";
        let p = parse(body.as_bytes()).unwrap();
        assert_eq!(p.account_id, Some(31_000_001));
        assert_eq!(p.subdomain.as_deref(), Some("sellerone"));
        assert_eq!(
            p.events,
            vec![LeadEvent {
                action: LeadAction::Status,
                lead_id: 25_399_013,
                status_id: Some(61_234_570),
                old_status_id: Some(61_234_567),
                pipeline_id: Some(7_001_234),
                old_pipeline_id: Some(7_001_234),
                price: None,
                name: None,
                last_modified: None,
                account_id: None,
                custom_fields: vec![],
            }]
        );
    }

    #[test]
    fn several_entities_and_actions_in_one_body_are_all_read() {
        let body = "leads[add][0][id]=1&leads[add][0][price]=&leads[add][1][id]=2&leads[add][1][price]=150000\
                    &leads[status][0][id]=3&leads[status][0][status_id]=142&leads[status][0][pipeline_id]=7\
                    &contacts[add][0][id]=10&contacts[add][0][type]=contact\
                    &contacts[add][1][id]=11&contacts[add][1][type]=company\
                    &task[add][0][id]=99&account[subdomain]=x";
        let p = parse(body.as_bytes()).unwrap();
        let ids: Vec<(String, u64)> = p
            .events
            .iter()
            .map(|e| (e.action.to_string(), e.lead_id))
            .collect();
        assert_eq!(
            ids,
            vec![("add".into(), 1), ("add".into(), 2), ("status".into(), 3)]
        );
        assert_eq!(p.events[0].price, None);
        assert_eq!(p.events[1].price, Some(150_000));
        assert_eq!(p.account_id, None);
        let others: Vec<(&str, &str, Option<u64>)> = p
            .other
            .iter()
            .map(|o| (o.entity.as_str(), o.action.as_str(), o.id))
            .collect();
        assert_eq!(
            others,
            vec![
                ("contact", "add", Some(10)),
                ("company", "add", Some(11)),
                ("task", "add", Some(99))
            ]
        );
    }

    #[test]
    fn custom_field_values_in_every_shape_are_read() {
        let body = "leads[update][0][id]=5\
                    &leads[update][0][custom_fields][0][id]=1&leads[update][0][custom_fields][0][values][0][value]=a\
                    &leads[update][0][custom_fields][0][values][1][value]=b\
                    &leads[update][0][custom_fields][1][id]=2&leads[update][0][custom_fields][1][values][0]=1542067200\
                    &leads[update][0][custom_fields][2][id]=3&leads[update][0][custom_fields][2][values][value]=2\
                    &leads[update][0][custom_fields][2][values][enum]=566642";
        let p = parse(body.as_bytes()).unwrap();
        assert_eq!(
            p.events[0].custom_fields,
            vec![
                (1, vec!["a".to_owned(), "b".to_owned()]),
                (2, vec!["1542067200".to_owned()]),
                (3, vec!["2".to_owned()])
            ]
        );
    }

    #[test]
    fn a_note_event_points_at_its_lead() {
        let body = "leads[note][0][note][element_id]=15320411&leads[note][0][note][element_type]=2\
                    &leads[note][0][note][id]=4600471&leads[note][0][note][updated_at]=1726580329\
                    &account[id]=32720107";
        let p = parse(body.as_bytes()).unwrap();
        assert_eq!(p.events[0].action, LeadAction::Note);
        assert_eq!(p.events[0].lead_id, 15_320_411);
        assert_eq!(p.events[0].last_modified, Some(1_726_580_329));
    }

    #[test]
    fn bodies_that_are_not_webhooks_are_refused() {
        assert_eq!(parse(b""), Err(WebhookParseError::NotAWebhook));
        assert_eq!(parse(b"foo=bar"), Err(WebhookParseError::NotAWebhook));
        assert!(matches!(
            parse(b"leads=1"),
            Err(WebhookParseError::Malformed(_))
        ));
        assert!(matches!(
            parse(b"account=1"),
            Err(WebhookParseError::Malformed(_))
        ));
        assert!(matches!(
            parse(b"leads[status][0][id]=abc&account[id]=1"),
            Err(WebhookParseError::InvalidField { .. })
        ));
        assert!(matches!(
            parse(b"leads[status][0][name]=no-id"),
            Err(WebhookParseError::InvalidField { .. })
        ));
        assert!(matches!(
            parse(b"account[id]=12x&account[subdomain]=a"),
            Err(WebhookParseError::InvalidField { .. })
        ));
        assert_eq!(
            parse_with_limit(b"account[id]=1", 4),
            Err(WebhookParseError::TooLarge { limit: 4 })
        );
    }
}
