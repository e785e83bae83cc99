//! The native evaluator against cel running the program as written, over generated
//! expressions of the whole grammar the native form covers (`&&`, `||`, `!`, `?:`,
//! `==`, `!=`, `in` a literal list or a container, `<`…`>=`, `startsWith`, `endsWith`,
//! `contains`, `matches` with literals, `type(x) == int`, presence tests, field paths,
//! literals, and a cost's ternary over values) and generated JSON bodies. Whenever the
//! native evaluator answers, cel gives that same answer; the flattened program always
//! agrees with the program as written; and `native_eval = false` turns it off.

mod common;
use common::*;

use proptest::prelude::*;
use zt_policy_core::{GivenIdentity, Value};

fn path() -> impl Strategy<Value = String> {
    prop::sample::select(vec![
        "body.model",
        "body.max_tokens",
        "body.n",
        "body.stream",
        "body.o",
        "body.o.k",
        "body.o.l",
        "body.l",
        "body.absent",
        "request.method",
        "request.path",
        "request.size",
        "request.headers.accept",
        "claims.sub",
        "claims.groups",
        "claims.org.team",
        "llm.model",
        "llm.output_cap",
        "llm.sequences",
        "cert.subject.cn",
        "cert.subject.ou",
    ])
    .prop_map(str::to_owned)
}

fn literal() -> impl Strategy<Value = String> {
    prop_oneof![
        (-3i64..6).prop_map(|i| i.to_string()),
        (0u64..4).prop_map(|u| format!("{u}u")),
        prop::sample::select(vec![
            "'m'", "'POST'", "''", "'ml'", "true", "false", "null", "1.5", "2.0", "-0.0", "[]",
            "[1, 'm']", "{'k': 1}", "b'x'",
        ])
        .prop_map(str::to_owned),
    ]
}

fn operand() -> impl Strategy<Value = String> {
    prop_oneof![3 => path(), 2 => literal()]
}

fn leaf() -> impl Strategy<Value = String> {
    let cmp = prop::sample::select(vec!["==", "!=", "<", "<=", ">", ">="]);
    let strfn = prop::sample::select(vec!["startsWith", "endsWith", "contains", "matches"]);
    let needle = prop::sample::select(vec!["m", "", "POST", "^[a-z]+$", "\\\\d", "ml"]);
    prop_oneof![
        (operand(), cmp, operand()).prop_map(|(a, op, b)| format!("{a} {op} {b}")),
        (operand(), prop::collection::vec(literal(), 0..4))
            .prop_map(|(a, l)| format!("{a} in [{}]", l.join(", "))),
        (operand(), path()).prop_map(|(a, p)| format!("{a} in {p}")),
        (operand(), strfn, needle).prop_map(|(a, f, n)| format!("{a}.{f}('{n}')")),
        path().prop_map(|p| format!("has({p})")),
        operand().prop_map(|o| format!("type({o}) == int")),
        operand(),
    ]
}

fn boolean() -> impl Strategy<Value = String> {
    leaf().prop_recursive(4, 24, 3, |inner| {
        prop_oneof![
            (inner.clone(), inner.clone()).prop_map(|(a, b)| format!("({a}) && ({b})")),
            (inner.clone(), inner.clone()).prop_map(|(a, b)| format!("({a}) || ({b})")),
            inner.clone().prop_map(|a| format!("!({a})")),
            (inner.clone(), inner.clone(), inner)
                .prop_map(|(c, a, b)| format!("({c}) ? ({a}) : ({b})")),
        ]
    })
}

fn json_value() -> impl Strategy<Value = serde_json::Value> {
    use serde_json::json;
    let leaf = prop_oneof![
        (-3i64..6).prop_map(|i| json!(i)),
        prop::sample::select(vec![
            json!("m"),
            json!("ml"),
            json!(""),
            json!(true),
            json!(null),
            json!(1.5),
            json!(4096.0)
        ]),
    ];
    leaf.prop_recursive(2, 8, 3, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..3).prop_map(serde_json::Value::Array),
            prop::collection::btree_map(
                prop::sample::select(vec!["k", "l"]).prop_map(str::to_owned),
                inner,
                0..3
            )
            .prop_map(|m| serde_json::Value::Object(m.into_iter().collect())),
        ]
    })
}

fn body() -> impl Strategy<Value = String> {
    let keys = prop::sample::select(vec!["model", "max_tokens", "n", "stream", "o", "l"]);
    prop::collection::btree_map(keys.prop_map(str::to_owned), json_value(), 0..6)
        .prop_map(|m| serde_json::Value::Object(m.into_iter().collect()).to_string())
}

fn given() -> GivenIdentity {
    GivenIdentity {
        cert: Some(zt_policy_core::parse_der(&cert_der("alice")).unwrap()),
        claims: Some(serde_json::json!({"sub": "m", "groups": ["ml"], "org": {"team": "infra"}})),
    }
}

/// (native answers, cel answers alike) for one expression over one body.
fn compare(expr: &str, body: &str, native: bool) -> Result<(bool, bool), TestCaseError> {
    let policy = format!(
        "[settings]\nrequire_identity = false\nnative_eval = {native}\n[[rule]]\nname = \"r\"\neffect = \"allow\"\nwhen = '''{expr}'''\n[[limit]]\nname = \"l\"\nrate = \"1/s\"\ncost = '''({expr}) ? 1 : 2'''\n"
    );
    let e = match zt_policy_core::Engine::from_toml(
        &policy,
        "p.toml",
        zt_policy_core::EngineClock::manual(T0),
    ) {
        Ok(e) => e,
        Err(_) => return Ok((false, false)), // not an expression cel compiles
    };
    let mut req = Req::new("POST", "/v1/chat/completions")
        .json(body)
        .header("accept", "*/*");
    req.host = "ai.example.internal".into();
    let headers: Vec<(&str, &str)> = req
        .headers
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    let request = zt_policy_core::Request {
        method: &req.method,
        path: &req.path,
        headers: &headers,
        body: &req.body,
        body_size: req.body.len() as u64,
        ..Default::default()
    };
    let r = &e.compare_evaluations(&request, &given())[0];
    prop_assert_eq!(
        &r.flattened,
        &r.as_written,
        "flattened vs as written: {} over {}",
        expr,
        body
    );
    if let Some(b) = r.native_bool {
        prop_assert_eq!(
            &r.as_written,
            &Ok(Value::Bool(b)),
            "native: {} over {}",
            expr,
            body
        );
    }
    Ok((r.native_bool.is_some(), r.as_written.is_ok()))
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn native_answers_only_what_cel_answers(expr in boolean(), body in body()) {
        compare(&expr, &body, true)?;
    }

    #[test]
    fn turned_off_it_never_answers(expr in boolean(), body in body()) {
        let (answered, _) = compare(&expr, &body, false)?;
        prop_assert!(!answered, "native_eval = false, yet the native evaluator answered {}", expr);
    }
}

/// The generated expressions exercise the native evaluator, not only cel.
#[test]
fn the_generator_reaches_the_native_evaluator() {
    use proptest::strategy::ValueTree;
    let mut runner = proptest::test_runner::TestRunner::deterministic();
    let (mut native, mut total) = (0, 0);
    for _ in 0..500 {
        let expr = boolean().new_tree(&mut runner).unwrap().current();
        let body = body().new_tree(&mut runner).unwrap().current();
        if let Ok((answered, _)) = compare(&expr, &body, true) {
            native += usize::from(answered);
            total += 1;
        }
    }
    assert!(native > total / 10, "native answered {native} of {total}");
}
