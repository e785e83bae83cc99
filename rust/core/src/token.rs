//! Bearer tokens (`claims`): JWTs verified against a JWKS the caller hands in.
//! The algorithm comes from the key (its `alg`, else its key type), never from the
//! token header; a header that disagrees is refused before any signature check.
//! Verified tokens are cached until their `exp`, keyed by the token text itself (an
//! exact match: a forged token can never hit a genuine token's entry), so the cache
//! holds at most `cache_size` tokens of at most `max_bytes` each.

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use base64::Engine as _;
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};

use crate::cache::BoundedCache;
use crate::values::Indexed;

/// What the policy's `[token]` table says about accepted tokens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenSettings {
    /// Required `iss`; empty accepts any issuer (only sensible with a single-IdP JWKS).
    pub issuer: String,
    /// Accepted `aud` values; empty accepts any audience.
    pub audiences: Vec<String>,
    /// Clock skew allowed on `exp` and `nbf`, seconds.
    pub leeway_secs: u64,
    /// Tokens longer than this are refused before decoding.
    pub max_bytes: usize,
    pub cache_size: usize,
    pub max_claims_depth: usize,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("bearer token is {len} bytes, over the limit of {max}")]
    TooLarge { len: usize, max: usize },
    #[error("bearer token is malformed: {0}")]
    Malformed(String),
    #[error("bearer token uses alg \"none\", which is never accepted")]
    AlgNone,
    #[error("bearer token names key id {0:?}, which is not in the JWKS")]
    UnknownKid(String),
    #[error("bearer token names no key id and the JWKS has {0} keys")]
    MissingKid(usize),
    #[error("no JWKS is loaded, so no bearer token can be verified")]
    NoKeys,
    #[error("bearer token header says alg {token}, but key {kid:?} is pinned to {key}")]
    AlgorithmMismatch {
        token: String,
        key: String,
        kid: String,
    },
    #[error("bearer token signature does not verify")]
    BadSignature,
    #[error("bearer token has no exp claim")]
    MissingExp,
    #[error("bearer token expired at {exp} (now {now})")]
    Expired { exp: u64, now: u64 },
    #[error("bearer token is not valid before {nbf} (now {now})")]
    NotYetValid { nbf: u64, now: u64 },
    #[error("bearer token issuer {got:?} is not {want:?}")]
    WrongIssuer { got: String, want: String },
    #[error("bearer token audience {got} is not one of {want:?}")]
    WrongAudience { got: String, want: Vec<String> },
    #[error("bearer token claim {0} has the wrong type")]
    BadClaim(&'static str),
    #[error("bearer token is bound to another client certificate (cnf.x5t#S256)")]
    WrongCertificate,
    #[error("bearer token is not bound to a client certificate (no cnf.x5t#S256), and the policy requires it")]
    NotBound,
    #[error(
        "bearer token is bound by cnf member {0:?}, which is not enforced here (only x5t#S256 is)"
    )]
    UnsupportedBinding(String),
    #[error("bearer token was issued at {iat}, in the future (now {now})")]
    IssuedInFuture { iat: u64, now: u64 },
}

impl TokenError {
    /// What the client is told: the class of problem, without the server's clock, the
    /// issuer or audiences it expects, or its key table (the log gets `to_string()`).
    pub fn public_message(&self) -> Cow<'static, str> {
        Cow::Borrowed(match self {
            TokenError::TooLarge { .. } => "bearer token is too large",
            TokenError::Malformed(_) => "bearer token is malformed",
            TokenError::AlgNone => "bearer token uses alg \"none\", which is never accepted",
            TokenError::UnknownKid(_) | TokenError::MissingKid(_) | TokenError::NoKeys => {
                "bearer token is signed by a key this server does not know"
            }
            TokenError::AlgorithmMismatch { .. } => {
                "bearer token's algorithm does not match its key"
            }
            TokenError::BadSignature => "bearer token signature does not verify",
            TokenError::MissingExp => "bearer token has no exp claim",
            TokenError::Expired { .. } => "bearer token has expired",
            TokenError::NotYetValid { .. } => "bearer token is not valid yet",
            TokenError::IssuedInFuture { .. } => "bearer token was issued in the future",
            TokenError::WrongIssuer { .. } => {
                "bearer token is from an issuer this server does not accept"
            }
            TokenError::WrongAudience { .. } => "bearer token is not meant for this audience",
            TokenError::BadClaim(claim) => {
                return Cow::Owned(format!("bearer token claim {claim} has the wrong type"))
            }
            TokenError::WrongCertificate
            | TokenError::NotBound
            | TokenError::UnsupportedBinding(_) => return Cow::Owned(self.to_string()),
        })
    }

    /// The token names a key the JWKS lacks: the caller should refetch the JWKS.
    pub fn is_key_miss(&self) -> bool {
        matches!(
            self,
            TokenError::UnknownKid(_) | TokenError::NoKeys | TokenError::MissingKid(_)
        )
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JwksError {
    #[error("JWKS is not valid JSON: {0}")]
    Json(String),
    #[error("JWKS has no \"keys\" array")]
    NoKeysArray,
    #[error("JWKS has no usable signing key ({0})")]
    NoUsableKeys(String),
}

/// A token that verified: its claims as a CEL value and what the cache needs.
pub struct VerifiedToken {
    pub claims: serde_json::Value,
    pub value: Indexed,
    pub exp: u64,
    pub nbf: Option<u64>,
    /// RFC 8705 binding: base64url SHA-256 of the client certificate the token is for.
    pub cnf_x5t_s256: Option<String>,
}

impl VerifiedToken {
    /// A token's claims as verified; `cnf` must already have passed [`binding`].
    pub fn new(claims: serde_json::Value, value: Indexed, exp: u64, nbf: Option<u64>) -> Self {
        let cnf_x5t_s256 = binding(&claims).ok().flatten();
        VerifiedToken {
            claims,
            value,
            exp,
            nbf,
            cnf_x5t_s256,
        }
    }

    pub fn subject(&self) -> Option<&str> {
        self.claims.get("sub").and_then(|v| v.as_str())
    }
}

/// The token's confirmation (RFC 7800 `cnf`): absent, or an object whose only member
/// is RFC 8705's `x5t#S256` string. Any other member (DPoP's `jkt`, `jwk`, `kid`, …)
/// binds the token to something this engine does not check, so it is refused rather
/// than treated as unbound.
fn binding(claims: &serde_json::Value) -> Result<Option<String>, TokenError> {
    let Some(cnf) = claims.get("cnf") else {
        return Ok(None);
    };
    let cnf = cnf.as_object().ok_or(TokenError::BadClaim("cnf"))?;
    if let Some(other) = cnf.keys().find(|k| *k != "x5t#S256") {
        return Err(TokenError::UnsupportedBinding(other.clone()));
    }
    match cnf.get("x5t#S256") {
        Some(serde_json::Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err(TokenError::BadClaim("cnf.x5t#S256")),
        // An empty `cnf` binds to nothing: refused like an unknown binding.
        None => Err(TokenError::BadClaim("cnf")),
    }
}

struct Key {
    kid: String,
    alg: Algorithm,
    decoding: DecodingKey,
    validation: Validation,
}

#[derive(Default)]
struct KeySet {
    by_kid: HashMap<String, Arc<Key>>,
    all: Vec<Arc<Key>>,
}

/// Outcome of loading a JWKS: how many keys are usable and why the others are not.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JwksSummary {
    pub loaded: usize,
    pub skipped: Vec<String>,
}

pub struct Verifier {
    settings: TokenSettings,
    keys: RwLock<Arc<KeySet>>,
    cache: BoundedCache<Box<str>, Arc<VerifiedToken>>,
}

impl Verifier {
    pub fn new(settings: TokenSettings) -> Self {
        let cache = BoundedCache::new(settings.cache_size);
        Verifier {
            settings,
            keys: RwLock::new(Arc::new(KeySet::default())),
            cache,
        }
    }

    pub fn settings(&self) -> &TokenSettings {
        &self.settings
    }

    /// Changes the accepted issuer and audiences; cached tokens are dropped.
    pub fn set_issuer(&mut self, issuer: String, audiences: Vec<String>) {
        self.settings.issuer = issuer;
        self.settings.audiences = audiences;
        self.cache.clear();
    }

    /// Replaces the key set. Cached tokens are dropped, so a token signed with a
    /// key that is no longer published fails from now on.
    pub fn set_jwks(&self, jwks_json: &[u8]) -> Result<JwksSummary, JwksError> {
        let doc: serde_json::Value =
            serde_json::from_slice(jwks_json).map_err(|e| JwksError::Json(e.to_string()))?;
        let keys = doc
            .get("keys")
            .and_then(|k| k.as_array())
            .ok_or(JwksError::NoKeysArray)?;
        let mut set = KeySet::default();
        let mut skipped = Vec::new();
        for (i, raw) in keys.iter().enumerate() {
            match load_key(raw) {
                Ok(key) => {
                    if !key.kid.is_empty() && set.by_kid.contains_key(&key.kid) {
                        skipped.push(format!("key {i}: duplicate kid {:?}", key.kid));
                        continue;
                    }
                    let key = Arc::new(key);
                    if !key.kid.is_empty() {
                        set.by_kid.insert(key.kid.clone(), key.clone());
                    }
                    set.all.push(key);
                }
                Err(why) => match raw.get("kid").and_then(|k| k.as_str()) {
                    Some(kid) => skipped.push(format!("key {i} (kid {kid:?}): {why}")),
                    None => skipped.push(format!("key {i}: {why}")),
                },
            }
        }
        if set.all.is_empty() {
            return Err(JwksError::NoUsableKeys(if skipped.is_empty() {
                "the keys array is empty".to_owned()
            } else {
                skipped.join("; ")
            }));
        }
        let loaded = set.all.len();
        *self.keys.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(set);
        self.cache.clear();
        Ok(JwksSummary { loaded, skipped })
    }

    pub fn key_count(&self) -> usize {
        self.keys
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .all
            .len()
    }

    /// Verifies `token` at Unix time `now`, from the cache when it was verified before.
    pub fn verify(&self, token: &str, now: u64) -> Result<Arc<VerifiedToken>, TokenError> {
        if token.len() > self.settings.max_bytes {
            return Err(TokenError::TooLarge {
                len: token.len(),
                max: self.settings.max_bytes,
            });
        }
        if let Some(hit) = self.cache.get(token) {
            if let Err(e) = self.check_times(hit.exp, hit.nbf, now) {
                self.cache.remove(token);
                return Err(e);
            }
            return Ok(hit);
        }
        let verified = Arc::new(self.verify_uncached(token, now)?);
        self.cache.insert(token.into(), verified.clone());
        Ok(verified)
    }

    pub fn cached_tokens(&self) -> usize {
        self.cache.len()
    }

    fn verify_uncached(&self, token: &str, now: u64) -> Result<VerifiedToken, TokenError> {
        let header = parse_header(token)?;
        let keys = self.keys.read().unwrap_or_else(|p| p.into_inner()).clone();
        if keys.all.is_empty() {
            return Err(TokenError::NoKeys);
        }
        let key = match &header.kid {
            Some(kid) => keys
                .by_kid
                .get(kid)
                .ok_or_else(|| TokenError::UnknownKid(kid.clone()))?,
            None if keys.all.len() == 1 => &keys.all[0],
            None => return Err(TokenError::MissingKid(keys.all.len())),
        };
        let key_alg = alg_name(key.alg);
        if header.alg != key_alg {
            return Err(TokenError::AlgorithmMismatch {
                token: header.alg,
                key: key_alg.to_owned(),
                kid: key.kid.clone(),
            });
        }
        let data = jsonwebtoken::decode::<serde_json::Value>(token, &key.decoding, &key.validation)
            .map_err(map_jwt_error)?;
        let claims = data.claims;
        if !claims.is_object() {
            return Err(TokenError::Malformed("payload is not a JSON object".into()));
        }
        let exp = match claims.get("exp") {
            None => return Err(TokenError::MissingExp),
            Some(v) => numeric_date(v).ok_or(TokenError::BadClaim("exp"))?,
        };
        let nbf = match claims.get("nbf") {
            None => None,
            Some(v) => Some(numeric_date(v).ok_or(TokenError::BadClaim("nbf"))?),
        };
        self.check_times(exp, nbf, now)?;
        if let Some(v) = claims.get("iat") {
            let iat = numeric_date(v).ok_or(TokenError::BadClaim("iat"))?;
            if iat > now.saturating_add(self.settings.leeway_secs) {
                return Err(TokenError::IssuedInFuture { iat, now });
            }
        }
        binding(&claims)?;
        if !self.settings.issuer.is_empty() {
            let iss = claims.get("iss").and_then(|v| v.as_str()).unwrap_or("");
            if iss != self.settings.issuer {
                return Err(TokenError::WrongIssuer {
                    got: iss.to_owned(),
                    want: self.settings.issuer.clone(),
                });
            }
        }
        if !self.settings.audiences.is_empty() {
            let auds: Vec<&str> = match claims.get("aud") {
                Some(serde_json::Value::String(s)) => vec![s.as_str()],
                Some(serde_json::Value::Array(items)) => {
                    items.iter().filter_map(|v| v.as_str()).collect()
                }
                Some(_) => return Err(TokenError::BadClaim("aud")),
                None => Vec::new(),
            };
            if !auds
                .iter()
                .any(|a| self.settings.audiences.iter().any(|w| w == a))
            {
                return Err(TokenError::WrongAudience {
                    got: if auds.is_empty() {
                        "(none)".to_owned()
                    } else {
                        format!("{auds:?}")
                    },
                    want: self.settings.audiences.clone(),
                });
            }
        }
        let value = Indexed::from_json(&claims, self.settings.max_claims_depth)
            .map_err(|_| TokenError::Malformed("claims are nested too deeply".into()))?;
        Ok(VerifiedToken::new(claims, value, exp, nbf))
    }

    fn check_times(&self, exp: u64, nbf: Option<u64>, now: u64) -> Result<(), TokenError> {
        let leeway = self.settings.leeway_secs;
        if now > exp.saturating_add(leeway) {
            return Err(TokenError::Expired { exp, now });
        }
        if let Some(nbf) = nbf {
            if now.saturating_add(leeway) < nbf {
                return Err(TokenError::NotYetValid { nbf, now });
            }
        }
        Ok(())
    }
}

struct Header {
    alg: String,
    kid: Option<String>,
}

/// Reads the header ourselves first, so `alg: none` and `crit` get their own answer
/// and the key is chosen before jsonwebtoken sees the token.
fn parse_header(token: &str) -> Result<Header, TokenError> {
    let mut parts = token.split('.');
    let (Some(h), Some(_), Some(_), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(TokenError::Malformed(
            "expected three dot-separated parts".into(),
        ));
    };
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(h)
        .map_err(|e| TokenError::Malformed(format!("header is not base64url: {e}")))?;
    let json: serde_json::Value = serde_json::from_slice(&bytes)
        .map_err(|e| TokenError::Malformed(format!("header is not JSON: {e}")))?;
    let alg = json
        .get("alg")
        .and_then(|v| v.as_str())
        .ok_or_else(|| TokenError::Malformed("header has no alg".into()))?;
    if alg.eq_ignore_ascii_case("none") {
        return Err(TokenError::AlgNone);
    }
    if json.get("crit").is_some() {
        return Err(TokenError::Malformed(
            "header has crit extensions, none are supported".into(),
        ));
    }
    let kid = match json.get("kid") {
        None => None,
        Some(serde_json::Value::String(s)) => Some(s.clone()),
        Some(_) => return Err(TokenError::Malformed("header kid is not a string".into())),
    };
    Ok(Header {
        alg: alg.to_owned(),
        kid,
    })
}

fn map_jwt_error(e: jsonwebtoken::errors::Error) -> TokenError {
    use jsonwebtoken::errors::ErrorKind as K;
    match e.kind() {
        K::InvalidSignature => TokenError::BadSignature,
        K::InvalidAlgorithm => TokenError::AlgorithmMismatch {
            token: "?".into(),
            key: "?".into(),
            kid: String::new(),
        },
        K::Base64(err) => TokenError::Malformed(format!("not base64url: {err}")),
        K::Json(err) => TokenError::Malformed(format!("payload is not JSON: {err}")),
        K::Utf8(_) => TokenError::Malformed("payload is not UTF-8".into()),
        K::InvalidToken => TokenError::Malformed("not a JWT".into()),
        other => TokenError::Malformed(format!("{other:?}")),
    }
}

fn numeric_date(v: &serde_json::Value) -> Option<u64> {
    v.as_u64().or_else(|| {
        v.as_f64()
            .filter(|f| *f >= 0.0 && f.is_finite())
            .map(|f| f as u64)
    })
}

fn alg_name(alg: Algorithm) -> &'static str {
    match alg {
        Algorithm::HS256 => "HS256",
        Algorithm::HS384 => "HS384",
        Algorithm::HS512 => "HS512",
        Algorithm::ES256 => "ES256",
        Algorithm::ES384 => "ES384",
        Algorithm::RS256 => "RS256",
        Algorithm::RS384 => "RS384",
        Algorithm::RS512 => "RS512",
        Algorithm::PS256 => "PS256",
        Algorithm::PS384 => "PS384",
        Algorithm::PS512 => "PS512",
        Algorithm::EdDSA => "EdDSA",
        _ => "unsupported",
    }
}

/// RSA keys shorter than this are refused (NIST SP 800-131A; RFC 7518 §3.3 says 2048).
pub const MIN_RSA_BITS: usize = 2048;

fn rsa_modulus_bits(n: &str) -> Option<usize> {
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(n.trim_end_matches('='))
        .ok()?;
    let bytes = match bytes.iter().position(|b| *b != 0) {
        Some(i) => &bytes[i..],
        None => return Some(0),
    };
    Some(bytes.len() * 8 - bytes[0].leading_zeros() as usize)
}

fn load_key(raw: &serde_json::Value) -> Result<Key, String> {
    let jwk: Jwk = serde_json::from_value(raw.clone()).map_err(|e| format!("not a JWK: {e}"))?;
    if matches!(jwk.common.public_key_use, Some(PublicKeyUse::Encryption)) {
        return Err("use is \"enc\", not a signing key".into());
    }
    let implied = match &jwk.algorithm {
        AlgorithmParameters::RSA(_) => Algorithm::RS256,
        AlgorithmParameters::EllipticCurve(ec) => match ec.curve {
            EllipticCurve::P256 => Algorithm::ES256,
            EllipticCurve::P384 => Algorithm::ES384,
            ref other => return Err(format!("curve {other:?} is not supported")),
        },
        AlgorithmParameters::OctetKeyPair(_) => Algorithm::EdDSA,
        AlgorithmParameters::OctetKey(_) => {
            return Err("symmetric (oct) keys are never accepted from a JWKS".into())
        }
        _ => return Err("unsupported key type".into()),
    };
    let alg = match jwk.common.key_algorithm {
        Some(ka) => Algorithm::try_from(ka)
            .map_err(|_| format!("alg {ka:?} is not a signature algorithm"))?,
        None => implied,
    };
    let family_ok = matches!(
        (alg, &jwk.algorithm),
        (
            Algorithm::RS256
                | Algorithm::RS384
                | Algorithm::RS512
                | Algorithm::PS256
                | Algorithm::PS384
                | Algorithm::PS512,
            AlgorithmParameters::RSA(_)
        ) | (
            Algorithm::ES256 | Algorithm::ES384,
            AlgorithmParameters::EllipticCurve(_)
        ) | (Algorithm::EdDSA, AlgorithmParameters::OctetKeyPair(_))
    );
    if !family_ok || (alg != implied && matches!(implied, Algorithm::ES256 | Algorithm::ES384)) {
        return Err(format!("alg {} does not fit the key type", alg_name(alg)));
    }
    if let AlgorithmParameters::RSA(rsa) = &jwk.algorithm {
        let bits = rsa_modulus_bits(&rsa.n).ok_or("RSA modulus is not base64url")?;
        if bits < MIN_RSA_BITS {
            return Err(format!(
                "RSA modulus is {bits} bits, under the {MIN_RSA_BITS} required"
            ));
        }
    }
    let decoding = DecodingKey::from_jwk(&jwk).map_err(|e| format!("unusable key: {e}"))?;
    let mut validation = Validation::new(alg);
    // Times, issuer and audience are checked by `Verifier` against the injected clock.
    validation.validate_exp = false;
    validation.validate_nbf = false;
    validation.validate_aud = false;
    validation.required_spec_claims.clear();
    validation.leeway = 0;
    Ok(Key {
        kid: jwk.common.key_id.clone().unwrap_or_default(),
        alg,
        decoding,
        validation,
    })
}
