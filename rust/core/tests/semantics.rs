//! DESIGN.md "Decision semantics", one test per promise.

mod common;
use common::*;
use zt_policy_core::{Effect, Reason};

const BASE: &str = r#"
[settings]
require_identity = false
"#;

fn policy(rules: &str) -> String {
    format!("{BASE}\n{rules}")
}

#[test]
fn default_deny_when_no_allow_rule_matches() {
    let e = engine(&policy(
        r#"
[[rule]]
name = "only-models"
effect = "allow"
when = 'request.path == "/v1/models"'
"#,
    ));
    let d = Req::new("GET", "/v1/chat/completions").decide(&e);
    assert!(!d.allowed);
    assert_eq!((d.status, d.reason), (403, Reason::NoAllowRule));
    assert!(d.matched.is_empty());
    let d = Req::new("GET", "/v1/models").decide(&e);
    assert!(d.allowed, "{d:?}");
    assert_eq!((d.status, d.reason), (200, Reason::Allowed));
    assert_eq!(d.rule, Some("only-models"));
}

#[test]
fn deny_overrides_allow_whatever_the_order() {
    let allow = r#"
[[rule]]
name = "allow-all"
effect = "allow"
when = 'true'
"#;
    let deny = r#"
[[rule]]
name = "no-admin"
effect = "deny"
when = 'request.path.startsWith("/admin")'
"#;
    for rules in [format!("{allow}{deny}"), format!("{deny}{allow}")] {
        let e = engine(&policy(&rules));
        let d = Req::new("GET", "/admin/x").decide(&e);
        assert!(!d.allowed);
        assert_eq!((d.status, d.reason), (403, Reason::DeniedByRule));
        assert_eq!(d.rule, Some("no-admin"));
        let mut matched = d.matched.clone();
        matched.sort();
        assert_eq!(matched, vec!["allow-all", "no-admin"]);
        assert!(Req::new("GET", "/v1/models").decide(&e).allowed);
    }
}

#[test]
fn cel_error_in_deny_rule_denies() {
    let e = engine(&policy(
        r#"
[[rule]]
name = "allow-all"
effect = "allow"
when = 'true'

[[rule]]
name = "bad-deny"
effect = "deny"
when = 'request.headers["x-missing"] == "1"'
"#,
    ));
    let d = Req::new("GET", "/").decide(&e);
    assert!(!d.allowed);
    assert_eq!((d.status, d.reason), (403, Reason::DeniedByRule));
    assert_eq!(d.rule, Some("bad-deny"));
    assert_eq!(d.errors.len(), 1);
    assert_eq!(d.errors[0].rule, "bad-deny");
    assert!(
        d.message.contains("could not be evaluated"),
        "{}",
        d.message
    );
}

#[test]
fn cel_error_in_allow_rule_does_not_allow() {
    let e = engine(&policy(
        r#"
[[rule]]
name = "bad-allow"
effect = "allow"
when = 'request.headers["x-missing"] == "1"'
"#,
    ));
    let d = Req::new("GET", "/").decide(&e);
    assert!(!d.allowed);
    assert_eq!((d.status, d.reason), (403, Reason::NoAllowRule));
    assert_eq!(d.errors[0].rule, "bad-allow");
    // The same rule passes when the header is there: the error was the only reason.
    let d = Req::new("GET", "/").header("X-Missing", "1").decide(&e);
    assert!(d.allowed, "{d:?}");
}

#[test]
fn non_boolean_condition_is_an_error_not_a_match() {
    let e = engine(&policy(
        r#"
[[rule]]
name = "stringy"
effect = "allow"
when = 'request.path'
"#,
    ));
    let d = Req::new("GET", "/").decide(&e);
    assert!(!d.allowed);
    assert!(
        d.errors[0].error.contains("expected a bool"),
        "{:?}",
        d.errors
    );
}

#[test]
fn per_rule_status_and_message() {
    let e = engine(&policy(
        r#"
[[rule]]
name = "allow-all"
effect = "allow"
when = 'true'

[[rule]]
name = "cap-max-tokens"
effect = "deny"
status = 400
message = "max_tokens is capped at 4096"
when = 'has(body.max_tokens) && body.max_tokens > 4096'
"#,
    ));
    let d = Req::new("POST", "/v1/chat/completions")
        .json(r#"{"max_tokens": 5000}"#)
        .decide(&e);
    assert_eq!((d.status, d.reason), (400, Reason::DeniedByRule));
    assert_eq!(d.message, "max_tokens is capped at 4096");
    let d = Req::new("POST", "/v1/chat/completions")
        .json(r#"{"max_tokens": 10}"#)
        .decide(&e);
    assert!(d.allowed);
}

#[test]
fn missing_identity_is_401() {
    let e = engine(
        r#"
[[rule]]
name = "allow-all"
effect = "allow"
when = 'true'
"#,
    );
    let d = Req::new("GET", "/").decide(&e);
    assert_eq!(
        (d.status, d.reason, d.allowed),
        (401, Reason::NoIdentity, false)
    );
    let d = Req::new("GET", "/").cert("alice").decide(&e);
    assert!(d.allowed);
    assert_eq!(d.identity.as_deref(), Some("alice@example.com"));
}

#[test]
fn required_certificate_is_401_without_one() {
    let e = engine(
        r#"
[settings]
require_identity = false
[certificate]
required = true
[[rule]]
name = "allow-all"
effect = "allow"
when = 'true'
"#,
    );
    let d = Req::new("GET", "/").decide(&e);
    assert_eq!((d.status, d.reason), (401, Reason::NoIdentity));
    assert!(d.message.contains("client certificate is required"));
}

#[test]
fn body_over_limit_is_413_from_the_declared_size() {
    let e = engine(
        &policy(
            r#"
[settings]
require_identity = false
max_body = "1KiB"
[[rule]]
name = "allow-all"
effect = "allow"
when = 'true'
"#,
        )
        .replacen(BASE, "", 1),
    );
    // Declared size over the limit, nothing read yet: 413 all the same.
    let d = Req::new("POST", "/v1/chat/completions")
        .size(1025)
        .decide(&e);
    assert_eq!((d.status, d.reason), (413, Reason::BodyTooLarge));
    let d = Req::new("POST", "/v1/chat/completions")
        .size(1024)
        .decide(&e);
    assert!(d.allowed, "{d:?}");
    // More bytes than declared (chunked): the bytes count.
    let mut r = Req::new("POST", "/v1/chat/completions").size(0);
    r.body = vec![b'x'; 1025];
    assert_eq!(r.decide(&e).status, 413);
}

#[test]
fn audit_mode_computes_and_passes() {
    let e = engine(
        r#"
[settings]
mode = "audit"
require_identity = false
[[rule]]
name = "models"
effect = "allow"
when = 'request.path == "/v1/models"'
"#,
    );
    let d = Req::new("GET", "/secret").decide(&e);
    assert!(d.allowed && d.audit);
    assert_eq!(
        (d.effect, d.status, d.reason),
        (Effect::Deny, 403, Reason::NoAllowRule)
    );
    let d = Req::new("GET", "/").der(b"garbage").decide(&e);
    assert!(d.allowed && d.audit);
    assert_eq!(d.status, 401);
}

#[test]
fn identity_precedence_token_sub_then_san_email_then_cn() {
    let e = engine(&policy(
        r#"
[token]
issuer = "https://idp.example.internal"
audience = "local-ai"
[[rule]]
name = "allow-all"
effect = "allow"
when = 'true'
"#,
    ));
    e.set_jwks(&fixture("jwks.json")).unwrap();
    let token = jwt::sign_rs256(&jwt::claims("svc-42", T0));
    let d = Req::new("GET", "/").cert("alice").bearer(&token).decide(&e);
    assert_eq!(d.identity.as_deref(), Some("svc-42"));
    let d = Req::new("GET", "/").cert("alice").decide(&e);
    assert_eq!(d.identity.as_deref(), Some("alice@example.com"));
    let d = Req::new("GET", "/").cert("batch").decide(&e);
    assert_eq!(d.identity.as_deref(), Some("batch-eval"));
}

#[test]
fn the_cn_fallback_can_be_turned_off() {
    let e = engine(
        r#"
[certificate]
cn_identity = false
[[rule]]
name = "allow-all"
effect = "allow"
when = 'true'
"#,
    );
    // batch's certificate has no SAN email: without the CN it has no identity.
    let d = Req::new("GET", "/").cert("batch").decide(&e);
    assert_eq!((d.status, d.reason), (401, Reason::NoIdentity), "{d:?}");
    let d = Req::new("GET", "/").cert("alice").decide(&e);
    assert_eq!(d.identity.as_deref(), Some("alice@example.com"));
}

#[test]
fn identity_expression_is_the_key_rules_and_limits_see() {
    let e = engine(
        r#"
[settings]
identity = 'cert.spiffe_id'
[[rule]]
name = "svc"
effect = "allow"
when = 'identity.startsWith("spiffe://example.internal/svc/")'
"#,
    );
    let d = Req::new("GET", "/").cert("batch").decide(&e);
    assert!(d.allowed, "{d:?}");
    assert_eq!(
        d.identity.as_deref(),
        Some("spiffe://example.internal/svc/batch-eval")
    );
    let d = Req::new("GET", "/").cert("bob").decide(&e);
    // bob has no SPIFFE ID: the identity is empty, and identity is required.
    assert_eq!((d.status, d.reason), (401, Reason::NoIdentity));
}

#[test]
fn body_is_parsed_only_when_read_and_a_malformed_one_is_refused_before_rules() {
    let no_body = engine(&policy(
        r#"
[[rule]]
name = "allow-all"
effect = "allow"
when = 'true'
"#,
    ));
    assert!(!no_body.needs_body());
    let rules = r#"
[[rule]]
name = "llama-only"
effect = "allow"
when = 'has(body.model) && body.model == "llama"'
[[rule]]
name = "empty-body"
effect = "deny"
status = 400
when = 'size(body) == 0'
"#;
    let e = engine(&policy(rules));
    assert!(e.needs_body());
    assert!(
        Req::new("POST", "/")
            .json(r#"{"model":"llama"}"#)
            .decide(&e)
            .allowed
    );
    for bad in [r#"{"model":"llama""#, "not json", r#"["model"]"#] {
        let d = Req::new("POST", "/").json(bad).decide(&e);
        assert_eq!(
            (d.status, d.reason, d.rule),
            (400, Reason::MalformedBody, None),
            "{bad:?}"
        );
        assert!(d.matched.is_empty(), "no rule ran");
    }
    // No body at all is an empty one.
    let d = Req::new("POST", "/").json("").decide(&e);
    assert_eq!((d.status, d.rule), (400, Some("empty-body")));
    // JSON sent as another media type is not parsed (FastAPI does not parse it either).
    let mut r = Req::new("POST", "/").header("Content-Type", "text/plain");
    r.body = br#"{"model":"llama"}"#.to_vec();
    assert_eq!(r.decide(&e).rule, Some("empty-body"));
    // Without a Content-Type FastAPI parses JSON, and so does the engine.
    let mut r = Req::new("POST", "/");
    r.body = br#"{"model":"llama"}"#.to_vec();
    assert!(r.decide(&e).allowed);
    r.body = br#"{"model":"llama","model":"gpt"}"#.to_vec();
    assert_eq!(r.decide(&e).reason, Reason::MalformedBody);
    // Nesting deeper than max_json_depth (32 by default) is malformed.
    let deep = format!(
        r#"{{"model":"llama","x":{}{}}}"#,
        "[".repeat(40),
        "]".repeat(40)
    );
    let d = Req::new("POST", "/").json(&deep).decide(&e);
    assert_eq!((d.status, d.reason), (400, Reason::MalformedBody));
    // `malformed_body = "empty"` hands such bodies to the rules as `{}`.
    let lenient = engine(&format!(
        "[settings]\nrequire_identity = false\nmalformed_body = \"empty\"\n{rules}"
    ));
    let d = Req::new("POST", "/").json("not json").decide(&lenient);
    assert_eq!((d.status, d.rule), (400, Some("empty-body")));
}

#[test]
fn request_headers_are_lower_cased_and_repeats_joined() {
    let e = engine(&policy(
        r#"
[[rule]]
name = "hdr"
effect = "allow"
when = 'request.headers["x-team"] == "a, b" && request.method == "GET" && request.host == "ai.example.internal"'
"#,
    ));
    let d = Req::new("GET", "/")
        .header("X-Team", "a")
        .header("x-team", "b")
        .decide(&e);
    assert!(d.allowed, "{d:?}");
}

#[test]
fn decisions_name_every_matching_rule() {
    let e = engine(&policy(
        r#"
[[rule]]
name = "a"
effect = "allow"
when = 'true'
[[rule]]
name = "b"
effect = "allow"
when = 'request.method == "GET"'
[[rule]]
name = "c"
effect = "allow"
when = 'false'
"#,
    ));
    let d = Req::new("GET", "/").decide(&e);
    assert_eq!(d.matched, vec!["a", "b"]);
    assert_eq!(d.rule, Some("a"));
}

/// A claim key that is empty or holds a dot never makes a path: `{"": {"admin": true}}`
/// is not `claims.admin` (cel-go: no such key), and `{"a.b": 1}` is not `claims.a.b`.
#[test]
fn empty_and_dotted_claim_keys_make_no_paths() {
    let e = engine(&policy(
        r#"
[[rule]]
name = "admin"
effect = "allow"
when = 'claims.admin == true'
[[rule]]
name = "has-admin"
effect = "allow"
when = 'has(claims.admin)'
[[rule]]
name = "dotted"
effect = "allow"
when = 'claims.a.b == 1'
[[rule]]
name = "empty-key-by-index"
effect = "allow"
when = 'claims[""].admin == true'
"#,
    ));
    let given = zt_policy_core::GivenIdentity {
        cert: None,
        claims: Some(serde_json::json!({"sub": "x", "": {"admin": true}, "a.b": 1})),
    };
    let d = Req::new("GET", "/").decide_given(&e, &given);
    assert_eq!(d.matched, vec!["empty-key-by-index"], "{d:?}");
    let failed: Vec<&str> = d.errors.iter().map(|r| r.rule.as_str()).collect();
    assert_eq!(failed, ["admin", "dotted"], "no such key, as cel-go says");
}

#[test]
fn an_upgrade_is_allowed_only_by_a_rule_that_names_request_upgrade() {
    let e = engine(&policy(
        r#"
[[rule]]
name = "api"
effect = "allow"
when = 'request.path.startsWith("/v1/")'
[[rule]]
name = "realtime"
effect = "allow"
when = 'request.path == "/v1/realtime" && request.upgrade == "websocket"'
"#,
    ));
    let up = |path: &str, connection: &str, upgrade: &str| {
        Req::new("GET", path)
            .header("Connection", connection)
            .header("Upgrade", upgrade)
            .decide(&e)
    };
    let d = up("/v1/models", "Upgrade", "websocket");
    assert_eq!((d.status, d.reason), (403, Reason::NoAllowRule), "{d:?}");
    assert!(d
        .message
        .contains("(websocket) needs an allow rule that names request.upgrade"));
    assert_eq!(
        d.matched,
        vec!["api"],
        "the rule that matched is still named"
    );
    let d = up("/v1/realtime", "keep-alive, UPGRADE", "WebSocket");
    assert_eq!(d.rule, Some("realtime"), "{d:?}");
    let d = up("/v1/realtime", "upgrade", "h2c");
    assert_eq!(d.status, 403, "h2c is not websocket: {d:?}");
    // No Connection token: no upgrade (reverse_proxy drops the Upgrade header).
    let d = up("/v1/models", "keep-alive", "websocket");
    assert_eq!(d.rule, Some("api"), "{d:?}");
    // HTTP/2's extended CONNECT names its protocol in :protocol.
    let d = Req::new("CONNECT", "/v1/models")
        .header(":protocol", "websocket")
        .decide(&e);
    assert_eq!((d.status, d.reason), (403, Reason::NoAllowRule), "{d:?}");
}
