//! Account hosts (`sellerone.amocrm.ru`): the only values the client will ever send credentials to.
//!
//! Parse, don't validate: an [`AccountHost`] exists only if it is exactly one DNS label followed by one of the
//! [`AllowedDomains`], so code holding one never needs to re-check it before sending the client secret.

use std::fmt;

/// The domains an account host may belong to (`amocrm.ru,kommo.com,amocrm.com` by default).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AllowedDomains(Vec<String>);

impl AllowedDomains {
    /// The default list: amoCRM (Russia and international) and Kommo.
    pub const DEFAULT: &'static str = "amocrm.ru,kommo.com,amocrm.com";

    /// Parses a comma-separated list such as `amocrm.ru,kommo.com`; each entry must be a plain domain of at least
    /// two labels (lowercased; no scheme, port, path or wildcard).
    pub fn parse(list: &str) -> Result<Self, HostError> {
        let mut domains = Vec::new();
        for raw in list.split(',') {
            let domain = raw.trim().to_ascii_lowercase();
            if domain.is_empty() {
                continue;
            }
            let labels: Vec<&str> = domain.split('.').collect();
            if labels.len() < 2 || !labels.iter().all(|l| is_dns_label(l)) {
                return Err(HostError::InvalidAllowedDomain(domain));
            }
            if !domains.contains(&domain) {
                domains.push(domain);
            }
        }
        if domains.is_empty() {
            return Err(HostError::InvalidAllowedDomain(list.trim().to_owned()));
        }
        Ok(Self(domains))
    }

    /// The domains, lowercased, in configuration order.
    pub fn domains(&self) -> &[String] {
        &self.0
    }

    /// Whether `host` belongs to one of these domains (hosts parsed against another list are re-checked).
    pub fn allows(&self, host: &AccountHost) -> bool {
        self.0.iter().any(|d| d == host.domain())
    }
}

impl Default for AllowedDomains {
    fn default() -> Self {
        Self(
            Self::DEFAULT
                .split(',')
                .map(str::to_owned)
                .collect::<Vec<_>>(),
        )
    }
}

/// Why a string is not an acceptable account host.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HostError {
    #[error("account host is empty")]
    /// Nothing was given.
    Empty,
    #[error("account host is too long")]
    /// Longer than a DNS name may be.
    TooLong,
    #[error("account host contains a character other than a-z, 0-9, '-' and '.'")]
    /// A character outside `a-z 0-9 - .`.
    InvalidCharacter,
    #[error("account subdomain is not a valid DNS label")]
    /// The subdomain is not a valid DNS label.
    InvalidLabel,
    #[error("account host is not one label followed by an allowed domain")]
    /// Not one label followed by an allowed domain.
    DomainNotAllowed,
    #[error("account subdomain {0:?} is reserved and never an account")]
    /// A subdomain amoCRM uses itself (`www`, `api-b`…), never an account.
    Reserved(String),
    #[error("allowed domain {0:?} is not a plain domain name")]
    /// An allowed-domain entry that is not a plain domain name.
    InvalidAllowedDomain(String),
    #[error("host is not an amoCRM API host (api-*.{{allowed domain}})")]
    /// Not an `api-*` host of an allowed domain.
    NotAnApiHost,
}

/// An amoCRM account host such as `sellerone.amocrm.ru`: one DNS label plus one allowed domain, lowercase.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct AccountHost {
    host: String,
    label_len: usize,
}

/// Subdomains that name amoCRM's own sites, never an account (the token endpoint must not be `www.`).
const RESERVED_LABELS: &[&str] = &["www"];

impl AccountHost {
    /// Accepts exactly `{label}.{allowed domain}`; ASCII letters are lowercased. Anything with a scheme, port,
    /// path, userinfo, extra label, trailing dot, IP address or non-ASCII character is refused.
    pub fn parse(s: &str, allowed: &AllowedDomains) -> Result<Self, HostError> {
        if s.is_empty() {
            return Err(HostError::Empty);
        }
        if s.len() > 253 {
            return Err(HostError::TooLong);
        }
        if !s
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
        {
            return Err(HostError::InvalidCharacter);
        }
        let host = s.to_ascii_lowercase();
        let Some((label, domain)) = host.split_once('.') else {
            return Err(HostError::DomainNotAllowed);
        };
        if !is_dns_label(label) {
            return Err(HostError::InvalidLabel);
        }
        if !allowed.0.iter().any(|d| d == domain) {
            return Err(HostError::DomainNotAllowed);
        }
        if RESERVED_LABELS.contains(&label) {
            return Err(HostError::Reserved(label.to_owned()));
        }
        Ok(Self {
            label_len: label.len(),
            host,
        })
    }

    /// The whole host, e.g. `sellerone.amocrm.ru`.
    pub fn as_str(&self) -> &str {
        &self.host
    }

    /// The account's subdomain, e.g. `sellerone`.
    pub fn subdomain(&self) -> &str {
        &self.host[..self.label_len]
    }

    /// The platform domain, e.g. `amocrm.ru`.
    pub fn domain(&self) -> &str {
        &self.host[self.label_len + 1..]
    }
}

impl fmt::Display for AccountHost {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.host)
    }
}

impl AsRef<str> for AccountHost {
    fn as_ref(&self) -> &str {
        &self.host
    }
}

impl serde::Serialize for AccountHost {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.host)
    }
}

/// An amoCRM API host such as `api-b.amocrm.ru`: the `api_domain` claim of newer access tokens, where the
/// subdomain of a renamed account is asked for with the refresh token (`amocrm-api.md` §13.3).
///
/// It exists only as `api-{label}.{allowed domain}`, so a token naming any other host can never make the
/// client send a refresh token there. The letter after `api-` is not fixed (amoCRM says the names change).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ApiHost {
    host: String,
}

impl ApiHost {
    /// The prefix every API host's label carries.
    pub const PREFIX: &'static str = "api-";

    /// Accepts exactly `api-{rest}.{allowed domain}` with `api-{rest}` one DNS label; lowercased.
    pub fn parse(s: &str, allowed: &AllowedDomains) -> Result<Self, HostError> {
        let host = AccountHost::parse(s, allowed)?;
        let label = host.subdomain();
        if !label.starts_with(Self::PREFIX) || label.len() == Self::PREFIX.len() {
            return Err(HostError::NotAnApiHost);
        }
        Ok(Self {
            host: host.as_str().to_owned(),
        })
    }

    /// The whole host, e.g. `api-b.amocrm.ru`.
    pub fn as_str(&self) -> &str {
        &self.host
    }

    /// Whether this host belongs to one of `allowed` (hosts parsed against another list are re-checked).
    pub fn allowed_by(&self, allowed: &AllowedDomains) -> bool {
        Self::parse(&self.host, allowed).is_ok()
    }

    /// The host as an [`AccountHost`], for building its URL from the account URL template.
    pub(crate) fn as_account_host(&self, allowed: &AllowedDomains) -> Option<AccountHost> {
        AccountHost::parse(&self.host, allowed).ok()
    }
}

impl fmt::Display for ApiHost {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.host)
    }
}

/// RFC 1123 label, lowercase only: `[a-z0-9-]{1,63}`, not starting or ending with `-`.
fn is_dns_label(label: &str) -> bool {
    let bytes = label.as_bytes();
    !bytes.is_empty()
        && bytes.len() <= 63
        && bytes
            .iter()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-')
        && bytes.first() != Some(&b'-')
        && bytes.last() != Some(&b'-')
}

#[cfg(test)]
mod tests {
    #![expect(clippy::unwrap_used, reason = "tests fail loudly on unexpected errors")]
    use super::*;

    fn parse(s: &str) -> Result<AccountHost, HostError> {
        AccountHost::parse(s, &AllowedDomains::default())
    }

    #[test]
    fn one_label_under_an_allowed_domain_is_accepted() {
        let h = parse("sellerone.amocrm.ru").unwrap();
        assert_eq!(h.as_str(), "sellerone.amocrm.ru");
        assert_eq!(h.subdomain(), "sellerone");
        assert_eq!(h.domain(), "amocrm.ru");
        assert_eq!(parse("shop-42.kommo.com").unwrap().subdomain(), "shop-42");
        assert_eq!(parse("a.amocrm.com").unwrap().to_string(), "a.amocrm.com");
    }

    #[test]
    fn uppercase_hosts_are_normalised_to_lowercase() {
        let h = parse("SellerOne.AmoCRM.ru").unwrap();
        assert_eq!(h.as_str(), "sellerone.amocrm.ru");
    }

    #[test]
    fn hostile_and_malformed_hosts_are_refused() {
        for bad in [
            "",
            "evil.example",
            "sellerone.amocrm.ru.evil.example",
            "a.b.amocrm.ru",
            "127.0.0.1:9090",
            "127.0.0.1",
            "amocrm.ru",
            ".amocrm.ru",
            "sellerone.amocrm.ru.",
            "sellerone.amocrm.ru:443",
            "sellerone.amocrm.ru/path",
            "user@sellerone.amocrm.ru",
            "https://sellerone.amocrm.ru",
            "-seller.amocrm.ru",
            "seller-.amocrm.ru",
            "sel_ler.amocrm.ru",
            "sel ler.amocrm.ru",
            "sellerone.amocrm.ru\n",
            "www.amocrm.ru",
            "sеllerone.amocrm.ru", // Cyrillic 'е'
            "sellerone.amocrm.ru%2f",
            "sellerone.evilamocrm.ru",
            "sellerone.amocrm.rux",
        ] {
            assert!(parse(bad).is_err(), "{bad:?} must be refused");
        }
        let long = format!("{}.amocrm.ru", "a".repeat(64));
        assert_eq!(parse(&long), Err(HostError::InvalidLabel));
        let max = format!("{}.amocrm.ru", "a".repeat(63));
        assert!(parse(&max).is_ok());
    }

    #[test]
    fn api_hosts_are_api_labels_under_the_allowed_domains_only() {
        let amocrm = AllowedDomains::parse("amocrm.ru").unwrap();
        let kommo = AllowedDomains::parse("kommo.com,amocrm.com").unwrap();
        assert_eq!(
            ApiHost::parse("API-B.amocrm.ru", &amocrm).unwrap().as_str(),
            "api-b.amocrm.ru"
        );
        assert!(ApiHost::parse("api-c.kommo.com", &kommo).is_ok());
        assert!(ApiHost::parse("api-g.amocrm.com", &kommo).is_ok());
        for bad in [
            "api-b.kommo.com",
            "api-b.evil.example",
            "api-.amocrm.ru",
            "api.amocrm.ru",
            "sellerone.amocrm.ru",
            "www.amocrm.ru",
            "api-b.amocrm.ru.evil.example",
            "x.api-b.amocrm.ru",
            "api-b.amocrm.ru:443",
            "",
        ] {
            assert!(
                ApiHost::parse(bad, &amocrm).is_err(),
                "{bad:?} must be refused"
            );
        }
        let h = ApiHost::parse("api-c.kommo.com", &kommo).unwrap();
        assert!(h.allowed_by(&kommo));
        assert!(!h.allowed_by(&amocrm));
    }

    #[test]
    fn allowed_domains_come_from_configuration() {
        let only_kommo = AllowedDomains::parse(" Kommo.com , ").unwrap();
        assert_eq!(only_kommo.domains(), ["kommo.com"]);
        assert!(AccountHost::parse("x.amocrm.ru", &only_kommo).is_err());
        let h = AccountHost::parse("x.kommo.com", &only_kommo).unwrap();
        assert!(only_kommo.allows(&h));
        assert!(!AllowedDomains::parse("amocrm.ru").unwrap().allows(&h));
        for bad in ["", "ru", "*.amocrm.ru", "amocrm.ru:80", "https://amocrm.ru"] {
            assert!(AllowedDomains::parse(bad).is_err(), "{bad:?}");
        }
    }
}
