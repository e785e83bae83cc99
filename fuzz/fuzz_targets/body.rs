//! The body reader (vLLM's reading of JSON, or a refusal) and the `llm` view over it.
//! The first byte picks the Content-Type and the endpoint; every value read must
//! convert (a field `has()` sees is never missing from `body`).
#![no_main]

use libfuzzer_sys::fuzz_target;
use zt_policy_core::{read_body, Llm, MalformedBody, Request, Value};

const CONTENT_TYPES: [Option<&str>; 4] = [
    None,
    Some("application/json"),
    Some("text/plain"),
    Some("application/x+json; charset=utf-8"),
];
const PATHS: [&str; 4] = [
    "/v1/chat/completions",
    "/v1/completions",
    "/v1/chat/completions/batch",
    "/v1/embeddings",
];

fuzz_target!(|data: &[u8]| {
    let Some((&pick, body)) = data.split_first() else {
        return;
    };
    let headers: Vec<(&str, &str)> = CONTENT_TYPES[usize::from(pick & 3)]
        .map(|ct| ("content-type", ct))
        .into_iter()
        .collect();
    let path = PATHS[usize::from((pick >> 2) & 3)];
    let req = Request {
        method: "POST",
        path,
        headers: &headers,
        body,
        body_size: body.len() as u64,
        ..Default::default()
    };
    let malformed = if pick & 16 == 0 {
        MalformedBody::Refuse
    } else {
        MalformedBody::Empty
    };
    if let Ok(b) = read_body(&req, 32, malformed) {
        let keys: Vec<String> = b.keys().map(str::to_owned).collect();
        for k in &keys {
            assert!(b.has(k));
            assert!(b.field_value(k).is_some(), "{k} listed but not readable");
        }
        if let Value::Map(m) = b.to_value() {
            assert_eq!(m.len(), keys.len());
        } else {
            panic!("the whole body is not a map");
        }
        let _ = Llm::read(path, &b).to_json();
    }
});
