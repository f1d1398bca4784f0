//! [`RawJson`]: payloads and results kept as their JSON text.

use serde::Serialize;
use serde_json::{Value, value::RawValue};

/// A JSON value kept as its compact text. A parsed `Value` object costs a B-tree node
/// (hundreds of bytes) even for `{"i": 1}`; a store holding many jobs keeps payloads and
/// results as text and parses them only when something reads inside them.
#[derive(Debug, Clone)]
pub struct RawJson(Box<RawValue>);

impl RawJson {
    /// The compact text of `value`.
    #[must_use]
    pub fn from_value(value: &Value) -> Self {
        // Serialising a `Value` cannot fail.
        Self(serde_json::value::to_raw_value(value).unwrap_or_else(|_| RawValue::NULL.to_owned()))
    }

    /// Keeps JSON text that is already known to be valid (e.g. read back from the store).
    #[must_use]
    pub fn from_raw(raw: Box<RawValue>) -> Self {
        Self(raw)
    }

    /// The JSON text.
    #[must_use]
    pub fn as_raw(&self) -> &RawValue {
        &self.0
    }

    /// The value, parsed.
    #[must_use]
    pub fn to_value(&self) -> Value {
        serde_json::from_str(self.0.get()).unwrap_or(Value::Null)
    }
}

impl PartialEq for RawJson {
    fn eq(&self, other: &Self) -> bool {
        self.0.get() == other.0.get()
    }
}

impl Serialize for RawJson {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.0.serialize(serializer)
    }
}
