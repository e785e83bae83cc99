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
    }
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as u32).to_le_bytes());
    out.extend_from_slice(s.as_bytes());
}

pub fn decision(d: &Decision) -> Vec<u8> {
    let mut out = Vec::with_capacity(128 + d.message.len());
    let limit = d.limit.as_ref();
    let retry = limit.and_then(|l| l.retry_after_secs);
    let flags = u8::from(d.allowed)
        | (u8::from(d.audit) << 1)
        | (u8::from(d.effect == Effect::Deny) << 2)
        | (u8::from(limit.is_some()) << 3)
        | (u8::from(retry.is_some()) << 4)
        | (u8::from(d.jwks_miss) << 5);
    out.push(1);
    out.push(flags);
    out.extend_from_slice(&d.status.to_le_bytes());
    out.push(reason_code(d.reason) as u8);
    out.extend_from_slice(&limit.map_or(0, |l| l.remaining).to_le_bytes());
    out.extend_from_slice(&retry.unwrap_or(0).to_le_bytes());
    put_str(&mut out, &d.message);
    put_str(&mut out, d.rule.as_deref().unwrap_or(""));
    put_str(&mut out, d.identity.as_deref().unwrap_or(""));
    put_str(&mut out, limit.map_or("", |l| &l.name));
    put_str(&mut out, limit.map_or("", |l| &l.headers.ratelimit));
    put_str(&mut out, limit.map_or("", |l| &l.headers.ratelimit_policy));
    put_str(&mut out, &d.matched.join("\n"));
    let errors: Vec<String> = d
        .errors
        .iter()
        .map(|e| format!("{}: {}", e.rule, e.error))
        .collect();
    put_str(&mut out, &errors.join("\n"));
    out
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
