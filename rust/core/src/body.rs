//! `body`: the JSON object of a request, converted to CEL values only as far as the
//! rules read it. The document is checked whole (valid JSON, an object, nesting within
//! the limit) once; each top-level field is converted the first time a rule reads it,
//! so a chat request's `messages` cost nothing unless a rule looks at them.

use std::borrow::Cow;
use std::sync::OnceLock;

use cel::common::types::{CelMap, CelMapKey};
use cel::common::value::Val;
use serde::de::{Deserializer as _, MapAccess, Visitor};
use serde_json::value::RawValue;

use crate::values::{self, BoxVal};

pub struct LazyBody<'a> {
    /// Top-level fields in document order; a repeated key keeps its last value.
    fields: Vec<Field<'a>>,
    max_depth: usize,
    whole: OnceLock<BoxVal<'static>>,
}

struct Field<'a> {
    key: Cow<'a, str>,
    raw: &'a RawValue,
    value: OnceLock<Option<BoxVal<'static>>>,
}

impl<'a> LazyBody<'a> {
    /// The body of a request, or an empty one when it is not a JSON object within
    /// `max_depth` levels: malformed JSON leaves the decision to the rules.
    pub fn parse(bytes: &'a [u8], max_depth: usize) -> LazyBody<'a> {
        let fields = if nesting(bytes) <= max_depth {
            top_level(bytes).unwrap_or_default()
        } else {
            Vec::new()
        };
        LazyBody {
            fields,
            max_depth,
            whole: OnceLock::new(),
        }
    }

    pub fn empty() -> LazyBody<'static> {
        LazyBody {
            fields: Vec::new(),
            max_depth: 1,
            whole: OnceLock::new(),
        }
    }

    pub fn has(&self, key: &str) -> bool {
        self.field(key).is_some()
    }

    /// The value of a top-level field, converted on first use.
    pub fn get(&self, key: &str) -> Option<&(dyn Val + 'static)> {
        let f = self.field(key)?;
        f.value
            .get_or_init(|| values::parse_json(f.raw.get().as_bytes(), self.max_depth - 1).ok())
            .as_deref()
    }

    /// The whole body as one map, for rules that use `body` itself.
    pub fn whole(&self) -> &(dyn Val + 'static) {
        self.whole
            .get_or_init(|| {
                let mut m = std::collections::HashMap::with_capacity(self.fields.len());
                for f in &self.fields {
                    if let Some(v) = self.get(&f.key) {
                        m.insert(CelMapKey::from(f.key.to_string()), v.clone_as_boxed());
                    }
                }
                Box::new(CelMap::from(m))
            })
            .as_ref()
    }

    fn field(&self, key: &str) -> Option<&Field<'a>> {
        self.fields.iter().rev().find(|f| f.key == key)
    }
}

/// The deepest nesting of objects and arrays, counted without parsing.
fn nesting(bytes: &[u8]) -> usize {
    let (mut depth, mut max, mut in_string, mut escaped) = (0usize, 0usize, false, false);
    for &b in bytes {
        if in_string {
            match b {
                _ if escaped => escaped = false,
                b'\\' => escaped = true,
                b'"' => in_string = false,
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'{' | b'[' => {
                depth += 1;
                max = max.max(depth);
            }
            b'}' | b']' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    max
}

/// Splits a JSON object into its top-level fields, validating the whole document.
fn top_level(bytes: &[u8]) -> Option<Vec<Field<'_>>> {
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let fields = de.deserialize_map(TopLevel).ok()?;
    de.end().ok()?;
    Some(fields)
}

struct TopLevel;

impl<'de> Visitor<'de> for TopLevel {
    type Value = Vec<Field<'de>>;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut m: A) -> Result<Self::Value, A::Error> {
        let mut fields = Vec::new();
        while let Some(Key(key)) = m.next_key::<Key<'de>>()? {
            let raw: &'de RawValue = m.next_value()?;
            fields.push(Field {
                key,
                raw,
                value: OnceLock::new(),
            });
        }
        Ok(fields)
    }
}

/// A key borrowed from the document unless it has escapes.
struct Key<'a>(Cow<'a, str>);

impl<'de> serde::Deserialize<'de> for Key<'de> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Key<'de>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E>(self, s: &'de str) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Borrowed(s)))
            }
            fn visit_str<E>(self, s: &str) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Owned(s.to_owned())))
            }
        }
        d.deserialize_str(V)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_convert_on_first_read() {
        let b = LazyBody::parse(
            br#"{"model":"m","max_tokens":5,"messages":[{"role":"user"}],"we\u0069rd":1}"#,
            8,
        );
        assert!(b.has("model") && b.has("weird") && !b.has("stream"));
        assert!(b.fields[2].value.get().is_none(), "messages untouched");
        assert!(b.get("model").is_some());
        assert!(b.fields[0].value.get().is_some());
        assert!(b.fields[2].value.get().is_none(), "still untouched");
    }

    #[test]
    fn malformed_deep_or_non_object_bodies_are_empty() {
        for bad in [
            &b"{"[..],
            b"[1]",
            b"\"s\"",
            b"{\"a\":1} trailing",
            b"{\"a\":[[[[1]]]]}",
        ] {
            assert!(
                LazyBody::parse(bad, 4).fields.is_empty(),
                "{:?}",
                std::str::from_utf8(bad)
            );
        }
        assert_eq!(nesting(br#"{"a":"[[[[","b":[{}]}"#), 3);
    }
}
