//! Marketplace orders as validated values: money in integer minor units, items, the buyer, the status.
//!
//! Parse, don't validate: an [`OrderDraft`] exists only if every field of the posted body was acceptable, and
//! [`OrderDraft::parse`] reports every bad field at once (field path → messages) so the API can answer one 422
//! with all of them. The draft's canonical JSON is what is stored and hashed for idempotency, so two bodies
//! that differ only in defaults or formatting (`"UZS"` vs omitted, `150000` vs `"150000.00"`) are the same order.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::ids::{SellerId, sha256_hex};
use super::status::OrderStatus;

/// Field path → messages, the shape of a 422's `details`.
pub type FieldErrors = BTreeMap<String, Vec<String>>;

/// The currency an order is in when the body names none.
pub const DEFAULT_CURRENCY: &str = "UZS";
/// Most items one order may carry.
pub const MAX_ITEMS: usize = 500;
/// Most tags one order may carry (amoCRM shows them on the lead).
pub const MAX_TAGS: usize = 20;
/// Largest amount accepted, in major units (far above any real order; keeps sums inside `i64`).
const MAX_MAJOR: i64 = 10_000_000_000_000;

/// An amount of money in minor units (1/100 of the currency unit: tiyin for UZS). Never a float.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Money(i64);

impl Money {
    pub fn from_minor(minor: i64) -> Self {
        Self(minor)
    }

    pub fn minor(self) -> i64 {
        self.0
    }

    /// Whole currency units, rounded half up: amoCRM's lead `price` is an integer.
    pub fn rounded_major(self) -> i64 {
        (self.0 + 50).div_euclid(100)
    }

    /// The amount as the API shows it: a JSON integer when it is whole, else a number with two decimals.
    pub fn to_json(self) -> Value {
        if self.0 % 100 == 0 {
            Value::from(self.0 / 100)
        } else {
            // Two decimals are exact enough in f64 for any amount below 2^53 minor units.
            serde_json::Number::from_f64(self.0 as f64 / 100.0)
                .map(Value::Number)
                .unwrap_or_else(|| Value::from(self.0 / 100))
        }
    }

    /// Reads a JSON number or numeric string with at most two decimals, at least 0.
    pub fn parse(v: &Value) -> Result<Self, String> {
        let text = match v {
            Value::Number(n) => n.to_string(),
            Value::String(s) => s.trim().to_owned(),
            _ => return Err("must be a number".to_owned()),
        };
        parse_decimal(&text).map(Self)
    }
}

impl fmt::Display for Money {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{:02}", self.0 / 100, (self.0 % 100).abs())
    }
}

fn parse_decimal(text: &str) -> Result<i64, String> {
    if text.starts_with('-') {
        return Err("must be at least 0".to_owned());
    }
    let (whole, frac) = match text.split_once('.') {
        Some((w, f)) => (w, f),
        None => (text, ""),
    };
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    if !digits(whole) || (!frac.is_empty() && !digits(frac)) || text.ends_with('.') {
        return Err("must be a plain decimal number like 150000 or 150000.50".to_owned());
    }
    // Trailing zeros beyond two places are harmless (150000.000); anything else is sub-minor precision.
    let frac = frac.trim_end_matches('0');
    if frac.len() > 2 {
        return Err("must have at most 2 decimal places".to_owned());
    }
    let whole: i64 = whole
        .parse()
        .ok()
        .filter(|w| *w <= MAX_MAJOR)
        .ok_or_else(|| format!("must be at most {MAX_MAJOR}"))?;
    let frac_minor: i64 = format!("{frac:0<2}").parse().unwrap_or(0);
    Ok(whole * 100 + frac_minor)
}

/// One line of an order.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderItem {
    pub product_id: String,
    pub name: String,
    pub quantity: i64,
    pub price: Money,
    /// The catalog SKU when it differs from `product_id` (absent from the stored body when not given, so
    /// older bodies keep their fingerprint).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sku: Option<String>,
}

impl OrderItem {
    /// The SKU the item is known by in the seller's catalog: its own, else the product id.
    pub fn sku(&self) -> &str {
        self.sku.as_deref().unwrap_or(&self.product_id)
    }

    /// Quantity × price.
    pub fn line_total(&self) -> Money {
        Money::from_minor(self.price.minor().saturating_mul(self.quantity))
    }
}

/// How the order reaches the buyer.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Delivery {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub price: Option<Money>,
}

/// How the buyer pays.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Payment {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<String>,
}

/// The buyer. With the seed-style `customer_id` only, `name` is `None` and the contact is named from the id.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Customer {
    pub id: Option<String>,
    pub name: Option<String>,
    pub phone: Option<String>,
    pub email: Option<String>,
    pub company: Option<String>,
}

impl Customer {
    /// The contact's name in amoCRM: the buyer's name, or "Mijoz #{id}" for a seed-style `customer_id`.
    pub fn display_name(&self) -> String {
        match (&self.name, &self.id) {
            (Some(n), _) => n.clone(),
            (None, Some(id)) => format!("Mijoz #{id}"),
            (None, None) => "Mijoz".to_owned(),
        }
    }
}

/// A validated order body: everything the marketplace posted, normalised.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderDraft {
    #[serde(deserialize_with = "seller_id_serde::deserialize")]
    pub seller_id: SellerId,
    pub order_number: String,
    pub total_amount: Money,
    pub currency: String,
    pub status: OrderStatus,
    pub items: Vec<OrderItem>,
    pub customer: Customer,
    pub url: Option<String>,
    pub tags: Vec<String>,
    pub comment: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delivery: Option<Delivery>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payment: Option<Payment>,
    /// Where the order was placed (the marketplace's storefront name): a tag, and a field if mapped.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
}

/// Reads a stored seller id back through [`SellerId::parse`] (kept here so `ids.rs` stays untouched).
mod seller_id_serde {
    use serde::{Deserialize, Deserializer};

    use super::SellerId;

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<SellerId, D::Error> {
        let s = String::deserialize(d)?;
        SellerId::parse(&s).map_err(serde::de::Error::custom)
    }
}

/// Collects field errors while a body is read.
struct Errors(FieldErrors);

impl Errors {
    fn add(&mut self, field: impl Into<String>, msg: impl Into<String>) {
        self.0.entry(field.into()).or_default().push(msg.into());
    }
}

/// A string field: trimmed, non-empty when present, at most `max` characters, no control characters.
fn text(
    errs: &mut Errors,
    obj: &serde_json::Map<String, Value>,
    key: &str,
    path: &str,
    max: usize,
    required: bool,
) -> Option<String> {
    match obj.get(key) {
        None | Some(Value::Null) => {
            if required {
                errs.add(path, "is required");
            }
            None
        }
        Some(Value::String(s)) => check_text(errs, path, s, max),
        Some(_) => {
            errs.add(path, "must be a string");
            None
        }
    }
}

fn check_text(errs: &mut Errors, path: &str, s: &str, max: usize) -> Option<String> {
    let s = s.trim();
    if s.is_empty() {
        errs.add(path, "must not be empty");
        return None;
    }
    if s.chars().count() > max {
        errs.add(path, format!("must be at most {max} characters"));
        return None;
    }
    if s.chars().any(|c| c.is_control() && c != '\n' && c != '\t') {
        errs.add(path, "must not contain control characters");
        return None;
    }
    Some(s.to_owned())
}

/// An identifier that may arrive as a string or an integer (seed data uses both).
fn ident(errs: &mut Errors, v: Option<&Value>, path: &str, required: bool) -> Option<String> {
    match v {
        None | Some(Value::Null) => {
            if required {
                errs.add(path, "is required");
            }
            None
        }
        Some(Value::Number(n)) if n.is_u64() || n.is_i64() => Some(n.to_string()),
        Some(Value::String(s)) => {
            let s = check_text(errs, path, s, 64)?;
            if s.chars().any(char::is_whitespace) {
                errs.add(path, "must not contain spaces");
                return None;
            }
            Some(s)
        }
        Some(_) => {
            errs.add(path, "must be a string or an integer");
            None
        }
    }
}

fn valid_phone(p: &str) -> bool {
    let digits = p.chars().filter(char::is_ascii_digit).count();
    let allowed = p.chars().enumerate().all(|(i, c)| {
        c.is_ascii_digit() || matches!(c, ' ' | '-' | '(' | ')') || (c == '+' && i == 0)
    });
    allowed && (7..=15).contains(&digits)
}

fn valid_email(e: &str) -> bool {
    let Some((local, domain)) = e.split_once('@') else {
        return false;
    };
    !local.is_empty()
        && !domain.contains('@')
        && domain.contains('.')
        && !domain.starts_with('.')
        && !domain.ends_with('.')
        && !e.chars().any(|c| c.is_whitespace() || c.is_control())
        && e.len() <= 254
}

impl OrderDraft {
    /// Reads a posted order body, reporting every invalid field (`items[2].quantity`, `customer.email` …).
    pub fn parse(body: &Value) -> Result<Self, FieldErrors> {
        let mut errs = Errors(FieldErrors::new());
        let Some(obj) = body.as_object() else {
            errs.add("body", "must be a JSON object");
            return Err(errs.0);
        };

        let seller_id = match obj.get("seller_id") {
            None | Some(Value::Null) => {
                errs.add("seller_id", "is required");
                None
            }
            Some(Value::String(s)) => match SellerId::parse(s) {
                Ok(id) => Some(id),
                Err(m) => {
                    errs.add("seller_id", m);
                    None
                }
            },
            Some(n @ Value::Number(_))
                if let Some(n) = super::whole_number(n).filter(|n| *n >= 0) =>
            {
                SellerId::parse(&n.to_string()).ok()
            }
            Some(_) => {
                errs.add("seller_id", "must be a string");
                None
            }
        };
        let order_number = ident(&mut errs, obj.get("order_number"), "order_number", true);

        let total_amount = match obj.get("total_amount") {
            None | Some(Value::Null) => {
                errs.add("total_amount", "is required");
                None
            }
            Some(v) => Money::parse(v)
                .map_err(|m| errs.add("total_amount", m))
                .ok(),
        };

        let currency = match obj.get("currency") {
            None | Some(Value::Null) => Some(DEFAULT_CURRENCY.to_owned()),
            Some(Value::String(s)) => {
                let c = s.trim().to_ascii_uppercase();
                if c.len() == 3 && c.bytes().all(|b| b.is_ascii_uppercase()) {
                    Some(c)
                } else {
                    errs.add(
                        "currency",
                        "must be a three-letter ISO 4217 code such as UZS",
                    );
                    None
                }
            }
            Some(_) => {
                errs.add("currency", "must be a string");
                None
            }
        };

        let status = match obj.get("status") {
            None | Some(Value::Null) => Some(OrderStatus::Pending),
            Some(Value::String(s)) => OrderStatus::parse(s.trim()).or_else(|| {
                errs.add("status", status_message());
                None
            }),
            Some(_) => {
                errs.add("status", status_message());
                None
            }
        };

        let items = Self::parse_items(&mut errs, obj.get("items"));
        let customer = Self::parse_customer(&mut errs, obj);

        let url = match text(&mut errs, obj, "url", "url", 2048, false) {
            Some(u) => match url::Url::parse(&u) {
                Ok(parsed)
                    if matches!(parsed.scheme(), "http" | "https") && parsed.host().is_some() =>
                {
                    Some(u)
                }
                _ => {
                    errs.add("url", "must be an http or https URL");
                    None
                }
            },
            None => None,
        };

        let mut tags = Vec::new();
        match obj.get("tags") {
            None | Some(Value::Null) => {}
            Some(Value::Array(list)) => {
                if list.len() > MAX_TAGS {
                    errs.add("tags", format!("must hold at most {MAX_TAGS} tags"));
                }
                for (i, t) in list.iter().take(MAX_TAGS).enumerate() {
                    let path = format!("tags[{i}]");
                    match t {
                        Value::String(s) => {
                            if let Some(s) = check_text(&mut errs, &path, s, 50)
                                && !tags.contains(&s)
                            {
                                tags.push(s);
                            }
                        }
                        _ => errs.add(path, "must be a string"),
                    }
                }
            }
            Some(_) => errs.add("tags", "must be a list of strings"),
        }

        let comment = text(&mut errs, obj, "comment", "comment", 2000, false);
        let delivery = Self::parse_delivery(&mut errs, obj.get("delivery"));
        let payment = Self::parse_payment(&mut errs, obj.get("payment"));
        let source = text(&mut errs, obj, "source", "source", 100, false);

        if !errs.0.is_empty() {
            return Err(errs.0);
        }
        match (
            seller_id,
            order_number,
            total_amount,
            currency,
            status,
            items,
            customer,
        ) {
            (
                Some(seller_id),
                Some(order_number),
                Some(total_amount),
                Some(currency),
                Some(status),
                Some(items),
                Some(customer),
            ) => Ok(Self {
                seller_id,
                order_number,
                total_amount,
                currency,
                status,
                items,
                customer,
                url,
                tags,
                comment,
                delivery,
                payment,
                source,
            }),
            _ => {
                // Every None above recorded an error; this is only reached if that invariant breaks.
                errs.add("body", "is invalid");
                Err(errs.0)
            }
        }
    }

    fn parse_items(errs: &mut Errors, v: Option<&Value>) -> Option<Vec<OrderItem>> {
        let list = match v {
            None | Some(Value::Null) => {
                errs.add("items", "is required");
                return None;
            }
            Some(Value::Array(list)) => list,
            Some(_) => {
                errs.add("items", "must be a list of items");
                return None;
            }
        };
        if list.is_empty() {
            errs.add("items", "must hold at least one item");
            return None;
        }
        if list.len() > MAX_ITEMS {
            errs.add("items", format!("must hold at most {MAX_ITEMS} items"));
            return None;
        }
        let before = errs.0.len();
        let mut items = Vec::with_capacity(list.len());
        for (i, item) in list.iter().enumerate() {
            let path = |f: &str| format!("items[{i}].{f}");
            let Some(obj) = item.as_object() else {
                errs.add(format!("items[{i}]"), "must be an object");
                continue;
            };
            let product_id = ident(errs, obj.get("product_id"), &path("product_id"), true);
            let name = text(errs, obj, "name", &path("name"), 255, true);
            let quantity = match obj.get("quantity") {
                None | Some(Value::Null) => {
                    errs.add(path("quantity"), "is required");
                    None
                }
                Some(Value::Number(_)) => match obj.get("quantity").and_then(super::whole_number) {
                    Some(q) if q > 0 && q <= 1_000_000 => Some(q),
                    Some(_) => {
                        errs.add(
                            path("quantity"),
                            "must be greater than 0 and at most 1000000",
                        );
                        None
                    }
                    None => {
                        errs.add(path("quantity"), "must be a whole number");
                        None
                    }
                },
                Some(_) => {
                    errs.add(path("quantity"), "must be a whole number");
                    None
                }
            };
            let price = match obj.get("price") {
                None | Some(Value::Null) => {
                    errs.add(path("price"), "is required");
                    None
                }
                Some(v) => Money::parse(v).map_err(|m| errs.add(path("price"), m)).ok(),
            };
            let sku = ident(errs, obj.get("sku"), &path("sku"), false);
            if let (Some(product_id), Some(name), Some(quantity), Some(price)) =
                (product_id, name, quantity, price)
            {
                items.push(OrderItem {
                    sku: sku.filter(|s| *s != product_id),
                    product_id,
                    name,
                    quantity,
                    price,
                });
            }
        }
        (errs.0.len() == before).then_some(items)
    }

    /// `delivery {method?, address?, price?}`; an object with nothing in it is no delivery.
    fn parse_delivery(errs: &mut Errors, v: Option<&Value>) -> Option<Delivery> {
        let obj = Self::optional_object(errs, v, "delivery")?;
        let method = text(errs, obj, "method", "delivery.method", 100, false);
        let address = text(errs, obj, "address", "delivery.address", 500, false);
        let price = match obj.get("price") {
            None | Some(Value::Null) => None,
            Some(v) => Money::parse(v)
                .map_err(|m| errs.add("delivery.price", m))
                .ok(),
        };
        let d = Delivery {
            method,
            address,
            price,
        };
        (d != Delivery::default()).then_some(d)
    }

    /// `payment {method?, status?}`; an object with nothing in it is no payment.
    fn parse_payment(errs: &mut Errors, v: Option<&Value>) -> Option<Payment> {
        let obj = Self::optional_object(errs, v, "payment")?;
        let p = Payment {
            method: text(errs, obj, "method", "payment.method", 100, false),
            status: text(errs, obj, "status", "payment.status", 100, false),
        };
        (p != Payment::default()).then_some(p)
    }

    fn optional_object<'v>(
        errs: &mut Errors,
        v: Option<&'v Value>,
        path: &str,
    ) -> Option<&'v serde_json::Map<String, Value>> {
        match v {
            None | Some(Value::Null) => None,
            Some(Value::Object(o)) => Some(o),
            Some(_) => {
                errs.add(path, "must be an object");
                None
            }
        }
    }

    fn parse_customer(errs: &mut Errors, obj: &serde_json::Map<String, Value>) -> Option<Customer> {
        let customer_id = ident(errs, obj.get("customer_id"), "customer_id", false);
        let c = match obj.get("customer") {
            None | Some(Value::Null) => {
                if customer_id.is_none() && !errs.0.contains_key("customer_id") {
                    errs.add("customer", "is required (or the seed-style customer_id)");
                }
                return customer_id.map(|id| Customer {
                    id: Some(id),
                    name: None,
                    phone: None,
                    email: None,
                    company: None,
                });
            }
            Some(Value::Object(c)) => c,
            Some(_) => {
                errs.add("customer", "must be an object");
                return None;
            }
        };
        let before = errs.0.len();
        let id = ident(errs, c.get("id"), "customer.id", false);
        if let (Some(a), Some(b)) = (&id, &customer_id)
            && a != b
        {
            errs.add("customer_id", "differs from customer.id");
        }
        let name = text(errs, c, "name", "customer.name", 255, true);
        let phone = text(errs, c, "phone", "customer.phone", 32, false);
        if let Some(p) = &phone
            && !valid_phone(p)
        {
            errs.add(
                "customer.phone",
                "must be a phone number of 7 to 15 digits, optionally starting with +",
            );
        }
        let email = text(errs, c, "email", "customer.email", 254, false).map(|e| e.to_lowercase());
        if let Some(e) = &email
            && !valid_email(e)
        {
            errs.add("customer.email", "must be an email address");
        }
        let company = match c.get("company") {
            // Accept the company as a plain name or as an object with a name.
            Some(Value::Object(co)) => text(errs, co, "name", "customer.company.name", 255, true),
            _ => text(errs, c, "company", "customer.company", 255, false),
        };
        (errs.0.len() == before).then_some(Customer {
            id: id.or(customer_id),
            name,
            phone,
            email,
            company,
        })
    }

    /// The canonical JSON stored with the order (and read back by the push worker).
    pub fn canonical_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }

    /// The idempotency fingerprint: equal for bodies that mean the same order.
    pub fn body_hash(&self) -> String {
        sha256_hex(self.canonical_json().as_bytes())
    }

    /// The lead's name from a template such as `Buyurtma #{order_number}` (`{seller_id}`, `{customer}` too).
    pub fn lead_name(&self, template: &str) -> String {
        let name = template
            .replace("{order_number}", &self.order_number)
            .replace("{seller_id}", self.seller_id.as_str())
            .replace("{customer}", &self.customer.display_name());
        name.chars().take(255).collect()
    }
}

fn status_message() -> String {
    let names: Vec<&str> = OrderStatus::ALL.iter().map(|s| s.as_str()).collect();
    format!("must be one of {}", names.join(", "))
}

super::wire_enum! {
    /// Where an order stands towards amoCRM.
    pub enum SyncState {
        /// Waiting for (or in) a push.
        Queued => "queued",
        /// The lead exists and its ids are stored.
        Synced => "synced",
        /// The seller's connection is not active; pushed after reconnecting.
        Held => "held",
        /// amoCRM rejected the order for good; retry through the API after fixing the cause.
        Failed => "failed",
    }
}

impl SyncState {
    /// An operator's retry queues it again: it failed for good, or waited for a connection.
    pub fn can_retry(self) -> bool {
        matches!(self, Self::Failed | Self::Held)
    }
}

super::wire_enum! {
    /// Where a queued stage move (`PATCH /api/v1/sales/orders/{id}`) stands.
    pub enum MoveState {
        /// Waiting for (or in) a `PATCH /api/v4/leads`.
        Pending => "pending",
        /// The lead is in the wanted stage.
        Done => "done",
        /// amoCRM refused the move for good.
        Failed => "failed",
        /// The lead was created after the move was asked for, already in the wanted stage.
        Superseded => "superseded",
    }
}

super::wire_enum! {
    /// What is done on an order's lead once it exists, each exactly once.
    pub enum StepKind {
        /// The buyer's existing contact gets a phone or email it lacked.
        Contact => "contact",
        Note => "note",
        Products => "products",
        Task => "task",
    }
}

super::wire_enum! {
    /// Where one step of an order stands.
    pub enum StepState {
        /// Not sent yet (or known not to have been written).
        Pending => "pending",
        /// Sent with no known answer: amoCRM is read before it is sent again.
        Sent => "sent",
        Done => "done",
        /// Nothing to do (no products catalog, nothing missing on the contact).
        Skipped => "skipped",
        /// amoCRM refused it for good.
        Failed => "failed",
    }
}

#[cfg(test)]
mod tests {
    #![expect(clippy::unwrap_used, reason = "tests fail loudly on unexpected errors")]
    use super::*;
    use serde_json::json;

    fn body() -> Value {
        json!({
            "seller_id": "seller-1",
            "order_number": "1042",
            "total_amount": 150000,
            "items": [{"product_id": "p1", "name": "Choynak", "quantity": 2, "price": 75000}],
            "customer": {"name": "Ali Valiyev", "phone": "+998 90 123-45-67", "email": "Ali@Example.com"}
        })
    }

    #[test]
    fn a_minimal_order_gets_the_defaults() {
        let d = OrderDraft::parse(&body()).unwrap();
        assert_eq!(d.currency, "UZS");
        assert_eq!(d.status, OrderStatus::Pending);
        assert_eq!(d.total_amount.minor(), 15_000_000);
        assert_eq!(d.customer.email.as_deref(), Some("ali@example.com"));
        assert_eq!(d.lead_name("Buyurtma #{order_number}"), "Buyurtma #1042");
    }

    #[test]
    fn money_is_read_exactly_in_minor_units() {
        for (v, minor) in [
            (json!(0), 0),
            (json!(12.5), 1250),
            (json!("150000.00"), 15_000_000),
            (json!(0.1), 10),
            (json!("7.000"), 700),
        ] {
            assert_eq!(Money::parse(&v).unwrap().minor(), minor, "{v}");
        }
        for v in [
            json!(-1),
            json!(1.005),
            json!("1e3"),
            json!("abc"),
            json!(true),
            json!("1."),
        ] {
            assert!(Money::parse(&v).is_err(), "{v}");
        }
        assert_eq!(Money::from_minor(1250).to_json(), json!(12.5));
        assert_eq!(Money::from_minor(1200).to_json(), json!(12));
        assert_eq!(Money::from_minor(1250).rounded_major(), 13);
        assert_eq!(Money::from_minor(1249).rounded_major(), 12);
    }

    #[test]
    fn every_bad_field_is_reported_at_once() {
        let errs = OrderDraft::parse(&json!({
            "seller_id": "a/b",
            "total_amount": -5,
            "currency": "usd1",
            "status": "refunded",
            "items": [{"product_id": "p1", "name": "", "quantity": 0, "price": 1}],
            "customer": {"name": "X", "phone": "12", "email": "nope"},
            "url": "ftp://x",
            "tags": [1]
        }))
        .unwrap_err();
        for field in [
            "seller_id",
            "order_number",
            "total_amount",
            "currency",
            "status",
            "items[0].name",
            "items[0].quantity",
            "customer.phone",
            "customer.email",
            "url",
            "tags[0]",
        ] {
            assert!(errs.contains_key(field), "{field} missing in {errs:?}");
        }
    }

    #[test]
    fn the_seed_style_customer_id_stands_in_for_the_customer() {
        let mut b = body();
        b.as_object_mut().unwrap().remove("customer");
        b["customer_id"] = json!(77);
        let d = OrderDraft::parse(&b).unwrap();
        assert_eq!(d.customer.id.as_deref(), Some("77"));
        assert_eq!(d.customer.display_name(), "Mijoz #77");
        b.as_object_mut().unwrap().remove("customer_id");
        assert!(OrderDraft::parse(&b).unwrap_err().contains_key("customer"));
    }

    #[test]
    fn equivalent_bodies_hash_the_same_and_different_ones_do_not() {
        let a = OrderDraft::parse(&body()).unwrap();
        let mut b = body();
        b["currency"] = json!("uzs");
        b["total_amount"] = json!("150000.00");
        b["status"] = json!("pending");
        assert_eq!(a.body_hash(), OrderDraft::parse(&b).unwrap().body_hash());
        b["total_amount"] = json!(150001);
        assert_ne!(a.body_hash(), OrderDraft::parse(&b).unwrap().body_hash());
    }

    #[test]
    fn stored_json_round_trips() {
        let a = OrderDraft::parse(&body()).unwrap();
        let back: OrderDraft = serde_json::from_str(&a.canonical_json()).unwrap();
        assert_eq!(a, back);
    }
}
