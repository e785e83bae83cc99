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

pub fn string_list(items: &[String]) -> BoxVal<'static> {
    list(items.iter().map(|s| string(s.clone())).collect())
}

pub fn map<'v, K: Into<CelMapKey<'v>>>(entries: Vec<(K, BoxVal<'v>)>) -> BoxVal<'v> {
    let mut m: HashMap<CelMapKey<'v>, BoxVal<'v>> = HashMap::with_capacity(entries.len());
    for (k, v) in entries {
        m.insert(k.into(), v);
    }
    Box::new(CelMap::from(m))
}

pub fn empty_map() -> BoxVal<'static> {
    map::<&'static str>(Vec::new())
}

/// JSON exceeded the nesting allowed for it.
#[derive(Debug, PartialEq, Eq)]
pub struct TooDeep;

/// Converts parsed JSON to a CEL value, refusing documents nested deeper than
/// `max_depth` (objects and arrays count one level each).
pub fn from_json(value: &serde_json::Value, max_depth: usize) -> Result<BoxVal<'static>, TooDeep> {
    convert(value, max_depth)
}

fn convert(value: &serde_json::Value, depth_left: usize) -> Result<BoxVal<'static>, TooDeep> {
    use serde_json::Value as J;
    Ok(match value {
        J::Null => Box::new(CelNull),
        J::Bool(b) => boolean(*b),
        J::Number(n) => {
            if let Some(i) = n.as_i64() {
                int(i)
            } else if let Some(u) = n.as_u64() {
                Box::new(cel::common::types::CelUInt::from(u))
            } else {
                Box::new(CelDouble::from(n.as_f64().unwrap_or(f64::NAN)))
            }
        }
        J::String(s) => string(s.clone()),
        J::Array(items) => {
            let depth = depth_left.checked_sub(1).ok_or(TooDeep)?;
            list(
                items
                    .iter()
                    .map(|v| convert(v, depth))
                    .collect::<Result<_, _>>()?,
            )
        }
        J::Object(fields) => {
            let depth = depth_left.checked_sub(1).ok_or(TooDeep)?;
            let mut entries = Vec::with_capacity(fields.len());
            for (k, v) in fields {
                entries.push((k.clone(), convert(v, depth)?));
            }
            map(entries)
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_depth_is_bounded() {
        let shallow: serde_json::Value = serde_json::from_str(r#"{"a":[{"b":1}]}"#).unwrap();
        assert!(from_json(&shallow, 3).is_ok());
        assert_eq!(from_json(&shallow, 2).err(), Some(TooDeep));
    }
}
