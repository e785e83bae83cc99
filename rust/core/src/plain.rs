//! Plain values: what the public API hands out where a CEL value is inside (a body
//! field, an expression's result), so no `cel` type crosses the crate's boundary and
//! callers compare and print values without knowing the evaluator.

use std::fmt;

use cel::common::value::Val;
use cel::objects::Key as CelKey;

/// A CEL value copied out of the evaluator. Equality is exact: `Int(1)` is not
/// `Uint(1)` (CEL's own `==` is looser), so tests comparing two evaluations see a
/// change of type. Maps are kept sorted by key, so equal maps compare equal.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Null,
    Bool(bool),
    Int(i64),
    Uint(u64),
    Double(f64),
    String(String),
    Bytes(Vec<u8>),
    List(Vec<Value>),
    Map(Vec<(Key, Value)>),
    /// A value the public API has no shape for (a type, a function): cel's own text.
    Other(String),
}

/// A map key: CEL keys are ints, uints, bools or strings.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Key {
    Int(i64),
    Uint(u64),
    Bool(bool),
    String(String),
}

impl fmt::Display for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Key::Int(i) => write!(f, "{i}"),
            Key::Uint(u) => write!(f, "{u}u"),
            Key::Bool(b) => write!(f, "{b}"),
            Key::String(s) => f.write_str(s),
        }
    }
}

impl Value {
    /// The value as plain JSON, for people (ints and uints as numbers, bytes as a
    /// list of numbers, map keys as text).
    pub fn to_json(&self) -> serde_json::Value {
        use serde_json::{json, Value as J};
        match self {
            Value::Null => J::Null,
            Value::Bool(b) => json!(b),
            Value::Int(i) => json!(i),
            Value::Uint(u) => json!(u),
            Value::Double(d) => json!(d),
            Value::String(s) => json!(s),
            Value::Bytes(b) => json!(b),
            Value::List(l) => J::Array(l.iter().map(Value::to_json).collect()),
            Value::Map(m) => J::Object(
                m.iter()
                    .map(|(k, v)| (k.to_string(), v.to_json()))
                    .collect(),
            ),
            Value::Other(s) => json!(s),
        }
    }

    /// The value as exact tagged JSON, every type kept: `["i","-5"]`, `["u","5"]`,
    /// `["d","<f64 bits>"]`, `["s","…"]`, `["b",true]`, `["n"]`, `["l",[…]]`,
    /// `["m",[[key,value],…]]` (keys in order), `["y",[…]]` for bytes.
    pub fn to_tagged_json(&self) -> serde_json::Value {
        use serde_json::json;
        match self {
            Value::Null => json!(["n"]),
            Value::Bool(b) => json!(["b", b]),
            Value::Int(i) => json!(["i", i.to_string()]),
            Value::Uint(u) => json!(["u", u.to_string()]),
            Value::Double(d) => json!(["d", d.to_bits().to_string()]),
            Value::String(s) => json!(["s", s]),
            Value::Bytes(b) => json!(["y", b]),
            Value::List(l) => json!(["l", l.iter().map(Value::to_tagged_json).collect::<Vec<_>>()]),
            Value::Map(m) => json!([
                "m",
                m.iter()
                    .map(|(k, v)| json!([k.to_string(), v.to_tagged_json()]))
                    .collect::<Vec<_>>()
            ]),
            Value::Other(s) => json!(["?", s]),
        }
    }

    /// Copies an evaluation's result.
    pub(crate) fn of_cel(v: &cel::Value) -> Value {
        use cel::Value as C;
        match v {
            C::Null => Value::Null,
            C::Bool(b) => Value::Bool(*b),
            C::Int(i) => Value::Int(*i),
            C::UInt(u) => Value::Uint(*u),
            C::Float(f) => Value::Double(*f),
            C::String(s) => Value::String(s.to_string()),
            C::Bytes(b) => Value::Bytes(b.to_vec()),
            C::List(l) => Value::List(l.iter().map(Value::of_cel).collect()),
            C::Map(m) => {
                let mut entries: Vec<(Key, Value)> = m
                    .map
                    .iter()
                    .map(|(k, v)| (key_of_cel(k), Value::of_cel(v)))
                    .collect();
                entries.sort_by(|a, b| a.0.cmp(&b.0));
                Value::Map(entries)
            }
            other => Value::Other(format!("{other:?}")),
        }
    }

    /// Copies a value the engine holds (a body field).
    pub(crate) fn of_val(v: &dyn Val) -> Value {
        match cel::Value::try_from(v) {
            Ok(v) => Value::of_cel(&v),
            Err(e) => Value::Other(format!("{e:?}")),
        }
    }
}

fn key_of_cel(k: &CelKey) -> Key {
    match k {
        CelKey::Int(i) => Key::Int(*i),
        CelKey::Uint(u) => Key::Uint(*u),
        CelKey::Bool(b) => Key::Bool(*b),
        CelKey::String(s) => Key::String(s.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maps_are_sorted_and_types_kept() {
        let json = serde_json::json!({"b": 1, "a": [1.5, "x", null, true]});
        let cel = crate::values::from_json(&json, 8).unwrap();
        let v = Value::of_val(cel.as_ref());
        assert_eq!(
            v,
            Value::Map(vec![
                (
                    Key::String("a".into()),
                    Value::List(vec![
                        Value::Double(1.5),
                        Value::String("x".into()),
                        Value::Null,
                        Value::Bool(true)
                    ])
                ),
                (Key::String("b".into()), Value::Int(1)),
            ])
        );
        assert_ne!(Value::Int(1), Value::Uint(1));
        assert_eq!(
            v.to_tagged_json().to_string(),
            r#"["m",[["a",["l",[["d","4609434218613702656"],["s","x"],["n"],["b",true]]]],["b",["i","1"]]]]"#
        );
    }
}
