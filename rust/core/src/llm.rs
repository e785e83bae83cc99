//! `llm`: the request as vLLM will execute it, so policies and budgets need not
//! re-derive vLLM's API rules in CEL.
//!
//! Follows vLLM's OpenAI protocol (main branch at commit 002032e, 2026: `ChatCompletionRequest`,
//! `BatchChatCompletionRequest` and `CompletionRequest` with their `build_tok_params`):
//! - the output cap per sequence is `max_completion_tokens` when it is not null, else
//!   `max_tokens`; `/v1/completions` reads only `max_tokens`, 16 when it is absent.
//!   A cap that is null, 0 (vLLM's "unset") or negative leaves the output uncapped:
//!   vLLM then generates up to the context length, and `output_cap` is absent.
//! - sequences: `n` (default 1; with beam search, the beam width), or `best_of` where
//!   larger, per prompt; a `prompt` list of strings or of token-id lists is one
//!   completion per prompt, and so is each conversation of a batch of chats.
//! - numbers coerce as pydantic's lax `int` does: `4096`, `4096.0`, `"4096"`, `true`.
//!   A value it may read another way (`"4_096"`) counts as unknown: an unknown cap is
//!   uncapped and unknown sequences leave `max_output_tokens` absent, never smaller.

use crate::body::LazyBody;
use crate::json::{self, Number};

/// The `llm` variable's fields.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Llm {
    /// `chat`, `completions`, `chat_batch`, or `other` (by the request path).
    pub endpoint: &'static str,
    pub model: Option<String>,
    pub stream: Option<bool>,
    /// Tokens each sequence may generate; `None` when uncapped or unknown.
    pub output_cap: Option<u64>,
    /// Sequences generated; `None` when unknown.
    pub sequences: Option<u64>,
    /// `output_cap × sequences`.
    pub max_output_tokens: Option<u64>,
    /// Bytes of text the prompt carries (strings of `messages`, `prompt`, `tools`,
    /// `documents`, as written).
    pub prompt_bytes: u64,
    /// `ceil(prompt_bytes / 4)` plus the token ids of a token-id prompt.
    pub estimated_prompt_tokens: u64,
}

/// Counts saturate at CEL's largest int, so rules compare them with ints.
const INT_MAX: u64 = i64::MAX as u64;

/// vLLM's default `max_tokens` for `/v1/completions`.
const COMPLETIONS_DEFAULT_CAP: u64 = 16;

/// Fields whose strings are rendered into the prompt.
const PROMPT_FIELDS: [&str; 4] = ["messages", "prompt", "tools", "documents"];

impl Llm {
    pub fn read(path: &str, body: &LazyBody<'_>) -> Llm {
        let endpoint = match path {
            "/v1/chat/completions" => "chat",
            "/v1/completions" => "completions",
            "/v1/chat/completions/batch" => "chat_batch",
            _ => "other",
        };
        let output_cap = output_cap(endpoint, body);
        let sequences = sequences(body);
        let (strings, token_ids) =
            PROMPT_FIELDS
                .iter()
                .filter_map(|k| body.field(k))
                .fold((0u64, 0u64), |(s, i), f| {
                    let ids = if f.key == "prompt" { f.integers } else { 0 };
                    (s + f.string_bytes, i + ids)
                });
        Llm {
            endpoint,
            model: body
                .field("model")
                .and_then(|f| json::string(f.raw))
                .map(|s| s.into_owned()),
            stream: match body.field("stream") {
                None => Some(false),
                Some(f) => bool_field(f.raw),
            },
            output_cap,
            sequences,
            max_output_tokens: output_cap
                .zip(sequences)
                .map(|(c, s)| c.saturating_mul(s).min(INT_MAX)),
            prompt_bytes: strings,
            estimated_prompt_tokens: strings.div_ceil(4).saturating_add(token_ids),
        }
    }

    /// The fields as JSON, for the CEL variable; absent fields are left out, so
    /// `has(llm.output_cap)` says whether the request is capped.
    pub fn to_json(&self) -> serde_json::Value {
        let mut m = serde_json::Map::new();
        m.insert("endpoint".into(), self.endpoint.into());
        let mut opt = |k: &str, v: Option<serde_json::Value>| {
            if let Some(v) = v {
                m.insert(k.into(), v);
            }
        };
        opt("model", self.model.clone().map(Into::into));
        opt("stream", self.stream.map(Into::into));
        opt("output_cap", self.output_cap.map(Into::into));
        opt("sequences", self.sequences.map(Into::into));
        opt("max_output_tokens", self.max_output_tokens.map(Into::into));
        m.insert("prompt_bytes".into(), self.prompt_bytes.into());
        m.insert(
            "estimated_prompt_tokens".into(),
            self.estimated_prompt_tokens.into(),
        );
        serde_json::Value::Object(m)
    }
}

/// The cap per sequence; `None` when uncapped or unknown.
fn output_cap(endpoint: &str, body: &LazyBody<'_>) -> Option<u64> {
    let declared = if endpoint == "completions" {
        match body.field("max_tokens") {
            None => Some(Some(COMPLETIONS_DEFAULT_CAP as i64)),
            Some(f) => int_field(f.raw),
        }
    } else {
        match nullable_int(body, "max_completion_tokens") {
            Some(None) => nullable_int(body, "max_tokens"),
            other => other,
        }
    };
    // Unknown, null, and 0 or less (vLLM's "unset") are all uncapped.
    declared.flatten().filter(|n| *n > 0).map(|n| n as u64)
}

/// Sequences generated: `max(n, best_of)` per prompt, times the prompts.
fn sequences(body: &LazyBody<'_>) -> Option<u64> {
    let per_prompt = ["n", "best_of"]
        .iter()
        .map(|k| nullable_int(body, k).map(|n| n.unwrap_or(1).max(1) as u64))
        .try_fold(1u64, |acc, n| n.map(|n| acc.max(n)))?;
    Some(per_prompt.saturating_mul(prompts(body)).min(INT_MAX))
}

/// How many prompts a request carries: a `prompt` list of strings or of token-id
/// lists, or a batch of conversations, is one completion each.
fn prompts(body: &LazyBody<'_>) -> u64 {
    if let Some(items) = body.field("prompt").and_then(|f| f.items) {
        if items.integers == items.count {
            return 1; // one prompt of token ids
        }
        return items.count.max(1);
    }
    match body.field("messages").and_then(|f| f.items) {
        Some(items) if items.count > 0 && items.arrays == items.count => items.count,
        _ => 1,
    }
}

/// An optional int field: `None` when unknown, `Some(None)` when absent or null.
fn nullable_int(body: &LazyBody<'_>, key: &str) -> Option<Option<i64>> {
    match body.field(key) {
        None => Some(None),
        Some(f) => int_field(f.raw),
    }
}

/// pydantic's lax `int | None`: `Some(None)` for null, `None` when unknown.
fn int_field(raw: &[u8]) -> Option<Option<i64>> {
    if raw == b"null" {
        return Some(None);
    }
    let n = match raw {
        b"true" => 1,
        b"false" => 0,
        _ => match json::number(raw) {
            Some(n) => whole(n)?,
            None => numeric_string(&json::string(raw)?)?,
        },
    };
    Some(Some(n))
}

/// A JSON number as a whole i64, as pydantic takes it for an int.
fn whole(n: Number) -> Option<i64> {
    match n {
        Number::Int(i) => Some(i),
        Number::UInt(u) => i64::try_from(u).ok(),
        Number::Double(f) if f.fract() == 0.0 && f.abs() < 9.0e15 => Some(f as i64),
        Number::Double(_) => None,
    }
}

/// `"4096"`, `" 4096 "`, `"+4096"`, `"4096.0"`; other spellings are unknown.
fn numeric_string(s: &str) -> Option<i64> {
    let t = s.trim_matches([' ', '\t', '\n', '\r']);
    let int = match t.split_once('.') {
        Some((int, zeros)) if zeros.bytes().all(|b| b == b'0') => int,
        Some(_) => return None,
        None => t,
    };
    let digits = int.strip_prefix(['+', '-']).unwrap_or(int);
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    int.parse().ok()
}

/// Whether vLLM will stream this request's response without a usage chunk: a chat or
/// completions request with `stream` true and no `stream_options` at all. Only then can
/// `"stream_options":{"include_usage":true}` be added by inserting it before the
/// object's closing brace (`raw`, the body as sent, must end with it), which changes
/// nothing else vLLM reads.
pub(crate) fn streams_without_usage(path: &str, body: &LazyBody<'_>, raw: &[u8]) -> bool {
    matches!(path, "/v1/chat/completions" | "/v1/completions")
        && body.field("stream").and_then(|f| bool_field(f.raw)) == Some(true)
        && body.field("stream_options").is_none()
        && raw
            .iter()
            .rev()
            .find(|b| !matches!(b, b' ' | b'\t' | b'\n' | b'\r'))
            == Some(&b'}')
}

/// pydantic's lax `bool`: `None` when unknown (a request vLLM refuses).
fn bool_field(raw: &[u8]) -> Option<bool> {
    match raw {
        b"true" | b"1" | b"1.0" => return Some(true),
        b"false" | b"null" | b"0" | b"0.0" | b"-0" | b"-0.0" => return Some(false),
        _ => {}
    }
    let s = json::string(raw)?.to_ascii_lowercase();
    match s.as_str() {
        "1" | "on" | "t" | "true" | "y" | "yes" => Some(true),
        "0" | "off" | "f" | "false" | "n" | "no" => Some(false),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn llm(path: &str, body: &str) -> Llm {
        Llm::read(path, &LazyBody::read(body.as_bytes(), 8).unwrap())
    }

    #[test]
    fn the_cap_is_max_completion_tokens_else_max_tokens() {
        let chat = "/v1/chat/completions";
        assert_eq!(llm(chat, r#"{"max_tokens":100}"#).output_cap, Some(100));
        let both = llm(chat, r#"{"max_tokens":10,"max_completion_tokens":5000}"#);
        assert_eq!(both.output_cap, Some(5000));
        let null = llm(chat, r#"{"max_tokens":10,"max_completion_tokens":null}"#);
        assert_eq!(null.output_cap, Some(10));
        assert_eq!(llm(chat, "{}").output_cap, None, "uncapped");
        assert_eq!(llm(chat, r#"{"max_tokens":0}"#).output_cap, None);
        assert_eq!(llm(chat, r#"{"max_tokens":"4_096"}"#).output_cap, None);
        for coerced in [r#""4096""#, "4096.0", r#"" 4096.00 ""#] {
            let body = format!(r#"{{"max_tokens":{coerced}}}"#);
            assert_eq!(llm(chat, &body).output_cap, Some(4096), "{body}");
        }
        let c = "/v1/completions";
        assert_eq!(llm(c, "{}").output_cap, Some(16));
        assert_eq!(llm(c, r#"{"max_tokens":null}"#).output_cap, None);
        assert_eq!(
            llm(c, r#"{"max_completion_tokens":3}"#).output_cap,
            Some(16)
        );
    }

    #[test]
    fn sequences_multiply_the_cap() {
        let c = "/v1/completions";
        let l = llm(c, r#"{"prompt":["a","b","c"],"n":2,"max_tokens":10}"#);
        assert_eq!((l.sequences, l.max_output_tokens), (Some(6), Some(60)));
        let ids = llm(c, r#"{"prompt":[1,2,3],"max_tokens":10}"#);
        assert_eq!((ids.sequences, ids.estimated_prompt_tokens), (Some(1), 3));
        let lists = llm(c, r#"{"prompt":[[1,2],[3]],"best_of":4,"n":2}"#);
        assert_eq!(lists.sequences, Some(8));
        let batch = llm(
            "/v1/chat/completions/batch",
            r#"{"messages":[[{"role":"user","content":"a"}],[]],"max_tokens":7}"#,
        );
        assert_eq!(batch.max_output_tokens, Some(14));
        let unknown = llm("/v1/chat/completions", r#"{"n":"two","max_tokens":7}"#);
        assert_eq!((unknown.sequences, unknown.max_output_tokens), (None, None));
    }

    #[test]
    fn model_stream_and_prompt_size() {
        let l = llm(
            "/v1/chat/completions",
            r#"{"model":"m","stream":"yes","messages":[{"role":"user","content":"12345678"}]}"#,
        );
        assert_eq!(l.model.as_deref(), Some("m"));
        assert_eq!(l.stream, Some(true));
        assert_eq!((l.prompt_bytes, l.estimated_prompt_tokens), (12, 3));
        assert_eq!(llm("/x", r#"{"model":5,"stream":2}"#).model, None);
        assert_eq!(llm("/x", r#"{"stream":2}"#).stream, None);
    }
}
