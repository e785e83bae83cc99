//! `body`: the JSON object of a request, converted to CEL values only as far as the
//! rules read it. The document is checked whole once (`json::read_object`: vLLM's
//! reading, or a refusal); each top-level field is converted the first time a rule
//! reads it, so a chat request's `messages` cost nothing unless a rule looks at them.

use std::sync::OnceLock;

use cel::common::types::{CelMap, CelMapKey};
use cel::common::value::Val;

use crate::json::{self, Malformed};
use crate::plain::Value;
use crate::policy::MalformedBody;
use crate::request::Request;
use crate::values::BoxVal;

/// A request's body as vLLM reads it: a JSON object when FastAPI would parse it
/// (`Request::is_json`), else empty; a JSON body any reader could read otherwise is
/// refused, or seen as empty where the policy says `malformed_body = "empty"`.
pub fn read_request<'a>(
    req: &Request<'a>,
    max_depth: usize,
    malformed: MalformedBody,
) -> Result<LazyBody<'a>, Malformed> {
    if req.body.is_empty() || !req.is_json() {
        return Ok(LazyBody::empty());
    }
    match LazyBody::read(req.body, max_depth) {
        Err(_) if malformed == MalformedBody::Empty => Ok(LazyBody::empty()),
        read => read,
    }
}

pub struct LazyBody<'a> {
    /// Top-level fields in document order; keys are unique (duplicates are refused).
    fields: Vec<json::Field<'a>>,
    values: Vec<OnceLock<BoxVal<'static>>>,
    whole: OnceLock<BoxVal<'static>>,
}

impl<'a> LazyBody<'a> {
    /// Reads a JSON body as vLLM would (the strict reader of `json.rs`); a body that any reader could
    /// read differently is refused.
    pub fn read(bytes: &'a [u8], max_depth: usize) -> Result<LazyBody<'a>, Malformed> {
        let fields = json::read_object(bytes, max_depth)?;
        Ok(LazyBody {
            values: fields.iter().map(|_| OnceLock::new()).collect(),
            fields,
            whole: OnceLock::new(),
        })
    }

    pub fn empty() -> LazyBody<'static> {
        LazyBody {
            fields: Vec::new(),
            values: Vec::new(),
            whole: OnceLock::new(),
        }
    }

    /// The top-level keys, in document order.
    pub fn keys(&self) -> impl Iterator<Item = &str> {
        self.fields.iter().map(|f| f.key.as_ref())
    }

    pub fn has(&self, key: &str) -> bool {
        self.position(key).is_some()
    }

    /// The raw field, for readers that need less than its value (the `llm` view).
    pub(crate) fn field(&self, key: &str) -> Option<&json::Field<'a>> {
        self.position(key).map(|i| &self.fields[i])
    }

    /// A top-level field's value, as a rule reads it.
    pub fn field_value(&self, key: &str) -> Option<Value> {
        self.get(key).map(Value::of_val)
    }

    /// The whole body as one map, as a rule that reads `body` itself sees it.
    pub fn to_value(&self) -> Value {
        Value::of_val(self.whole())
    }

    /// The value of a top-level field, converted on first use.
    pub(crate) fn get(&self, key: &str) -> Option<&(dyn Val + 'static)> {
        self.position(key).map(|i| self.value(i))
    }

    /// The whole body as one map, for rules that use `body` itself.
    pub(crate) fn whole(&self) -> &(dyn Val + 'static) {
        self.whole
            .get_or_init(|| {
                let mut m = std::collections::HashMap::with_capacity(self.fields.len());
                for (i, f) in self.fields.iter().enumerate() {
                    m.insert(
                        CelMapKey::from(f.key.to_string()),
                        self.value(i).clone_as_boxed(),
                    );
                }
                Box::new(CelMap::from(m))
            })
            .as_ref()
    }

    fn value(&self, i: usize) -> &(dyn Val + 'static) {
        self.values[i]
            .get_or_init(|| {
                // The span passed `json::read_object`, whose tokenizer `json::value`
                // shares: it cannot fail, and a field is never dropped. Should it ever,
                // the panic boundary turns this into a refused request (500).
                json::value(self.fields[i].raw)
                    .unwrap_or_else(|e| panic!("a checked body field did not convert: {e}"))
            })
            .as_ref()
    }

    fn position(&self, key: &str) -> Option<usize> {
        self.fields.iter().position(|f| f.key == key)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_convert_on_first_read() {
        let b = LazyBody::read(
            br#"{"model":"m","max_tokens":5,"messages":[{"role":"user"}],"we\u0069rd":1}"#,
            8,
        )
        .unwrap();
        assert!(b.has("model") && b.has("weird") && !b.has("stream"));
        assert!(b.values[2].get().is_none(), "messages untouched");
        assert!(b.get("model").is_some());
        assert!(b.values[0].get().is_some());
        assert!(b.values[2].get().is_none(), "still untouched");
    }

    #[test]
    fn every_field_a_presence_test_sees_is_in_the_whole_body() {
        let b = LazyBody::read(br#"{"a":1.5,"b":"\ud83d\ude00","c":[{"d":null}]}"#, 8).unwrap();
        let whole = b.whole().as_indexer().unwrap();
        for k in ["a", "b", "c"] {
            assert!(b.has(k));
            let key = cel::common::types::CelString::from(k);
            assert!(whole.get(&key).is_ok(), "{k} dropped from the whole body");
        }
    }

    #[test]
    fn malformed_deep_or_non_object_bodies_are_refused() {
        for bad in [
            &b"{"[..],
            b"[1]",
            b"\"s\"",
            b"{\"a\":1} trailing",
            b"{\"a\":[[[[1]]]]}",
            b"{\"a\":1e400}",
            b"{\"a\":\"\\ud800\"}",
        ] {
            assert!(
                LazyBody::read(bad, 4).is_err(),
                "{:?}",
                std::str::from_utf8(bad)
            );
        }
    }
}
