//! Expressions run with field paths flattened (see `expr::flatten`); these tests pin
//! that the flattened form always agrees with the program as written, values and
//! errors alike, over every kind of access a rule can make.

mod common;
use common::*;
use serde_json::json;
use zt_policy_core::cert::parse_der;
use zt_policy_core::{GivenIdentity, Request};

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
];

fn run(body: &str) {
    let mut policy = String::from("[settings]\nrequire_identity = false\n");
    for (i, e) in EXPRESSIONS.iter().enumerate() {
        // `when` must be a bool for decisions, but the comparison looks at raw values.
        policy.push_str(&format!(
            "[[rule]]\nname = \"r{i}\"\neffect = \"allow\"\nwhen = '''{e}'''\n"
        ));
    }
    let e = engine(&policy);
    let headers = [
        ("content-type", "application/json"),
        ("accept", "*/*"),
        ("x_custom", "1"),
    ];
    let req = Request {
        method: "POST",
        path: "/v1/chat/completions",
        headers: &headers,
        body: body.as_bytes(),
        body_size: body.len() as u64,
        ..Default::default()
    };
    let given = GivenIdentity {
        cert: Some(parse_der(&cert_der("alice")).unwrap()),
        claims: Some(json!({
            "sub": "alice", "groups": ["ml"], "org": {"team": "infra"}, "dotted.key": 1
        })),
    };
    let results = e.compare_evaluations(&req, &given);
    assert_eq!(results.len(), EXPRESSIONS.len());
    let mut values = 0;
    for ((name, fast, written), expr) in results.iter().zip(EXPRESSIONS) {
        assert_eq!(fast, written, "{name}: {expr} over body {body}");
        values += usize::from(fast.is_ok());
    }
    // Both outcomes are exercised: the list has expressions that succeed and that fail.
    assert!(values > 10 && values < EXPRESSIONS.len(), "{values}");
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
