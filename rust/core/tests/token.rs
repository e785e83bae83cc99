//! `claims`: JWT verification against a JWKS, one test per attack.

mod common;
use common::jwt::{self, b64};
use common::*;
use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use serde_json::json;
use zt_policy_core::Reason;
use zt_policy_core::{TokenError, TokenSettings, Verifier};

fn verifier() -> Verifier {
    let v = Verifier::new(TokenSettings {
        issuer: "https://idp.example.internal".into(),
        audiences: vec!["local-ai".into()],
        leeway_secs: 30,
        max_bytes: 8192,
        cache_size: 100,
        max_claims_depth: 32,
    });
    let summary = v.set_jwks(&fixture("jwks.json")).unwrap();
    assert_eq!(summary.loaded, 2);
    v
}

#[test]
fn valid_rs256_and_es256_tokens_verify() {
    let v = verifier();
    let t = v
        .verify(&jwt::sign_rs256(&jwt::claims("alice", T0)), T0)
        .unwrap();
    assert_eq!(t.subject(), Some("alice"));
    // The EC key has no alg in the JWKS: ES256 is implied by its curve.
    let t = v
        .verify(&jwt::sign_es256(&jwt::claims("bob", T0)), T0)
        .unwrap();
    assert_eq!(t.subject(), Some("bob"));
}

#[test]
fn alg_none_is_refused() {
    let v = verifier();
    let header = b64(br#"{"alg":"none","typ":"JWT"}"#);
    let payload = b64(jwt::claims("alice", T0).to_string().as_bytes());
    for token in [
        format!("{header}.{payload}."),
        format!("{header}.{payload}"),
    ] {
        let err = v.verify(&token, T0).err().unwrap();
        assert!(
            matches!(err, TokenError::AlgNone | TokenError::Malformed(_)),
            "{err:?}"
        );
    }
    let err = v.verify(&format!("{header}.{payload}."), T0).err().unwrap();
    assert_eq!(err, TokenError::AlgNone);
}

#[test]
fn hs256_signed_with_the_rsa_public_key_is_refused() {
    let v = verifier();
    let mut h = Header::new(Algorithm::HS256);
    h.kid = Some("rsa-1".into());
    let key = EncodingKey::from_secret(&fixture("rsa-public.pem")).unwrap();
    let token = encode(&h, &jwt::claims("alice", T0), &key).unwrap();
    let err = v.verify(&token, T0).err().unwrap();
    assert!(
        matches!(&err, TokenError::AlgorithmMismatch { token, key, .. } if token == "HS256" && key == "RS256"),
        "{err:?}"
    );
}

#[test]
fn unknown_kid_is_refused() {
    let v = verifier();
    let mut h = Header::new(Algorithm::RS256);
    h.kid = Some("rotated-away".into());
    let token = encode(&h, &jwt::claims("alice", T0), &jwt::rsa_key()).unwrap();
    assert_eq!(
        v.verify(&token, T0).err(),
        Some(TokenError::UnknownKid("rotated-away".into()))
    );
}

#[test]
fn expired_and_not_yet_valid_respect_the_leeway() {
    let v = verifier();
    let mut c = jwt::claims("alice", T0);
    c["exp"] = json!(T0 - 31);
    assert!(matches!(
        v.verify(&jwt::sign_rs256(&c), T0),
        Err(TokenError::Expired { .. })
    ));
    c["exp"] = json!(T0 - 29);
    assert!(v.verify(&jwt::sign_rs256(&c), T0).is_ok(), "within leeway");
    let mut c = jwt::claims("alice", T0);
    c["nbf"] = json!(T0 + 31);
    assert!(matches!(
        v.verify(&jwt::sign_rs256(&c), T0),
        Err(TokenError::NotYetValid { .. })
    ));
    c["nbf"] = json!(T0 + 29);
    assert!(v.verify(&jwt::sign_rs256(&c), T0).is_ok(), "within leeway");
}

#[test]
fn wrong_audience_and_wrong_issuer_are_refused() {
    let v = verifier();
    let mut c = jwt::claims("alice", T0);
    c["aud"] = json!(["other-app"]);
    assert!(matches!(
        v.verify(&jwt::sign_rs256(&c), T0),
        Err(TokenError::WrongAudience { .. })
    ));
    c["aud"] = json!(["other-app", "local-ai"]);
    assert!(
        v.verify(&jwt::sign_rs256(&c), T0).is_ok(),
        "one matching audience is enough"
    );
    let mut c = jwt::claims("alice", T0);
    c.as_object_mut().unwrap().remove("aud");
    assert!(matches!(
        v.verify(&jwt::sign_rs256(&c), T0),
        Err(TokenError::WrongAudience { .. })
    ));
    let mut c = jwt::claims("alice", T0);
    c["iss"] = json!("https://evil.example");
    assert!(matches!(
        v.verify(&jwt::sign_rs256(&c), T0),
        Err(TokenError::WrongIssuer { .. })
    ));
}

#[test]
fn missing_exp_is_refused() {
    let v = verifier();
    let mut c = jwt::claims("alice", T0);
    c.as_object_mut().unwrap().remove("exp");
    assert_eq!(
        v.verify(&jwt::sign_rs256(&c), T0).err(),
        Some(TokenError::MissingExp)
    );
}

#[test]
fn tampered_payload_is_refused() {
    let v = verifier();
    let token = jwt::sign_rs256(&jwt::claims("alice", T0));
    let parts: Vec<&str> = token.split('.').collect();
    let mut c = jwt::claims("alice", T0);
    c["groups"] = json!(["admins"]);
    let forged = format!(
        "{}.{}.{}",
        parts[0],
        b64(c.to_string().as_bytes()),
        parts[2]
    );
    assert_eq!(v.verify(&forged, T0).err(), Some(TokenError::BadSignature));
    // The genuine token verified first must not make the forgery a cache hit.
    assert!(v.verify(&token, T0).is_ok());
    assert_eq!(v.verify(&forged, T0).err(), Some(TokenError::BadSignature));
}

#[test]
fn malformed_base64_and_shapes_are_refused() {
    let v = verifier();
    let token = jwt::sign_rs256(&jwt::claims("alice", T0));
    let parts: Vec<&str> = token.split('.').collect();
    for bad in [
        format!("!!!.{}.{}", parts[1], parts[2]),
        format!("{}.%%%.{}", parts[0], parts[2]),
        format!("{}.{}.***", parts[0], parts[1]),
        "only-one-part".to_owned(),
        format!("{}.{}", parts[0], parts[1]),
        format!("{token}.extra"),
        format!("{}.{}.{}", b64(b"not json"), parts[1], parts[2]),
    ] {
        let err = v
            .verify(&bad, T0)
            .err()
            .unwrap_or_else(|| panic!("accepted {bad}"));
        assert!(
            matches!(err, TokenError::Malformed(_) | TokenError::BadSignature),
            "{bad}: {err:?}"
        );
    }
}

#[test]
fn oversized_token_is_refused_before_decoding() {
    let v = verifier();
    let mut c = jwt::claims("alice", T0);
    c["padding"] = json!("x".repeat(9000));
    let err = v.verify(&jwt::sign_rs256(&c), T0).err().unwrap();
    assert!(
        matches!(err, TokenError::TooLarge { max: 8192, .. }),
        "{err:?}"
    );
}

#[test]
fn verified_tokens_are_cached_but_never_past_exp() {
    let v = verifier();
    let token = jwt::sign_rs256(&jwt::claims("alice", T0));
    let a = v.verify(&token, T0).unwrap();
    let b = v.verify(&token, T0 + 10).unwrap();
    assert!(
        std::sync::Arc::ptr_eq(&a, &b),
        "second verify is a cache hit"
    );
    assert_eq!(v.cached_tokens(), 1);
    // exp is T0+300, leeway 30.
    assert!(matches!(
        v.verify(&token, T0 + 331),
        Err(TokenError::Expired { .. })
    ));
    assert_eq!(v.cached_tokens(), 0, "expired entry is dropped");
}

#[test]
fn new_jwks_drops_cached_tokens_of_removed_keys() {
    let v = verifier();
    let token = jwt::sign_rs256(&jwt::claims("alice", T0));
    assert!(v.verify(&token, T0).is_ok());
    let jwks: serde_json::Value = serde_json::from_slice(&fixture("jwks.json")).unwrap();
    let only_ec = json!({"keys": [jwks["keys"][1].clone()]});
    v.set_jwks(only_ec.to_string().as_bytes()).unwrap();
    assert_eq!(
        v.verify(&token, T0).err(),
        Some(TokenError::UnknownKid("rsa-1".into()))
    );
}

#[test]
fn jwks_with_only_unusable_keys_is_an_error() {
    let v = verifier();
    let err = v
        .set_jwks(br#"{"keys":[{"kty":"oct","k":"c2VjcmV0","kid":"h"}]}"#)
        .unwrap_err();
    assert!(err.to_string().contains("symmetric"), "{err}");
    assert!(v.set_jwks(b"{").is_err());
    // The previous good set is still in force.
    assert_eq!(v.key_count(), 2);
}

/// An engine that verifies the test IdP's tokens, with one allow rule.
fn token_engine(allow_when: &str) -> zt_policy_core::Engine {
    let e = engine(&format!(
        "[token]\nissuer = \"https://idp.example.internal\"\naudience = \"local-ai\"\n\
         [[rule]]\nname = \"allow\"\neffect = \"allow\"\nwhen = '{allow_when}'\n"
    ));
    e.set_jwks(&fixture("jwks.json")).unwrap();
    e
}

#[test]
fn invalid_token_through_the_engine_is_401_naming_the_problem() {
    let e = token_engine(r#""ml-users" in claims.groups"#);
    let good = jwt::sign_rs256(&jwt::claims("alice", T0));
    let d = Req::new("GET", "/").bearer(&good).decide(&e);
    assert!(d.allowed, "{d:?}");
    let mut c = jwt::claims("alice", T0);
    c["exp"] = json!(T0 - 100);
    let d = Req::new("GET", "/").bearer(&jwt::sign_rs256(&c)).decide(&e);
    assert_eq!((d.status, d.reason), (401, Reason::InvalidToken));
    assert!(d.message.contains("expired"), "{}", d.message);
    // A presented token that fails is never downgraded to "no token".
    let d = Req::new("GET", "/")
        .cert("alice")
        .bearer("garbage")
        .decide(&e);
    assert_eq!(d.status, 401);
    // The clock the engine reads is the injected one: move it past exp.
    e.clock().advance(std::time::Duration::from_secs(331));
    let d = Req::new("GET", "/").bearer(&good).decide(&e);
    assert_eq!((d.status, d.reason), (401, Reason::InvalidToken));
}

fn x5t(der: &[u8]) -> String {
    use sha2::Digest;
    b64(&sha2::Sha256::digest(der))
}

const BOUND_POLICY: &str = r#"
[token]
issuer = "https://idp.example.internal"
audience = "local-ai"
[[rule]]
name = "ml"
effect = "allow"
when = '"ml-users" in claims.groups'
"#;

#[test]
fn certificate_bound_token_works_only_with_its_certificate() {
    let e = engine(BOUND_POLICY);
    e.set_jwks(&fixture("jwks.json")).unwrap();
    let mut c = jwt::claims("svc", T0);
    c["cnf"] = json!({"x5t#S256": x5t(&cert_der("alice"))});
    let token = jwt::sign_rs256(&c);
    let d = Req::new("GET", "/").cert("alice").bearer(&token).decide(&e);
    assert!(d.allowed, "{d:?}");
    let d = Req::new("GET", "/").cert("bob").bearer(&token).decide(&e);
    assert_eq!((d.status, d.reason), (401, Reason::InvalidToken));
    assert!(
        d.message.contains("bound to another client certificate"),
        "{}",
        d.message
    );
    let d = Req::new("GET", "/").bearer(&token).decide(&e);
    assert_eq!(d.status, 401, "a bound token without any certificate");
    // Unbound tokens are fine unless the policy requires binding.
    let plain = jwt::sign_rs256(&jwt::claims("svc", T0));
    assert!(
        Req::new("GET", "/")
            .cert("bob")
            .bearer(&plain)
            .decide(&e)
            .allowed
    );
    let strict = engine(&BOUND_POLICY.replace(
        "audience = \"local-ai\"",
        "audience = \"local-ai\"\ncertificate_bound = true",
    ));
    strict.set_jwks(&fixture("jwks.json")).unwrap();
    let d = Req::new("GET", "/")
        .cert("bob")
        .bearer(&plain)
        .decide(&strict);
    assert_eq!(d.status, 401);
    assert!(d.message.contains("not bound"), "{}", d.message);
    assert!(
        Req::new("GET", "/")
            .cert("alice")
            .bearer(&token)
            .decide(&strict)
            .allowed
    );
}

#[test]
fn unknown_key_decisions_ask_for_a_jwks_refetch() {
    let e = engine(BOUND_POLICY);
    e.set_jwks(&fixture("jwks.json")).unwrap();
    let mut h = Header::new(Algorithm::RS256);
    h.kid = Some("next-key".into());
    let token = encode(&h, &jwt::claims("alice", T0), &jwt::rsa_key()).unwrap();
    let d = Req::new("GET", "/").bearer(&token).decide(&e);
    assert!(d.jwks_miss && d.status == 401, "{d:?}");
    let d = Req::new("GET", "/").bearer("garbage").decide(&e);
    assert!(!d.jwks_miss, "a malformed token is no reason to refetch");
}

#[test]
fn the_caller_can_configure_the_issuer_of_a_policy_without_token_table() {
    let mut e = engine("[settings]\nrequire_identity = false\n[[rule]]\nname = \"ml\"\neffect = \"allow\"\nwhen = 'has(claims.groups) && \"ml-users\" in claims.groups'\n");
    e.configure_token(
        "https://idp.example.internal".into(),
        vec!["local-ai".into()],
    );
    e.set_jwks(&fixture("jwks.json")).unwrap();
    let good = jwt::sign_rs256(&jwt::claims("alice", T0));
    assert!(Req::new("GET", "/").bearer(&good).decide(&e).allowed);
    let mut c = jwt::claims("alice", T0);
    c["iss"] = json!("https://other.example");
    assert_eq!(
        Req::new("GET", "/")
            .bearer(&jwt::sign_rs256(&c))
            .decide(&e)
            .status,
        401
    );
}

#[test]
fn cnf_binds_by_x5t_s256_only_and_anything_else_is_refused() {
    let v = verifier();
    let with_cnf = |cnf: serde_json::Value| {
        let mut c = jwt::claims("alice", T0);
        c["cnf"] = cnf;
        v.verify(&jwt::sign_rs256(&c), T0)
    };
    assert!(with_cnf(json!({"x5t#S256": "abc"})).is_ok());
    for (cnf, want) in [
        (json!({"x5t#S256": 5}), TokenError::BadClaim("cnf.x5t#S256")),
        (
            json!({"x5t#S256": null}),
            TokenError::BadClaim("cnf.x5t#S256"),
        ),
        (
            json!({"x5t#S256": ["abc"]}),
            TokenError::BadClaim("cnf.x5t#S256"),
        ),
        (
            json!({"jkt": "0ZcOCORZNYy-DWpqq30jZyJGHTN0d2HglBV3uiguA4I"}),
            TokenError::UnsupportedBinding("jkt".into()),
        ),
        (
            json!({"x5t#S256": "abc", "jkt": "x"}),
            TokenError::UnsupportedBinding("jkt".into()),
        ),
        (
            json!({"jwk": {"kty": "EC"}}),
            TokenError::UnsupportedBinding("jwk".into()),
        ),
        (json!({}), TokenError::BadClaim("cnf")),
        (json!("abc"), TokenError::BadClaim("cnf")),
        (json!(null), TokenError::BadClaim("cnf")),
    ] {
        assert_eq!(with_cnf(cnf.clone()).err(), Some(want), "{cnf}");
    }
}

#[test]
fn iat_beyond_the_leeway_in_the_future_is_refused() {
    let v = verifier();
    let with_iat = |iat: serde_json::Value| {
        let mut c = jwt::claims("alice", T0);
        c["iat"] = iat;
        v.verify(&jwt::sign_rs256(&c), T0)
    };
    assert!(with_iat(json!(T0 + 30)).is_ok(), "within the leeway");
    assert_eq!(
        with_iat(json!(T0 + 31)).err(),
        Some(TokenError::IssuedInFuture {
            iat: T0 + 31,
            now: T0
        })
    );
    assert_eq!(
        with_iat(json!("soon")).err(),
        Some(TokenError::BadClaim("iat"))
    );
}

#[test]
fn rsa_keys_under_2048_bits_are_refused_naming_the_kid() {
    let rsa = |kid: &str, n: Vec<u8>| json!({"kty": "RSA", "kid": kid, "alg": "RS256", "use": "sig", "n": b64(&n), "e": "AQAB"});
    let modulus = |first: u8, len: usize| {
        let mut n = vec![first];
        n.extend(std::iter::repeat_n(0xa5, len - 1));
        n
    };
    let jwks = json!({"keys": [
        rsa("small-1024", modulus(0x80, 128)),
        rsa("short-2047", modulus(0x7f, 256)),
        rsa("zero-padded", [vec![0, 0], modulus(0x40, 256)].concat()),
        rsa("just-2048", modulus(0x80, 256)),
    ]});
    let v = verifier();
    let summary = v.set_jwks(jwks.to_string().as_bytes()).unwrap();
    assert_eq!(summary.loaded, 1, "{summary:?}");
    let skipped = summary.skipped.join("\n");
    for want in [
        "key 0 (kid \"small-1024\"): RSA modulus is 1024 bits, under the 2048 required",
        "key 1 (kid \"short-2047\"): RSA modulus is 2047 bits",
        "key 2 (kid \"zero-padded\"): RSA modulus is 2047 bits",
    ] {
        assert!(skipped.contains(want), "want {want:?} in:\n{skipped}");
    }
    // Only small keys: the JWKS is refused, and says why.
    let only_small = json!({"keys": [rsa("small-1024", modulus(0x80, 128))]});
    let e = v.set_jwks(only_small.to_string().as_bytes()).unwrap_err();
    assert!(e.to_string().contains("small-1024"), "{e}");
}

/// A 401 tells the client the class of problem; the issuer and audiences the server
/// expects, its clock and its key table are only in the detail, for the log.
#[test]
fn refusals_say_the_class_and_keep_the_detail_for_the_log() {
    let e = token_engine("true");
    let now = T0.to_string();
    let cases: Vec<(serde_json::Value, Option<&str>, &str, Vec<&str>)> = vec![
        (
            json!({"iss": "https://evil.example"}),
            None,
            "from an issuer this server does not accept",
            vec!["https://idp.example.internal"],
        ),
        (
            json!({"aud": "other"}),
            None,
            "not meant for this audience",
            vec!["local-ai"],
        ),
        (json!({"exp": T0 - 100}), None, "has expired", vec![&now]),
        (json!({"nbf": T0 + 100}), None, "not valid yet", vec![&now]),
        (
            json!({"iat": T0 + 100}),
            None,
            "issued in the future",
            vec![&now],
        ),
        (
            json!({}),
            Some("rotated-away"),
            "signed by a key this server does not know",
            vec!["rotated-away"],
        ),
    ];
    for (overrides, kid, class, secrets) in cases {
        let mut c = jwt::claims("alice", T0);
        for (k, v) in overrides.as_object().unwrap() {
            c[k] = v.clone();
        }
        let token = match kid {
            None => jwt::sign_rs256(&c),
            Some(kid) => {
                let mut h = Header::new(Algorithm::RS256);
                h.kid = Some(kid.into());
                encode(&h, &c, &jwt::rsa_key()).unwrap()
            }
        };
        let d = Req::new("GET", "/").bearer(&token).decide(&e);
        assert_eq!((d.status, d.reason), (401, Reason::InvalidToken), "{class}");
        assert!(d.message.contains(class), "{class}: {}", d.message);
        let detail = d.detail.as_deref().unwrap_or_default();
        for secret in secrets {
            assert!(
                !d.message.contains(secret),
                "{class}: message {:?} says {secret:?}",
                d.message
            );
            assert!(
                detail.contains(secret),
                "{class}: the log's detail {detail:?} lacks {secret:?}"
            );
        }
    }
}
