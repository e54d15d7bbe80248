//! The buyer as amoCRM should know them: phones in E.164 (with the seller's default country for numbers
//! written without one), emails lower-cased. Two orders of one buyer give the same [`BuyerKey`]s however the
//! marketplace wrote the phone (`+998 90 123-45-67`, `998901234567`, `90 123 45 67`).

use std::str::FromStr;

use phonenumber::country::Id as CountryId;

use super::settings::MatchMode;

super::wire_enum! {
    /// How an order's buyer was found in the seller's amoCRM.
    pub enum ContactMatch {
        Phone => "phone",
        Email => "email",
        /// A new contact was made (or matching is off).
        None => "none",
    }
}

/// The country of an ISO 3166 alpha-2 code, if the phone library knows its numbering.
pub fn country(code: &str) -> Option<CountryId> {
    CountryId::from_str(&code.trim().to_ascii_uppercase()).ok()
}

/// A phone in E.164 (`+998901234567`), or `None` when it is not a valid number.
pub fn normalize_phone(raw: &str, default_country: &str) -> Option<String> {
    let number = phonenumber::parse(country(default_country), raw).ok()?;
    phonenumber::is_valid(&number)
        .then(|| number.format().mode(phonenumber::Mode::E164).to_string())
}

/// An email as amoCRM's values are compared: trimmed and lower-cased; `None` when it has no `@`.
pub fn normalize_email(raw: &str) -> Option<String> {
    let e = raw.trim().to_lowercase();
    (e.contains('@') && e.len() > 2).then_some(e)
}

/// The national digits of an E.164 phone (what amoCRM's `query` search finds however the contact's phone
/// was typed): `+998901234567` → `901234567` for a +998 number.
pub fn search_digits(e164: &str) -> String {
    let parsed = phonenumber::parse(None, e164).ok();
    match parsed {
        Some(n) => n.national().value().to_string(),
        None => e164.trim_start_matches('+').to_owned(),
    }
}

/// One way to recognise a buyer in the index.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum BuyerKey {
    Phone(String),
    Email(String),
}

impl BuyerKey {
    /// The index's text form: `phone:+998…` or `email:…`.
    pub fn as_index(&self) -> String {
        match self {
            Self::Phone(p) => format!("phone:{p}"),
            Self::Email(e) => format!("email:{e}"),
        }
    }

    pub fn from_index(s: &str) -> Option<Self> {
        if let Some(p) = s.strip_prefix("phone:") {
            return Some(Self::Phone(p.to_owned()));
        }
        s.strip_prefix("email:").map(|e| Self::Email(e.to_owned()))
    }

    /// How a hit on this key is reported on the order.
    pub fn matched(&self) -> ContactMatch {
        match self {
            Self::Phone(_) => ContactMatch::Phone,
            Self::Email(_) => ContactMatch::Email,
        }
    }
}

/// The keys an order's buyer is matched by, in the order the mode tries them.
pub fn keys(
    phone: Option<&str>,
    email: Option<&str>,
    mode: MatchMode,
    default_country: &str,
) -> Vec<BuyerKey> {
    let phone = phone
        .and_then(|p| normalize_phone(p, default_country))
        .map(BuyerKey::Phone);
    let email = email.and_then(normalize_email).map(BuyerKey::Email);
    match mode {
        MatchMode::PhoneThenEmail => phone.into_iter().chain(email).collect(),
        MatchMode::Phone => phone.into_iter().collect(),
        MatchMode::Email => email.into_iter().collect(),
        MatchMode::Off => Vec::new(),
    }
}

/// The keys a contact's own values give (for the index, from a search hit, a page or a webhook).
pub fn contact_keys(phones: &[String], emails: &[String], default_country: &str) -> Vec<BuyerKey> {
    let mut out: Vec<BuyerKey> = phones
        .iter()
        .filter_map(|p| normalize_phone(p, default_country))
        .map(BuyerKey::Phone)
        .chain(
            emails
                .iter()
                .filter_map(|e| normalize_email(e))
                .map(BuyerKey::Email),
        )
        .collect();
    out.sort();
    out.dedup();
    out
}

/// A company's index key: its exact name (trimmed); amoCRM's search is only a candidate list.
pub fn company_key(name: &str) -> String {
    format!("company:{}", name.trim())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_uzbek_number_however_it_is_written() {
        for raw in [
            "+998 90 123-45-67",
            "998901234567",
            "90 123 45 67",
            "+998 (90) 123-45-67",
            "901234567",
        ] {
            assert_eq!(
                normalize_phone(raw, "UZ").as_deref(),
                Some("+998901234567"),
                "{raw}"
            );
        }
        assert_eq!(
            normalize_phone("+7 912 345 67 89", "UZ").as_deref(),
            Some("+79123456789")
        );
        assert_eq!(normalize_phone("12", "UZ"), None);
        assert_eq!(search_digits("+998901234567"), "901234567");
    }

    #[test]
    fn keys_follow_the_mode_and_emails_are_lower_cased() {
        let k = keys(
            Some("90 123 45 67"),
            Some(" Ali@Example.UZ "),
            MatchMode::PhoneThenEmail,
            "UZ",
        );
        assert_eq!(
            k,
            vec![
                BuyerKey::Phone("+998901234567".into()),
                BuyerKey::Email("ali@example.uz".into())
            ]
        );
        assert_eq!(
            keys(Some("90 123 45 67"), None, MatchMode::Email, "UZ"),
            vec![]
        );
        assert!(keys(Some("901234567"), None, MatchMode::Off, "UZ").is_empty());
        let back = BuyerKey::from_index(&k[1].as_index());
        assert_eq!(back.as_ref(), Some(&k[1]));
        assert_eq!(k[0].matched(), ContactMatch::Phone);
    }
}
