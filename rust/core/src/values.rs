//! Building CEL values. Values that are cached across requests (certificates, token
//! claims) are built once as `'static` boxes; per-request values (`request`) borrow
//! the caller's strings so binding them copies nothing.

use std::collections::HashMap;

use cel::common::types::{
    CelBool, CelDouble, CelInt, CelList, CelMap, CelMapKey, CelNull, CelString,
};
use cel::common::value::Val;

pub type BoxVal<'v> = Box<dyn Val + 'v>;

pub fn string<'v>(s: impl Into<CelString<'v>>) -> BoxVal<'v> {
    Box::new(s.into())
}

pub fn int(i: i64) -> BoxVal<'static> {
    Box::new(CelInt::from(i))
}

pub fn boolean(b: bool) -> BoxVal<'static> {
    Box::new(CelBool::from(b))
}

pub fn list<'v>(items: Vec<BoxVal<'v>>) -> BoxVal<'v> {
    Box::new(CelList::from(items))
}

pub fn map<'v, K: Into<CelMapKey<'v>>>(entries: Vec<(K, BoxVal<'v>)>) -> BoxVal<'v> {
    let mut m: HashMap<CelMapKey<'v>, BoxVal<'v>> = HashMap::with_capacity(entries.len());
    for (k, v) in entries {
        m.insert(k.into(), v);
    }
    Box::new(CelMap::from(m))
}

/// JSON exceeded the nesting allowed for it.
#[derive(Debug, PartialEq, Eq)]
pub struct TooDeep;

/// Converts parsed JSON to a CEL value, refusing documents nested deeper than
/// `max_depth` (objects and arrays count one level each).
pub fn from_json(value: &serde_json::Value, max_depth: usize) -> Result<BoxVal<'static>, TooDeep> {
    use serde::de::DeserializeSeed;
    // The visitor's only error is the depth limit: a parsed Value is otherwise valid.
    JsonSeed {
        depth_left: max_depth,
    }
    .deserialize(value)
    .map_err(|_| TooDeep)
}

type PathMap = HashMap<String, BoxVal<'static>, foldhash::fast::RandomState>;

/// A value with every field path below it indexed (`subject.cn` → the CN), so a rule's
/// field access is one hash lookup. Built once for values that are cached across
/// requests: certificates and verified token claims.
pub struct Indexed {
    root: BoxVal<'static>,
    paths: PathMap,
}

impl std::fmt::Debug for Indexed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Indexed")
            .field("paths", &self.paths.len())
            .finish()
    }
}

impl Indexed {
    pub fn from_json(value: &serde_json::Value, max_depth: usize) -> Result<Indexed, TooDeep> {
        let root = from_json(value, max_depth)?;
        let mut paths = PathMap::default();
        index_paths(value, &mut String::new(), &mut paths, max_depth)?;
        Ok(Indexed { root, paths })
    }

    pub fn root(&self) -> &(dyn Val + 'static) {
        &*self.root
    }

    /// The value at a dotted path below the root; `None` when it is not there.
    pub fn get(&self, path: &str) -> Option<&(dyn Val + 'static)> {
        self.paths.get(path).map(|v| &**v)
    }
}

fn index_paths(
    value: &serde_json::Value,
    prefix: &mut String,
    paths: &mut PathMap,
    depth_left: usize,
) -> Result<(), TooDeep> {
    let serde_json::Value::Object(fields) = value else {
        return Ok(());
    };
    let depth = depth_left.checked_sub(1).ok_or(TooDeep)?;
    for (k, child) in fields {
        // A key with a dot cannot be told from a path, and an empty one would make its
        // fields look like its parent's (`{"": {"admin": true}}` is not `admin`):
        // neither is indexed. `x["a.b"]` and `x[""]` still find them.
        if k.is_empty() || k.contains('.') {
            continue;
        }
        let len = prefix.len();
        if !prefix.is_empty() {
            prefix.push('.');
        }
        prefix.push_str(k);
        paths.insert(prefix.clone(), from_json(child, depth)?);
        index_paths(child, prefix, paths, depth)?;
        prefix.truncate(len);
    }
    Ok(())
}

struct JsonSeed {
    depth_left: usize,
}

impl<'de> serde::de::DeserializeSeed<'de> for JsonSeed {
    type Value = BoxVal<'static>;
    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> serde::de::Visitor<'de> for JsonSeed {
    type Value = BoxVal<'static>;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_unit<E>(self) -> Result<Self::Value, E> {
        Ok(Box::new(CelNull))
    }
    fn visit_bool<E>(self, b: bool) -> Result<Self::Value, E> {
        Ok(boolean(b))
    }
    fn visit_i64<E>(self, i: i64) -> Result<Self::Value, E> {
        Ok(int(i))
    }
    fn visit_u64<E>(self, u: u64) -> Result<Self::Value, E> {
        Ok(match i64::try_from(u) {
            Ok(i) => int(i),
            Err(_) => Box::new(cel::common::types::CelUInt::from(u)),
        })
    }
    fn visit_f64<E>(self, f: f64) -> Result<Self::Value, E> {
        Ok(Box::new(CelDouble::from(f)))
    }
    fn visit_str<E>(self, s: &str) -> Result<Self::Value, E> {
        Ok(string(s.to_owned()))
    }
    fn visit_string<E>(self, s: String) -> Result<Self::Value, E> {
        Ok(string(s))
    }
    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let depth_left = self.nested::<A::Error>()?;
        let mut items = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(64));
        while let Some(v) = seq.next_element_seed(JsonSeed { depth_left })? {
            items.push(v);
        }
        Ok(list(items))
    }
    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut m: A) -> Result<Self::Value, A::Error> {
        let depth_left = self.nested::<A::Error>()?;
        let mut entries: HashMap<CelMapKey<'static>, BoxVal<'static>> = HashMap::new();
        while let Some(k) = m.next_key::<String>()? {
            let v = m.next_value_seed(JsonSeed { depth_left })?;
            entries.insert(CelMapKey::from(k), v);
        }
        Ok(Box::new(CelMap::from(entries)))
    }
}

impl JsonSeed {
    fn nested<E: serde::de::Error>(&self) -> Result<usize, E> {
        self.depth_left
            .checked_sub(1)
            .ok_or_else(|| E::custom("JSON is nested too deeply"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_numbers_keep_their_types() {
        let text = r#"{"n":null,"b":true,"i":-7,"u":18446744073709551615,"f":0.5,"s":"é","a":[1,{"k":"v"}]}"#;
        let parsed: serde_json::Value = serde_json::from_str(text).unwrap();
        let a = from_json(&parsed, 8).unwrap();
        // Equality is heterogeneous across number types: check the types themselves.
        let field = |k: &str| a.as_indexer().unwrap().get(&CelString::from(k)).unwrap();
        assert!(field("i").downcast_ref::<CelInt>().is_some());
        assert!(field("u")
            .downcast_ref::<cel::common::types::CelUInt>()
            .is_some());
        assert!(field("f").downcast_ref::<CelDouble>().is_some());
    }

    #[test]
    fn json_depth_is_bounded() {
        let shallow: serde_json::Value = serde_json::from_str(r#"{"a":[{"b":1}]}"#).unwrap();
        assert!(from_json(&shallow, 3).is_ok());
        assert_eq!(from_json(&shallow, 2).err(), Some(TooDeep));
    }
}
