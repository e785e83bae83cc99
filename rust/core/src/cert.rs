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
    /// A subject or issuer attribute rules read (CN, O, OU, C, ST, L) that cannot be
    /// decoded: refused rather than dropped, since a dropped OU could skip a deny rule.
    #[error("client certificate {0}")]
    Name(String),
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
        subject: name_info("subject", cert.subject())?,
        issuer: name_info("issuer", cert.issuer())?,
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

fn name_info(which: &str, name: &X509Name<'_>) -> Result<NameInfo, CertError> {
    use x509_parser::oid_registry as oids;
    let mut info = NameInfo::default();
    for attr in name.iter_attributes() {
        let t = attr.attr_type();
        let (field, list): (&str, Option<&mut Vec<String>>) = if *t == oids::OID_X509_COMMON_NAME {
            ("CN", None)
        } else if *t == oids::OID_X509_ORGANIZATION_NAME {
            ("O", Some(&mut info.o))
        } else if *t == oids::OID_X509_ORGANIZATIONAL_UNIT {
            ("OU", Some(&mut info.ou))
        } else if *t == oids::OID_X509_COUNTRY_NAME {
            ("C", None)
        } else if *t == oids::OID_X509_STATE_OR_PROVINCE_NAME {
            ("ST", None)
        } else if *t == oids::OID_X509_LOCALITY_NAME {
            ("L", None)
        } else {
            continue;
        };
        let value = directory_string(attr.attr_value())
            .map_err(|e| CertError::Name(format!("{which} {field}: {e}")))?;
        match (field, list) {
            (_, Some(list)) => list.push(value),
            ("CN", _) if info.cn.is_empty() => info.cn = value,
            ("C", _) if info.c.is_empty() => info.c = value,
            ("ST", _) if info.st.is_empty() => info.st = value,
            ("L", _) if info.l.is_empty() => info.l = value,
            _ => {}
        }
    }
    info.dn = rfc4514(name);
    Ok(info)
}

/// The text of a name attribute in any of the string types X.509 names use, decoded
/// the way Go's crypto/x509 (and so Caddy) decodes them: UTF8String as UTF-8,
/// Printable/IA5/Numeric/VisibleString as ASCII, TeletexString as Latin-1 (as Go and
/// BoringSSL do), BMPString as UTF-16BE (a trailing NUL dropped), UniversalString as
/// UTF-32BE. Anything else, or bytes invalid for their type, is an error.
pub(crate) fn directory_string(
    v: &x509_parser::der_parser::asn1_rs::Any<'_>,
) -> Result<String, String> {
    use x509_parser::der_parser::asn1_rs::Tag;
    let data = v.data;
    let ascii = |name: &str| {
        if data.is_ascii() {
            Ok(String::from_utf8_lossy(data).into_owned())
        } else {
            Err(format!("{name} holds bytes that are not ASCII"))
        }
    };
    match v.tag() {
        Tag::Utf8String => {
            String::from_utf8(data.to_vec()).map_err(|_| "UTF8String is not UTF-8".to_owned())
        }
        Tag::PrintableString => ascii("PrintableString"),
        Tag::Ia5String => ascii("IA5String"),
        Tag::NumericString => ascii("NumericString"),
        Tag::VisibleString => ascii("VisibleString"),
        Tag::T61String => Ok(data.iter().map(|&b| char::from(b)).collect()),
        Tag::BmpString => {
            if !data.len().is_multiple_of(2) {
                return Err("BMPString has an odd length".into());
            }
            let data = data.strip_suffix(&[0, 0]).unwrap_or(data);
            let units: Vec<u16> = data
                .chunks_exact(2)
                .map(|c| u16::from_be_bytes([c[0], c[1]]))
                .collect();
            String::from_utf16(&units).map_err(|_| "BMPString is not valid UTF-16".to_owned())
        }
        Tag::UniversalString => {
            if !data.len().is_multiple_of(4) {
                return Err("UniversalString's length is not a multiple of 4".into());
            }
            data.chunks_exact(4)
                .map(|c| char::from_u32(u32::from_be_bytes([c[0], c[1], c[2], c[3]])))
                .collect::<Option<String>>()
                .ok_or_else(|| "UniversalString holds a value that is not a character".to_owned())
        }
        other => Err(format!("{other} is not a string type")),
    }
}

/// The name as RFC 4514 writes it, the way Go's `pkix.Name.String()` does (Caddy's
/// `{http.request.tls.client.subject}`): the last RDN first, `,` between RDNs, `+`
/// inside one, special characters escaped, so no value can forge another attribute
/// (`CN=alice\, OU=admins` stays one CN). Types Go names are abbreviated; any other
/// is its dotted OID with the value's DER in hex (`2.5.4.97=#0c03...`), as is a value
/// that is not a string.
fn rfc4514(name: &X509Name<'_>) -> String {
    use x509_parser::oid_registry as oids;
    let short = |t: &x509_parser::der_parser::oid::Oid<'_>| -> Option<&'static str> {
        [
            (oids::OID_X509_COUNTRY_NAME, "C"),
            (oids::OID_X509_ORGANIZATION_NAME, "O"),
            (oids::OID_X509_ORGANIZATIONAL_UNIT, "OU"),
            (oids::OID_X509_COMMON_NAME, "CN"),
            (oids::OID_X509_SERIALNUMBER, "SERIALNUMBER"),
            (oids::OID_X509_LOCALITY_NAME, "L"),
            (oids::OID_X509_STATE_OR_PROVINCE_NAME, "ST"),
            (oids::OID_X509_STREET_ADDRESS, "STREET"),
            (oids::OID_X509_POSTAL_CODE, "POSTALCODE"),
        ]
        .into_iter()
        .find(|(oid, _)| oid == t)
        .map(|(_, s)| s)
    };
    let mut out = String::new();
    let rdns: Vec<_> = name.iter_rdn().collect();
    for (i, rdn) in rdns.into_iter().rev().enumerate() {
        if i > 0 {
            out.push(',');
        }
        for (j, attr) in rdn.iter().enumerate() {
            if j > 0 {
                out.push('+');
            }
            let value = attr.attr_value();
            match (short(attr.attr_type()), directory_string(value)) {
                (Some(t), Ok(text)) => {
                    out.push_str(t);
                    out.push('=');
                    escape_rfc4514(&text, &mut out);
                }
                _ => {
                    out.push_str(&attr.attr_type().to_id_string());
                    out.push_str("=#");
                    let mut der = Vec::with_capacity(value.data.len() + 4);
                    let _ = x509_parser::der_parser::asn1_rs::ToDer::write_der(value, &mut der);
                    out.push_str(&hex(&der));
                }
            }
        }
    }
    out
}

/// RFC 4514 §2.4 escaping, as Go's `escape`: `,+"\<>;` always, a leading `#` or space
/// and a trailing space, and NUL as `\00`.
fn escape_rfc4514(s: &str, out: &mut String) {
    let last = s.chars().count().saturating_sub(1);
    for (i, c) in s.chars().enumerate() {
        match c {
            ',' | '+' | '"' | '\\' | '<' | '>' | ';' => {
                out.push('\\');
                out.push(c);
            }
            ' ' if i == 0 || i == last => out.push_str("\\ "),
            '#' if i == 0 => out.push_str("\\#"),
            '\0' => out.push_str("\\00"),
            c => out.push(c),
        }
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
