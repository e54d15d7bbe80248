//! Pure types of the connector's domain: identifiers, validated values, statuses. No I/O here.

/// A state with one wire spelling per variant: the enum, its `ALL`, `as_str`, `parse`, `Display` and serde all
/// come from the one list, so a spelling exists exactly once (storage maps these to TEXT columns).
macro_rules! wire_enum {
    ($(#[$m:meta])* pub enum $name:ident { $($(#[$vm:meta])* $variant:ident => $text:literal,)+ }) => {
        $(#[$m])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
        pub enum $name {
            $($(#[$vm])* #[serde(rename = $text)] $variant,)+
        }

        impl $name {
            pub const ALL: &'static [Self] = &[$(Self::$variant,)+];
            /// The wire spellings, in declaration order.
            pub const NAMES: &'static [&'static str] = &[$($text,)+];

            pub fn as_str(self) -> &'static str {
                match self {
                    $(Self::$variant => $text,)+
                }
            }

            pub fn parse(s: &str) -> Option<Self> {
                Self::ALL.iter().copied().find(|v| v.as_str() == s)
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}
pub(crate) use wire_enum;

pub mod buyer;
pub mod events;
pub mod ids;
pub mod lang;
pub mod note;
pub mod order;
pub mod outbound;
pub mod platform;
pub mod settings;
pub mod stages;
pub mod status;
