//! The two platforms a seller's CRM may live on. amoCRM (amocrm.ru) and Kommo (kommo.com, and the old
//! amocrm.com) are separate since 2022: an integration registered on one does not exist on the other, so the
//! service holds one client id per platform and every connection remembers its platform.

super::wire_enum! {
    /// Where a seller's CRM account lives.
    pub enum Platform {
        Amocrm => "amocrm",
        Kommo => "kommo",
    }
}

impl Platform {
    /// The `platform` value amoCRM's consent redirect carries: `1` for amocrm.ru, `2` for kommo.com and
    /// amocrm.com accounts.
    pub fn from_callback(value: &str) -> Option<Self> {
        match value.trim() {
            "1" => Some(Self::Amocrm),
            "2" => Some(Self::Kommo),
            _ => None,
        }
    }

    /// The product's name, for pages and messages.
    pub fn display_name(self) -> &'static str {
        match self {
            Self::Amocrm => "amoCRM",
            Self::Kommo => "Kommo",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn callback_values_name_the_platform() {
        assert_eq!(Platform::from_callback("1"), Some(Platform::Amocrm));
        assert_eq!(Platform::from_callback("2"), Some(Platform::Kommo));
        assert_eq!(Platform::from_callback("3"), None);
        assert_eq!(Platform::parse("kommo"), Some(Platform::Kommo));
        assert_eq!(Platform::NAMES, ["amocrm", "kommo"]);
    }
}
