//! `cert`: every field from DER, parse-once caching, and hostile DER.

mod common;
use common::*;
use sha2::{Digest, Sha256};
use zt_policy_core::Reason;
use zt_policy_core::{parse_der, CertCache};

fn openssl(args: &[&str]) -> String {
    let out = std::process::Command::new("openssl")
        .args(args)
        .output()
        .expect("openssl");
    assert!(out.status.success());
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn every_field_of_a_device_certificate() {
    let der = cert_der("alice");
    let c = parse_der(&der).unwrap();
    assert_eq!(c.subject.cn, "alice");
    assert_eq!(c.subject.o, vec!["Example Corp"]);
    assert_eq!(c.subject.ou, vec!["ml-users"]);
    // RFC 4514, as Go (Caddy) writes it: the last RDN first.
    assert_eq!(c.subject.dn, "CN=alice,OU=ml-users,O=Example Corp");
    assert_eq!(c.issuer.cn, "zt-policy Example Device CA");
    assert_eq!(c.san_email, vec!["alice@example.com"]);
    assert_eq!(c.san_dns, vec!["alice-laptop.example.internal"]);
    assert_eq!(c.san_uri, vec!["spiffe://example.internal/user/alice"]);
    assert_eq!(c.spiffe_id, "spiffe://example.internal/user/alice");
    assert_eq!(
        c.fingerprint_sha256,
        zt_policy_core::hex(&Sha256::digest(&der))
    );
    // Cross-check serial and validity against openssl's own reading.
    let pem = repo_root().join("examples/policy/certs/alice.pem");
    let pem = pem.to_str().unwrap();
    let serial = openssl(&["x509", "-in", pem, "-noout", "-serial"]);
    assert_eq!(
        c.serial,
        serial
            .trim()
            .trim_start_matches("serial=")
            .to_ascii_lowercase()
    );
    let end = openssl(&["x509", "-in", pem, "-noout", "-enddate"]);
    assert!(
        c.not_after > c.not_before && c.not_after > T0 as i64,
        "{end}"
    );
}

#[test]
fn ip_san_and_service_spiffe_id() {
    let c = parse_der(&cert_der("batch")).unwrap();
    assert_eq!(c.san_ip, vec!["10.20.0.7"]);
    assert_eq!(c.spiffe_id, "spiffe://example.internal/svc/batch-eval");
    assert!(c.san_email.is_empty());
}

#[test]
fn rules_see_the_certificate_fields() {
    let e = engine(
        r#"
[[rule]]
name = "fields"
effect = "allow"
when = '''
cert.present && cert.subject.cn == "alice" && "ml-users" in cert.subject.ou
  && cert.issuer.cn == "zt-policy Example Device CA"
  && cert.san.uri == ["spiffe://example.internal/user/alice"]
  && cert.spiffe_id.startsWith("spiffe://example.internal/")
  && size(cert.fingerprint_sha256) == 64 && cert.serial != ""
  && cert.not_after > cert.not_before && "alice@example.com" in cert.san.email
'''
"#,
    );
    assert!(Req::new("GET", "/").cert("alice").decide(&e).allowed);
    assert!(!Req::new("GET", "/").cert("bob").decide(&e).allowed);
}

#[test]
fn absent_certificate_has_every_field_empty() {
    let e = engine(
        r#"
[settings]
require_identity = false
[[rule]]
name = "anon"
effect = "allow"
when = '!cert.present && cert.subject.cn == "" && size(cert.san.email) == 0 && cert.spiffe_id == ""'
"#,
    );
    let d = Req::new("GET", "/").decide(&e);
    assert!(d.allowed, "{d:?}");
}

#[test]
fn garbage_and_truncated_der_are_401_never_a_panic() {
    let e = engine(
        r#"
[settings]
require_identity = false
[[rule]]
name = "allow-all"
effect = "allow"
when = 'true'
"#,
    );
    let der = cert_der("alice");
    // Every truncation of a real certificate.
    for len in 0..der.len() {
        let d = Req::new("GET", "/").der(&der[..len]).decide(&e);
        assert_eq!(
            (d.status, d.reason),
            (401, Reason::InvalidCertificate),
            "len {len}"
        );
        assert!(d.message.starts_with("client certificate"), "{}", d.message);
        assert!(!d.allowed);
    }
    // Trailing bytes, flipped bytes, random bytes.
    let mut trailing = der.clone();
    trailing.extend_from_slice(b"junk");
    let d = Req::new("GET", "/").der(&trailing).decide(&e);
    assert!(d.message.contains("trailing"), "{}", d.message);
    let mut seed = 0x9e3779b97f4a7c15u64;
    for i in 0..2000 {
        let mut m = der.clone();
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let at = (seed as usize) % m.len();
        m[at] ^= (seed >> 32) as u8 | 1;
        let d = Req::new("GET", "/").der(&m).decide(&e);
        // A flipped byte may still parse (e.g. inside the signature); it must never panic,
        // and a failure is always a 401.
        assert!(d.allowed || d.status == 401, "mutation {i}: {d:?}");
    }
    let d = Req::new("GET", "/")
        .der(b"\x30\x82\xff\xff garbage")
        .decide(&e);
    assert_eq!(d.status, 401);
    assert_eq!(
        parse_der(b"").unwrap_err().to_string(),
        "client certificate is empty"
    );
}

#[test]
fn parsed_once_per_distinct_certificate_and_bounded() {
    let cache = CertCache::new(2);
    let a = cert_der("alice");
    let first = cache.get_or_parse(&a).unwrap();
    let second = cache.get_or_parse(&a).unwrap();
    assert!(
        std::sync::Arc::ptr_eq(&first, &second),
        "second lookup must be the cached entry"
    );
    cache.get_or_parse(&cert_der("bob")).unwrap();
    cache.get_or_parse(&cert_der("carol")).unwrap();
    assert_eq!(cache.len(), 2);
    assert!(cache.get_or_parse(b"bad").is_err());
    assert_eq!(cache.len(), 2, "failures are not cached");
}
