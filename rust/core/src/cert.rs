//! The client certificate as rules see it (`cert`). Parsed once per distinct
//! certificate: the cache is keyed by the SHA-256 of the DER, which is also the
//! fingerprint rules can pin.

use std::net::IpAddr;
use std::sync::Arc;

use sha2::{Digest, Sha256};
use x509_parser::prelude::*;

use crate::cache::BoundedCache;
use crate::values::Indexed;

/// Everything DESIGN.md promises about a certificate, already extracted.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CertInfo {
    pub subject: NameInfo,
    pub issuer: NameInfo,
    /// Serial number, lower-case hex without separators.
    pub serial: String,
    /// SHA-256 of the DER, lower-case hex.
    pub fingerprint_sha256: String,
    pub san_dns: Vec<String>,
    pub san_email: Vec<String>,
    pub san_uri: Vec<String>,
    pub san_ip: Vec<String>,
    /// The one `spiffe://` URI SAN, empty when there is none or more than one
    /// (the SPIFFE X.509-SVID spec allows exactly one).
    pub spiffe_id: String,
    /// Validity, Unix seconds.
    pub not_before: i64,
    pub not_after: i64,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NameInfo {
    pub cn: String,
    pub o: Vec<String>,
    pub ou: Vec<String>,
    pub c: String,
    pub st: String,
    pub l: String,
    /// RFC 4514 string form, e.g. `CN=alice,O=Example`.
    pub dn: String,
}

/// A parsed certificate and its CEL value, shared between requests.
pub struct CertEntry {
    pub info: CertInfo,
    pub value: Indexed,
    /// base64url SHA-256 of the DER: what an RFC 8705 `cnf.x5t#S256` names.
    pub x5t_s256: String,
}

impl std::fmt::Debug for CertEntry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertEntry")
            .field("info", &self.info)
            .finish()
    }
}

impl CertEntry {
    pub fn new(info: CertInfo) -> Self {
        use base64::Engine as _;
        let value = info.to_value();
        let digest: Vec<u8> = (0..info.fingerprint_sha256.len() / 2)
            .filter_map(|i| u8::from_str_radix(&info.fingerprint_sha256[2 * i..2 * i + 2], 16).ok())
            .collect();
        let x5t_s256 = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(digest);
        CertEntry {
            info,
            value,
            x5t_s256,
        }
    }
}

/// Why a presented certificate was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CertError {
    #[error("client certificate is empty")]
    Empty,
    #[error("client certificate is not valid DER: {0}")]
    Der(String),
    #[error("client certificate has {0} trailing bytes after the DER structure")]
    TrailingBytes(usize),
    #[error("client certificate extension is malformed: {0}")]
    Extension(String),
}

/// Parses a DER certificate. Never panics on hostile input: every failure is an error
/// naming the problem.
pub fn parse_der(der: &[u8]) -> Result<CertInfo, CertError> {
    if der.is_empty() {
        return Err(CertError::Empty);
    }
    let (rest, cert) = X509Certificate::from_der(der).map_err(|e| CertError::Der(describe(e)))?;
    if !rest.is_empty() {
        return Err(CertError::TrailingBytes(rest.len()));
    }
    let mut info = CertInfo {
        subject: name_info(cert.subject()),
        issuer: name_info(cert.issuer()),
        serial: hex(cert.raw_serial()),
        fingerprint_sha256: hex(&Sha256::digest(der)),
        not_before: cert.validity().not_before.timestamp(),
        not_after: cert.validity().not_after.timestamp(),
        ..CertInfo::default()
    };
    let san = cert
        .subject_alternative_name()
        .map_err(|e| CertError::Extension(format!("subjectAltName: {e}")))?;
    if let Some(san) = san {
        for name in &san.value.general_names {
            match name {
                GeneralName::DNSName(s) => info.san_dns.push((*s).to_owned()),
                GeneralName::RFC822Name(s) => info.san_email.push((*s).to_owned()),
                GeneralName::URI(s) => info.san_uri.push((*s).to_owned()),
                GeneralName::IPAddress(bytes) => {
                    if let Some(ip) = ip_from_bytes(bytes) {
                        info.san_ip.push(ip.to_string());
                    }
                }
                _ => {}
            }
        }
    }
    let spiffe: Vec<&String> = info
        .san_uri
        .iter()
        .filter(|u| u.starts_with("spiffe://"))
        .collect();
    if spiffe.len() == 1 {
        info.spiffe_id = spiffe[0].clone();
    }
    Ok(info)
}

fn describe(e: x509_parser::nom::Err<X509Error>) -> String {
    match e {
        x509_parser::nom::Err::Incomplete(_) => "truncated".to_owned(),
        x509_parser::nom::Err::Error(e) | x509_parser::nom::Err::Failure(e) => e.to_string(),
    }
}

fn ip_from_bytes(bytes: &[u8]) -> Option<IpAddr> {
    match bytes.len() {
        4 => Some(IpAddr::from(<[u8; 4]>::try_from(bytes).ok()?)),
        16 => Some(IpAddr::from(<[u8; 16]>::try_from(bytes).ok()?)),
        _ => None,
    }
}

fn name_info(name: &X509Name<'_>) -> NameInfo {
    let first = |it: &mut dyn Iterator<Item = &AttributeTypeAndValue<'_>>| {
        it.next()
            .and_then(|a| a.as_str().ok())
            .unwrap_or_default()
            .to_owned()
    };
    let all = |it: &mut dyn Iterator<Item = &AttributeTypeAndValue<'_>>| {
        it.filter_map(|a| a.as_str().ok().map(str::to_owned))
            .collect::<Vec<_>>()
    };
    NameInfo {
        cn: first(&mut name.iter_common_name()),
        o: all(&mut name.iter_organization()),
        ou: all(&mut name.iter_organizational_unit()),
        c: first(&mut name.iter_country()),
        st: first(&mut name.iter_state_or_province()),
        l: first(&mut name.iter_locality()),
        dn: name.to_string(),
    }
}

pub fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(DIGITS[(b >> 4) as usize] as char);
        s.push(DIGITS[(b & 0xf) as usize] as char);
    }
    s
}

impl NameInfo {
    fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "cn": self.cn, "o": self.o, "ou": self.ou, "c": self.c, "st": self.st,
            "l": self.l, "dn": self.dn,
        })
    }
}

impl CertInfo {
    /// The `cert` variable for this certificate.
    pub fn to_value(&self) -> Indexed {
        self.value_with_presence(true)
    }

    /// The `cert` variable when no certificate was presented: every field there, empty,
    /// so `cert.subject.cn == "x"` is false rather than an error.
    pub fn absent_value() -> Indexed {
        CertInfo::default().value_with_presence(false)
    }

    fn value_with_presence(&self, present: bool) -> Indexed {
        let json = serde_json::json!({
            "present": present,
            "subject": self.subject.to_json(),
            "issuer": self.issuer.to_json(),
            "serial": self.serial,
            "fingerprint_sha256": self.fingerprint_sha256,
            "san": {
                "dns": self.san_dns, "email": self.san_email,
                "uri": self.san_uri, "ip": self.san_ip,
            },
            "spiffe_id": self.spiffe_id,
            "not_before": self.not_before,
            "not_after": self.not_after,
        });
        Indexed::from_json(&json, 8).expect("a certificate value is 3 levels deep")
    }
}

/// Parse-once cache of certificates, keyed by the DER itself: a lookup hashes it with
/// a fast hash and compares the bytes, which is exact and costs a fraction of the
/// SHA-256 (that is computed once, when the certificate is first parsed, for
/// `cert.fingerprint_sha256`).
pub struct CertCache {
    entries: BoundedCache<Box<[u8]>, Arc<CertEntry>>,
}

impl CertCache {
    pub fn new(capacity: usize) -> Self {
        CertCache {
            entries: BoundedCache::new(capacity),
        }
    }

    /// The parsed certificate, from the cache when this DER was seen before.
    /// Failures are not cached: they are cheap to repeat and must not evict good entries.
    pub fn get_or_parse(&self, der: &[u8]) -> Result<Arc<CertEntry>, CertError> {
        if let Some(hit) = self.entries.get(der) {
            return Ok(hit);
        }
        let entry = Arc::new(CertEntry::new(parse_der(der)?));
        self.entries.insert(der.into(), entry.clone());
        Ok(entry)
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}
