//! The input of `eval` and of each test case: a request, the caller's certificate
//! (a PEM file, or its fields), a bearer token or claims taken as verified, a body.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use zt_policy_core::{CertInfo, NameInfo};
use zt_policy_core::{Decision, Engine, GivenIdentity, Request};

#[derive(Deserialize, Default, Clone)]
#[serde(deny_unknown_fields)]
pub struct Input {
    /// A PEM file (relative to the input file) or the certificate's fields.
    pub cert: Option<CertSpec>,
    /// A raw JWT, verified against the policy's JWKS.
    pub token: Option<String>,
    /// A file holding a raw JWT (relative to the input file).
    pub token_file: Option<String>,
    /// Claims taken as already verified (what a policy test usually wants).
    pub claims: Option<serde_json::Value>,
    #[serde(default)]
    pub request: RequestSpec,
    /// The JSON body; sent with `Content-Type: application/json` unless a header says otherwise.
    pub body: Option<serde_json::Value>,
    /// A raw body, for malformed or non-JSON bodies.
    pub body_text: Option<String>,
    /// The declared size (Content-Length), when it should differ from the body's length.
    pub body_size: Option<u64>,
}

#[derive(Deserialize, Clone)]
#[serde(untagged)]
pub enum CertSpec {
    File(String),
    Fields(Box<CertFields>),
}

#[derive(Deserialize, Default, Clone)]
#[serde(deny_unknown_fields)]
pub struct NameFields {
    #[serde(default)]
    cn: String,
    #[serde(default)]
    o: Vec<String>,
    #[serde(default)]
    ou: Vec<String>,
    #[serde(default)]
    c: String,
    #[serde(default)]
    st: String,
    #[serde(default)]
    l: String,
    #[serde(default)]
    dn: String,
}

#[derive(Deserialize, Default, Clone)]
#[serde(deny_unknown_fields)]
pub struct SanFields {
    #[serde(default)]
    dns: Vec<String>,
    #[serde(default)]
    email: Vec<String>,
    #[serde(default)]
    uri: Vec<String>,
    #[serde(default)]
    ip: Vec<String>,
}

#[derive(Deserialize, Default, Clone)]
#[serde(deny_unknown_fields)]
pub struct CertFields {
    #[serde(default)]
    subject: NameFields,
    #[serde(default)]
    issuer: NameFields,
    #[serde(default)]
    san: SanFields,
    #[serde(default)]
    serial: String,
    #[serde(default)]
    fingerprint_sha256: String,
    spiffe_id: Option<String>,
    #[serde(default)]
    not_before: i64,
    #[serde(default)]
    not_after: i64,
}

#[derive(Deserialize, Clone)]
#[serde(deny_unknown_fields)]
pub struct RequestSpec {
    #[serde(default = "get")]
    pub method: String,
    #[serde(default = "https")]
    pub scheme: String,
    #[serde(default = "host")]
    pub host: String,
    #[serde(default = "root")]
    pub path: String,
    #[serde(default)]
    pub query: String,
    #[serde(default = "loopback")]
    pub remote_ip: String,
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
}

impl Default for RequestSpec {
    fn default() -> Self {
        RequestSpec {
            method: get(),
            scheme: https(),
            host: host(),
            path: root(),
            query: String::new(),
            remote_ip: loopback(),
            headers: BTreeMap::new(),
        }
    }
}

fn get() -> String {
    "GET".into()
}
fn https() -> String {
    "https".into()
}
fn host() -> String {
    "ai.example.internal".into()
}
fn root() -> String {
    "/".into()
}
fn loopback() -> String {
    "127.0.0.1".into()
}

impl NameFields {
    fn info(&self) -> NameInfo {
        NameInfo {
            cn: self.cn.clone(),
            o: self.o.clone(),
            ou: self.ou.clone(),
            c: self.c.clone(),
            st: self.st.clone(),
            l: self.l.clone(),
            dn: if self.dn.is_empty() && !self.cn.is_empty() {
                format!("CN={}", self.cn)
            } else {
                self.dn.clone()
            },
        }
    }
}

impl CertFields {
    fn info(&self) -> CertInfo {
        let spiffe = self.spiffe_id.clone().unwrap_or_else(|| {
            let ids: Vec<&String> = self
                .san
                .uri
                .iter()
                .filter(|u| u.starts_with("spiffe://"))
                .collect();
            if ids.len() == 1 {
                ids[0].clone()
            } else {
                String::new()
            }
        });
        CertInfo {
            subject: self.subject.info(),
            issuer: self.issuer.info(),
            serial: self.serial.clone(),
            fingerprint_sha256: self.fingerprint_sha256.clone(),
            san_dns: self.san.dns.clone(),
            san_email: self.san.email.clone(),
            san_uri: self.san.uri.clone(),
            san_ip: self.san.ip.clone(),
            spiffe_id: spiffe,
            not_before: self.not_before,
            not_after: self.not_after,
        }
    }
}

/// Reads the first certificate of a PEM file as DER.
pub fn read_pem_cert(path: &Path) -> Result<Vec<u8>, String> {
    use base64::Engine as _;
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let begin = "-----BEGIN CERTIFICATE-----";
    let start = text
        .find(begin)
        .ok_or_else(|| format!("{}: no PEM certificate in it", path.display()))?;
    let rest = &text[start + begin.len()..];
    let end = rest
        .find("-----END CERTIFICATE-----")
        .ok_or_else(|| format!("{}: PEM certificate has no END line", path.display()))?;
    let b64: String = rest[..end].chars().filter(|c| !c.is_whitespace()).collect();
    base64::engine::general_purpose::STANDARD
        .decode(b64)
        .map_err(|e| format!("{}: PEM is not base64: {e}", path.display()))
}

/// An input made ready to decide: files read, body serialized.
pub struct Prepared {
    cert_der: Option<Vec<u8>>,
    given: GivenIdentity,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
    body_size: u64,
    request: RequestSpec,
}

impl Input {
    /// `base` is the folder paths in the input are relative to.
    pub fn prepare(&self, base: &Path) -> Result<Prepared, String> {
        let mut cert_der = None;
        let mut given = GivenIdentity::default();
        match &self.cert {
            None => {}
            Some(CertSpec::File(f)) => cert_der = Some(read_pem_cert(&resolve(base, f))?),
            Some(CertSpec::Fields(fields)) => given.cert = Some(fields.info()),
        }
        let token = match (&self.token, &self.token_file) {
            (Some(_), Some(_)) => return Err("give either token or token_file, not both".into()),
            (Some(t), None) => Some(t.trim().to_owned()),
            (None, Some(f)) => {
                let p = resolve(base, f);
                Some(
                    std::fs::read_to_string(&p)
                        .map_err(|e| format!("{}: {e}", p.display()))?
                        .trim()
                        .to_owned(),
                )
            }
            (None, None) => None,
        };
        if token.is_some() && self.claims.is_some() {
            return Err("give either a token or claims, not both".into());
        }
        given.claims = self.claims.clone();
        let mut headers: Vec<(String, String)> = self
            .request
            .headers
            .iter()
            .map(|(k, v)| (k.to_ascii_lowercase(), v.clone()))
            .collect();
        if let Some(t) = &token {
            headers.retain(|(k, _)| k != "authorization");
            headers.push(("authorization".into(), format!("Bearer {t}")));
        }
        let body = match (&self.body, &self.body_text) {
            (Some(_), Some(_)) => return Err("give either body or body_text, not both".into()),
            (Some(json), None) => {
                if !headers.iter().any(|(k, _)| k == "content-type") {
                    headers.push(("content-type".into(), "application/json".into()));
                }
                serde_json::to_vec(json).map_err(|e| e.to_string())?
            }
            (None, Some(text)) => text.as_bytes().to_vec(),
            (None, None) => Vec::new(),
        };
        let body_size = self.body_size.unwrap_or(body.len() as u64);
        Ok(Prepared {
            cert_der,
            given,
            headers,
            body,
            body_size,
            request: self.request.clone(),
        })
    }
}

impl Prepared {
    pub fn with_request<T>(&self, f: impl FnOnce(&Request<'_>, &GivenIdentity) -> T) -> T {
        let headers: Vec<(&str, &str)> = self
            .headers
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        let r = &self.request;
        let req = Request {
            method: &r.method,
            scheme: &r.scheme,
            host: &r.host,
            path: &r.path,
            query: &r.query,
            remote_ip: &r.remote_ip,
            headers: &headers,
            client_cert_der: self.cert_der.as_deref(),
            body: &self.body,
            body_size: self.body_size,
        };
        f(&req, &self.given)
    }

    pub fn decide<'e>(&self, engine: &'e Engine) -> Decision<'e> {
        self.with_request(|req, given| {
            if given.cert.is_some() || given.claims.is_some() {
                engine.decide_given(req, given)
            } else {
                engine.decide(req)
            }
        })
    }
}

pub fn resolve(base: &Path, file: &str) -> PathBuf {
    let p = Path::new(file);
    if p.is_absolute() {
        p.to_path_buf()
    } else {
        base.join(p)
    }
}
