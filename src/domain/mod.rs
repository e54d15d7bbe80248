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

/// A JSON number that is a whole number within `i64`: `5`, and `5.0` too, since JSON Schema's `integer`
/// (which the API document uses) counts both.
pub fn whole_number(v: &serde_json::Value) -> Option<i64> {
    let n = v.as_number()?;
    n.as_i64().or_else(|| {
        let f = n.as_f64()?;
        // 2^63 is the first float above i64::MAX.
        (f.fract() == 0.0
            && (-9_223_372_036_854_775_808.0..9_223_372_036_854_775_808.0).contains(&f))
        .then_some(f as i64)
    })
}
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
