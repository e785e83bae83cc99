//! What goes back across the ABI: the encoded decision and the engine description.
//!
//! Decision encoding (version 1), little-endian:
//!
//! ```text
//! u8  version (1)
//! u8  flags: 1 allowed, 2 audit, 4 effect is deny, 8 a limit is reported,
//!            16 retry-after is set, 32 the token names a key the JWKS lacks
//! u16 status
//! u8  reason (ztp_reason)
//! u32 remaining cells of the reported limit
//! u64 retry-after seconds
//! 8 × string (u32 length + bytes): message, rule, identity, limit name,
//!     RateLimit value, RateLimit-Policy value, matched rules ("\n"-separated),
//!     rule errors ("rule: error", "\n"-separated)
//! ```

use zt_policy_core::{Decision, Effect, Engine, Reason};

use crate::ztp_reason;

pub fn reason_code(r: Reason) -> ztp_reason {
    match r {
        Reason::Allowed => ztp_reason::ZTP_REASON_ALLOWED,
        Reason::NoIdentity => ztp_reason::ZTP_REASON_NO_IDENTITY,
        Reason::InvalidCertificate => ztp_reason::ZTP_REASON_INVALID_CERTIFICATE,
        Reason::InvalidToken => ztp_reason::ZTP_REASON_INVALID_TOKEN,
        Reason::BodyTooLarge => ztp_reason::ZTP_REASON_BODY_TOO_LARGE,
        Reason::DeniedByRule => ztp_reason::ZTP_REASON_DENIED_BY_RULE,
        Reason::NoAllowRule => ztp_reason::ZTP_REASON_NO_ALLOW_RULE,
        Reason::RateLimited => ztp_reason::ZTP_REASON_RATE_LIMITED,
        Reason::CostExceedsBurst => ztp_reason::ZTP_REASON_COST_EXCEEDS_BURST,
        Reason::LimitTableFull => ztp_reason::ZTP_REASON_LIMIT_TABLE_FULL,
        Reason::LimitError => ztp_reason::ZTP_REASON_LIMIT_ERROR,
        Reason::EngineError => ztp_reason::ZTP_REASON_ENGINE_ERROR,
        Reason::BadRequest => ztp_reason::ZTP_REASON_BAD_REQUEST,
        Reason::MalformedBody => ztp_reason::ZTP_REASON_MALFORMED_BODY,
    }
}

/// Writes into a slice already known to be large enough.
struct Writer<'a> {
    out: &'a mut [u8],
    at: usize,
}

impl Writer<'_> {
    fn put(&mut self, b: &[u8]) {
        self.out[self.at..self.at + b.len()].copy_from_slice(b);
        self.at += b.len();
    }
    fn str_len(&mut self, n: usize) {
        self.put(&(n as u32).to_le_bytes());
    }
    fn str(&mut self, s: &str) {
        self.str_len(s.len());
        self.put(s.as_bytes());
    }
    /// Strings joined by `\n`, written as one string without building it first.
    fn joined<'s>(&mut self, parts: impl Iterator<Item = [&'s str; 3]> + Clone) {
        self.str_len(joined_len(parts.clone()));
        for (i, p) in parts.enumerate() {
            if i > 0 {
                self.put(b"\n");
            }
            for s in p {
                self.put(s.as_bytes());
            }
        }
    }
}

/// The length of `parts`, each the concatenation of its three strings, joined by `\n`.
fn joined_len<'s>(parts: impl Iterator<Item = [&'s str; 3]>) -> usize {
    let (mut len, mut n) = (0, 0);
    for p in parts {
        len += p.iter().map(|s| s.len()).sum::<usize>();
        n += 1;
    }
    len + n.max(1) - 1
}

/// The matched rules and the rule errors, as the two joined strings of the encoding.
fn matched<'a>(d: &'a Decision<'_>) -> impl Iterator<Item = [&'a str; 3]> + Clone {
    d.matched.iter().map(|m| [*m, "", ""])
}

fn errors<'a>(d: &'a Decision<'_>) -> impl Iterator<Item = [&'a str; 3]> + Clone {
    d.errors
        .iter()
        .map(|e| [e.rule.as_str(), ": ", e.error.as_str()])
}

/// Version, flags, status, reason, remaining, retry-after, and the 8 string lengths.
const FIXED: usize = 17 + 8 * 4;

/// The encoded decision's length.
pub fn decision_len(d: &Decision) -> usize {
    let limit = d.limit.as_ref();
    FIXED
        + d.message.len()
        + d.rule.map_or(0, str::len)
        + d.identity.as_deref().map_or(0, str::len)
        + limit.map_or(0, |l| {
            l.name.len() + l.headers.ratelimit.len() + l.headers.ratelimit_policy.len()
        })
        + joined_len(matched(d))
        + joined_len(errors(d))
}

/// Encodes `d` into `out`, which must hold [`decision_len`] bytes; returns that length.
/// Writing in place saves the allocations (and the cache lines) of an intermediate copy.
pub fn decision_into(d: &Decision, out: &mut [u8]) -> usize {
    let mut w = Writer { out, at: 0 };
    let limit = d.limit.as_ref();
    let retry = limit.and_then(|l| l.retry_after_secs);
    let flags = u8::from(d.allowed)
        | (u8::from(d.audit) << 1)
        | (u8::from(d.effect == Effect::Deny) << 2)
        | (u8::from(limit.is_some()) << 3)
        | (u8::from(retry.is_some()) << 4)
        | (u8::from(d.jwks_miss) << 5);
    w.put(&[1, flags]);
    w.put(&d.status.to_le_bytes());
    w.put(&[reason_code(d.reason) as u8]);
    w.put(&limit.map_or(0, |l| l.remaining).to_le_bytes());
    w.put(&retry.unwrap_or(0).to_le_bytes());
    w.str(&d.message);
    w.str(d.rule.unwrap_or(""));
    w.str(d.identity.as_deref().unwrap_or(""));
    w.str(limit.map_or("", |l| l.name));
    w.str(limit.map_or("", |l| &l.headers.ratelimit));
    w.str(limit.map_or("", |l| &l.headers.ratelimit_policy));
    w.joined(matched(d));
    w.joined(errors(d));
    w.at
}

pub fn describe(engine: &Engine) -> String {
    let p = engine.policy();
    serde_json::json!({
        "needs_body": engine.needs_body(),
        "max_body": p.max_body_bytes,
        "mode": p.mode,
        "rules": p.rules.iter().map(|r| &r.name).collect::<Vec<_>>(),
        "limits": p.limits.iter().map(|l| &l.name).collect::<Vec<_>>(),
        "token": p.token.as_ref().map(|t| serde_json::json!({
            "header": t.header,
            "jwks_file": t.jwks_file,
            "issuer": t.settings.issuer,
            "audiences": t.settings.audiences,
            "discovery": t.discovery,
        })),
    })
    .to_string()
}
