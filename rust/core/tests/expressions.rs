//! Expressions run with field paths flattened (see `expr::flatten`) and, where the
//! native evaluator answers (see `native`), without cel; these tests pin that the
//! flattened form always agrees with the program as written, values and errors alike,
//! and that whenever the native evaluator answers, cel gives that same answer, over
//! every kind of access a rule can make and every shape the native form covers.

mod common;
use common::*;
use serde_json::json;
use zt_policy_core::parse_der;
use zt_policy_core::{GivenIdentity, Request, Value};

const EXPRESSIONS: &[&str] = &[
    "cert.subject.cn",
    "cert.subject.ou",
    "cert.san.email[0]",
    "cert.san.email.size()",
    "cert.subject.nme",
    "cert.subject.cn.nope",
    "has(cert.subject)",
    "has(cert.subject.cn)",
    "has(cert.subject.nme)",
    "has(cert.nothing.deeper)",
    "cert.present && cert.not_after > 0",
    "claims.sub",
    "claims.groups",
    "has(claims.groups) && 'ml' in claims.groups",
    "has(claims.missing)",
    "has(claims.org.team)",
    "has(claims.org.nope.deeper)",
    "claims.org.team",
    "claims['dotted.key']",
    "claims.missing",
    "body.model",
    "body.max_tokens + 1",
    "has(body.model)",
    "has(body.stream)",
    "body.messages[0].role",
    "body.messages.exists(m, m.role == 'system')",
    "has(body.options.temperature)",
    "has(body.options.top_p)",
    "body.options.temperature",
    "has(body.model.x)",
    "size(body)",
    "body.nothing",
    "request.method",
    "request.path.startsWith('/v1/')",
    "request.headers['content-type']",
    "request.headers.x_custom",
    "has(request.headers.accept)",
    "has(request.headers.absent)",
    "has(request.method)",
    "request.size",
    "request.nothing",
    "identity",
    "claims.groups.exists(cert, cert == 'ml')",
    "[cert.subject.cn, claims.sub].all(x, x != '')",
    "{'a': cert.subject.cn}.a",
    "type(body.max_tokens) == int",
    // The shapes the native evaluator answers, and type mixes it must leave to cel.
    r#"request.method == "POST" && request.path in ["/v1/chat/completions", "/v1/completions"]"#,
    r#"cert.issuer.cn != "zt-policy Example Device CA" || !("Example Corp" in cert.issuer.o)"#,
    r#""ml-users" in cert.subject.ou || (has(claims.groups) && "ml" in claims.groups)"#,
    r#"request.method == "POST" && request.path.startsWith("/v1/") && !has(body.model)"#,
    r#"has(body.model) && !(body.model in ["m", "qwen2.5-7b-instruct"])"#,
    "has(body.max_tokens) && !(type(body.max_tokens) == int && body.max_tokens >= 1 && body.max_tokens <= 4096)",
    "has(body.max_tokens) ? body.max_tokens : 1024",
    "has(body.model) ? body.model == 'm' : false",
    "body.max_tokens > 1.5",
    "body.max_tokens < 5u",
    "body.max_tokens == 5.0",
    "body.max_tokens in [5.0, 'x']",
    "body.model in [1, 'm']",
    "body.model == 1",
    "body.model != 1",
    "body.model > 'a'",
    "body.model < 1",
    "request.size >= 0",
    "!request.method",
    "request.method && true",
    "false && request.method",
    "request.method || true",
    "true || body.nothing",
    "body.nothing || true",
    "body.nothing && false",
    "body.nothing == 'x'",
    "body.stream ? 1 : 2",
    "body.model ? true : false",
    "body.model.startsWith('m')",
    "body.model.endsWith('x')",
    "body.model.contains('')",
    "body.max_tokens.startsWith('5')",
    "request.path.matches('^/v1/[a-z/]+$')",
    "cert.subject.ou.contains('ml-users')",
    "'infra' in claims.org",
    "'team' in claims.org",
    "'x' in request.method",
    "claims.sub in claims.groups",
    "type(body.model) == int",
    "type(body.nothing) == int",
    "identity == 'alice'",
    "cert.present",
    "cert.present == true",
    "claims.groups.exists(g, g == 'ml') && request.method == 'POST'",
    "[1, 2].size() == 2 || false",
    "body.messages[0].role == 'system'",
    "body.max_tokens * 2 > 9",
];

fn policy_of(expressions: &[&str]) -> String {
    let mut policy = String::from("[settings]\nrequire_identity = false\n");
    for (i, e) in expressions.iter().enumerate() {
        // `when` must be a bool for decisions, but the comparison looks at raw values.
        policy.push_str(&format!(
            "[[rule]]\nname = \"r{i}\"\neffect = \"allow\"\nwhen = '''{e}'''\n"
        ));
    }
    policy
}

fn request() -> (Vec<(&'static str, &'static str)>, GivenIdentity) {
    let headers = vec![
        ("content-type", "application/json"),
        ("accept", "*/*"),
        ("x_custom", "1"),
    ];
    let given = GivenIdentity {
        cert: Some(parse_der(&cert_der("alice")).unwrap()),
        claims: Some(json!({
            "sub": "alice", "groups": ["ml"], "org": {"team": "infra"}, "dotted.key": 1
        })),
    };
    (headers, given)
}

fn chat<'a>(headers: &'a [(&'a str, &'a str)], body: &'a str) -> Request<'a> {
    Request {
        method: "POST",
        path: "/v1/chat/completions",
        headers,
        body: body.as_bytes(),
        body_size: body.len() as u64,
        ..Default::default()
    }
}

fn run(body: &str) {
    let e = engine(&policy_of(EXPRESSIONS));
    let (headers, given) = request();
    let req = chat(&headers, body);
    let results = e.compare_evaluations(&req, &given);
    assert_eq!(results.len(), EXPRESSIONS.len());
    let (mut values, mut native, mut native_true) = (0, 0, 0);
    for (r, expr) in results.iter().zip(EXPRESSIONS) {
        let context = format!("{}: {expr} over body {body}", r.rule);
        assert_eq!(r.flattened, r.as_written, "{context}");
        values += usize::from(r.flattened.is_ok());
        if let Some(b) = r.native_bool {
            assert_eq!(r.as_written, Ok(Value::Bool(b)), "native: {context}");
            native += 1;
            native_true += usize::from(b);
        }
        if let Some(n) = r.native_u64 {
            let written = &r.as_written;
            assert!(
                *written == Ok(Value::Int(n as i64)) || *written == Ok(Value::Uint(n)),
                "native u64 {n} against {written:?}: {context}"
            );
        }
    }
    // Every outcome is exercised: expressions that succeed and that fail, and native
    // answers both true and false.
    assert!(values > 10 && values < EXPRESSIONS.len(), "{values}");
    assert!(
        native > 15 && native_true > 3 && native - native_true > 3,
        "native answers: {native}, true: {native_true}"
    );
}

#[test]
fn flattened_paths_agree_with_the_program_as_written() {
    run(
        r#"{"model":"m","max_tokens":5,"stream":false,"options":{"temperature":0.5},"messages":[{"role":"system","content":"x"}]}"#,
    );
}

#[test]
fn they_agree_on_a_malformed_body_too() {
    run(r#"{"model": "#);
}

#[test]
fn they_agree_on_an_empty_body() {
    run("");
}

#[test]
fn they_agree_on_unexpected_types() {
    run(r#"{"model":7,"max_tokens":"5","stream":"yes","messages":{"role":1}}"#);
}

/// The example policy's rules never fall back to cel on its happy path.
#[test]
fn the_example_policy_runs_natively() {
    let example = [
        r#"cert.issuer.cn != "zt-policy Example Device CA" || !("Example Corp" in cert.issuer.o)"#,
        r#"request.method == "POST" && request.path in ["/v1/chat/completions", "/v1/completions"] && ("ml-users" in cert.subject.ou || (has(claims.groups) && "ml-users" in claims.groups))"#,
        r#"request.method == "GET" && request.path == "/v1/models" && ("ml-users" in cert.subject.ou || "sre" in cert.subject.ou)"#,
        r#"request.method == "POST" && request.path.startsWith("/v1/") && !has(llm.model)"#,
        r#"has(llm.model) && !(llm.model in ["llama-3.1-8b-instruct", "qwen2.5-7b-instruct"])"#,
        r#"request.method == "POST" && llm.endpoint in ["chat", "completions"] && !has(llm.max_output_tokens)"#,
        "has(llm.output_cap) && llm.output_cap > 4096",
        "has(llm.sequences) && llm.sequences > 4",
        r#"request.path.startsWith("/v1/")"#,
        "has(llm.max_output_tokens) ? llm.max_output_tokens : 1024",
    ];
    let e = engine(&policy_of(&example));
    let body = r#"{"model":"llama-3.1-8b-instruct","max_tokens":64,"n":2}"#;
    let (headers, given) = request();
    let req = chat(&headers, body);
    let results = e.compare_evaluations(&req, &given);
    for r in &results[..9] {
        let b = r
            .native_bool
            .unwrap_or_else(|| panic!("{} fell back to cel", r.rule));
        assert_eq!(r.as_written, Ok(Value::Bool(b)), "{}", r.rule);
    }
    assert_eq!(results[9].native_u64, Some(128));
}
