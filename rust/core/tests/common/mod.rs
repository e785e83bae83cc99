#![allow(dead_code)]
//! Shared helpers for the engine's integration tests.

use std::path::PathBuf;

use zt_policy_core::{Decision, Engine, EngineClock, Request};

/// A fixed wall-clock start for manual clocks: 2026-01-01T00:00:00Z.
pub const T0: u64 = 1_767_225_600;

pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

pub fn fixture(name: &str) -> Vec<u8> {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name);
    std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

/// DER of one of the example certificates (examples/policy/certs/NAME.pem).
pub fn cert_der(name: &str) -> Vec<u8> {
    let p = repo_root()
        .join("examples/policy/certs")
        .join(format!("{name}.pem"));
    let pem = std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    pem_to_der(&pem)
}

pub fn pem_to_der(pem: &str) -> Vec<u8> {
    use base64::Engine as _;
    let b64: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
    base64::engine::general_purpose::STANDARD
        .decode(b64)
        .unwrap()
}

pub fn engine(policy: &str) -> Engine {
    Engine::from_toml(policy, "test.toml", EngineClock::manual(T0))
        .unwrap_or_else(|e| panic!("policy did not load:\n{e}"))
}

/// A request builder with owned storage; `decide` borrows it into a `Request`.
#[derive(Clone, Default)]
pub struct Req {
    pub method: String,
    pub path: String,
    pub host: String,
    pub headers: Vec<(String, String)>,
    pub cert: Option<Vec<u8>>,
    pub body: Vec<u8>,
    pub body_size: Option<u64>,
}

impl Req {
    pub fn new(method: &str, path: &str) -> Self {
        Req {
            method: method.into(),
            path: path.into(),
            host: "ai.example.internal".into(),
            ..Default::default()
        }
    }
    pub fn cert(mut self, name: &str) -> Self {
        self.cert = Some(cert_der(name));
        self
    }
    pub fn der(mut self, der: &[u8]) -> Self {
        self.cert = Some(der.to_vec());
        self
    }
    pub fn header(mut self, k: &str, v: &str) -> Self {
        self.headers.push((k.into(), v.into()));
        self
    }
    pub fn bearer(self, token: &str) -> Self {
        self.header("Authorization", &format!("Bearer {token}"))
    }
    pub fn json(mut self, body: &str) -> Self {
        self.body = body.as_bytes().to_vec();
        self.header("Content-Type", "application/json")
    }
    pub fn size(mut self, n: u64) -> Self {
        self.body_size = Some(n);
        self
    }
    pub fn decide<'e>(&self, engine: &'e Engine) -> Decision<'e> {
        self.with_request(|req| engine.decide(req))
    }

    /// `decide` with the identity given directly (certificate fields, claims).
    pub fn decide_given<'e>(
        &self,
        engine: &'e Engine,
        given: &zt_policy_core::GivenIdentity,
    ) -> Decision<'e> {
        self.with_request(|req| engine.decide_given(req, given))
    }

    fn with_request<T>(&self, f: impl FnOnce(&Request<'_>) -> T) -> T {
        let headers: Vec<(&str, &str)> = self
            .headers
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        let req = Request {
            method: &self.method,
            scheme: "https",
            host: &self.host,
            path: &self.path,
            query: "",
            remote_ip: "127.0.0.1",
            headers: &headers,
            client_cert_der: self.cert.as_deref(),
            body: &self.body,
            body_size: self.body_size.unwrap_or(self.body.len() as u64),
        };
        f(&req)
    }
}

pub mod jwt {
    use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
    use serde_json::{json, Value};

    pub fn rsa_key() -> EncodingKey {
        EncodingKey::from_rsa_pem(&super::fixture("rsa.pem")).unwrap()
    }

    pub fn ec_key() -> EncodingKey {
        EncodingKey::from_ec_pem(&super::fixture("ec.pem")).unwrap()
    }

    pub fn claims(sub: &str, now: u64) -> Value {
        json!({
            "iss": "https://idp.example.internal",
            "aud": "local-ai",
            "sub": sub,
            "exp": now + 300,
            "iat": now,
            "groups": ["ml-users"],
        })
    }

    pub fn sign_rs256(claims: &Value) -> String {
        let mut h = Header::new(Algorithm::RS256);
        h.kid = Some("rsa-1".into());
        encode(&h, claims, &rsa_key()).unwrap()
    }

    pub fn sign_es256(claims: &Value) -> String {
        let mut h = Header::new(Algorithm::ES256);
        h.kid = Some("ec-1".into());
        encode(&h, claims, &ec_key()).unwrap()
    }

    pub fn b64(bytes: &[u8]) -> String {
        use base64::Engine as _;
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    }
}
