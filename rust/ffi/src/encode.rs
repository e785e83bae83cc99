//! What goes back across the ABI: the encoded decision and the engine description.
//!
//! The decision's layout is defined once, by the `ZTP_DECISION_*` constants in
//! lib.rs (and so in the header).

use zt_policy_core::{
    Decision, Effect, Engine, Reason, SettleRule, Settled, StoreEvent, StoreOutcome,
};

use crate::{
    ztp_reason, ztp_settle_rule, ztp_store_outcome, ZTP_DECISION_ADD_STREAM_USAGE,
    ZTP_DECISION_ALLOWED, ZTP_DECISION_AT_STRINGS, ZTP_DECISION_AUDIT, ZTP_DECISION_DENY,
    ZTP_DECISION_HAS_LEASE, ZTP_DECISION_HAS_LIMIT, ZTP_DECISION_HAS_RETRY_AFTER,
    ZTP_DECISION_JWKS_MISS, ZTP_DECISION_STRINGS, ZTP_DECISION_VERSION, ZTP_USAGE_ABSENT,
};

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
        Reason::ConcurrencyLimit => ztp_reason::ZTP_REASON_CONCURRENCY_LIMIT,
        Reason::StoreUnavailable => ztp_reason::ZTP_REASON_STORE_UNAVAILABLE,
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
    fn decimal(&mut self, n: u64) {
        use std::io::Write as _;
        let mut digits = std::io::Cursor::new([0u8; 20]);
        let _ = write!(digits, "{n}"); // 20 digits hold any u64
        let len = digits.position() as usize;
        self.put(&digits.get_ref()[..len]);
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

/// The fixed part, and the strings' lengths.
const FIXED: usize = ZTP_DECISION_AT_STRINGS + ZTP_DECISION_STRINGS * 4;
// `decision_into` writes the strings one by one: eleven of them.
const _: () = assert!(ZTP_DECISION_STRINGS == 11);

fn store_outcome(d: &Decision) -> ztp_store_outcome {
    match d.store {
        None => ztp_store_outcome::ZTP_STORE_NONE,
        Some(StoreOutcome::Shared) => ztp_store_outcome::ZTP_STORE_SHARED,
        Some(StoreOutcome::Local) => ztp_store_outcome::ZTP_STORE_LOCAL,
        Some(StoreOutcome::Denied) => ztp_store_outcome::ZTP_STORE_DENIED,
        Some(StoreOutcome::Allowed) => ztp_store_outcome::ZTP_STORE_ALLOWED,
    }
}

/// The store's change of state as the decision's last string.
fn store_event<'a>(d: &'a Decision<'_>) -> [&'a str; 2] {
    match &d.store_event {
        None => ["", ""],
        Some(StoreEvent::Available) => ["available", ""],
        Some(StoreEvent::Unavailable(why)) => ["unavailable: ", why],
    }
}

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
        + d.detail.as_deref().map_or(0, str::len)
        + reserved_len(d)
        + store_event(d).iter().map(|s| s.len()).sum::<usize>()
}

/// The reservations as one string: "limit=tokens" lines.
fn reserved_len(d: &Decision) -> usize {
    let lines: usize = d
        .reserved
        .iter()
        .map(|(name, n)| name.len() + 1 + decimal_len(*n))
        .sum();
    lines + d.reserved.len().max(1) - 1
}

fn decimal_len(mut n: u64) -> usize {
    let mut len = 1;
    while n >= 10 {
        n /= 10;
        len += 1;
    }
    len
}

/// Encodes `d` into `out`, which must hold [`decision_len`] bytes; returns that length.
/// Writing in place saves the allocations (and the cache lines) of an intermediate copy.
pub fn decision_into(d: &Decision, out: &mut [u8]) -> usize {
    let mut w = Writer { out, at: 0 };
    let limit = d.limit.as_ref();
    let retry = limit.and_then(|l| l.retry_after_secs);
    let flag = |on: bool, f: u8| if on { f } else { 0 };
    let flags = flag(d.allowed, ZTP_DECISION_ALLOWED)
        | flag(d.audit, ZTP_DECISION_AUDIT)
        | flag(d.effect == Effect::Deny, ZTP_DECISION_DENY)
        | flag(limit.is_some(), ZTP_DECISION_HAS_LIMIT)
        | flag(retry.is_some(), ZTP_DECISION_HAS_RETRY_AFTER)
        | flag(d.jwks_miss, ZTP_DECISION_JWKS_MISS)
        | flag(d.lease.is_some(), ZTP_DECISION_HAS_LEASE)
        | flag(d.add_stream_usage, ZTP_DECISION_ADD_STREAM_USAGE);
    w.put(&[ZTP_DECISION_VERSION, flags]);
    w.put(&d.status.to_le_bytes());
    w.put(&[reason_code(d.reason) as u8]);
    w.put(&limit.map_or(0, |l| l.remaining).to_le_bytes());
    w.put(&retry.unwrap_or(0).to_le_bytes());
    w.put(&d.lease.unwrap_or(0).to_le_bytes());
    w.put(&[store_outcome(d) as u8]);
    w.str(&d.message);
    w.str(d.rule.unwrap_or(""));
    w.str(d.identity.as_deref().unwrap_or(""));
    w.str(limit.map_or("", |l| l.name));
    w.str(limit.map_or("", |l| &l.headers.ratelimit));
    w.str(limit.map_or("", |l| &l.headers.ratelimit_policy));
    w.joined(matched(d));
    w.joined(errors(d));
    w.str(d.detail.as_deref().unwrap_or(""));
    w.str_len(reserved_len(d));
    for (i, (name, n)) in d.reserved.iter().enumerate() {
        if i > 0 {
            w.put(b"\n");
        }
        w.put(name.as_bytes());
        w.put(b"=");
        w.decimal(*n);
    }
    let [a, b] = store_event(d);
    w.str_len(a.len() + b.len());
    w.put(a.as_bytes());
    w.put(b.as_bytes());
    w.at
}

/// An encoded settlement's length.
pub fn settlement_len(settled: &[Settled]) -> usize {
    4 + settled
        .iter()
        .map(|s| 4 + s.limit.len() + 1 + 32)
        .sum::<usize>()
}

/// Encodes a settlement into `out`, which must hold [`settlement_len`] bytes.
pub fn settlement_into(settled: &[Settled], out: &mut [u8]) -> usize {
    let mut w = Writer { out, at: 0 };
    w.put(&(settled.len() as u32).to_le_bytes());
    for s in settled {
        w.str(s.limit);
        let rule = match s.rule {
            SettleRule::Usage => ztp_settle_rule::ZTP_SETTLE_USAGE,
            SettleRule::Refunded => ztp_settle_rule::ZTP_SETTLE_REFUNDED,
            SettleRule::Kept => ztp_settle_rule::ZTP_SETTLE_KEPT,
            SettleRule::KeptUsageIncomplete => ztp_settle_rule::ZTP_SETTLE_KEPT_USAGE_INCOMPLETE,
            SettleRule::KeptStoreUnavailable => ztp_settle_rule::ZTP_SETTLE_KEPT_STORE_UNAVAILABLE,
        };
        w.put(&[rule as u8]);
        w.put(&s.reserved.to_le_bytes());
        w.put(&s.used.unwrap_or(ZTP_USAGE_ABSENT).to_le_bytes());
        w.put(&s.charged.to_le_bytes());
        w.put(&s.unbilled.to_le_bytes());
    }
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
        "settled_limits": p.limits.iter().filter(|l| l.settle.is_some()).map(|l| &l.name).collect::<Vec<_>>(),
        "concurrency": p.concurrency.iter().map(|c| &c.name).collect::<Vec<_>>(),
        "cluster_scoped": engine.cluster_scoped(),
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{ZTP_DECISION_AT_REASON, ZTP_DECISION_AT_RETRY_AFTER, ZTP_DECISION_AT_STATUS};

    /// The fields sit where the header's offsets say.
    #[test]
    fn the_layout_is_the_headers() {
        let d = Decision::bad_request("nope");
        let mut out = vec![0; decision_len(&d)];
        let n = decision_into(&d, &mut out);
        assert_eq!(n, out.len());
        assert_eq!(out[0], ZTP_DECISION_VERSION);
        assert_eq!(out[crate::ZTP_DECISION_AT_FLAGS], ZTP_DECISION_DENY);
        let at = |i: usize, n: usize| &out[i..i + n];
        assert_eq!(at(ZTP_DECISION_AT_STATUS, 2), 400u16.to_le_bytes());
        assert_eq!(
            out[ZTP_DECISION_AT_REASON],
            ztp_reason::ZTP_REASON_BAD_REQUEST as u8
        );
        assert_eq!(at(ZTP_DECISION_AT_RETRY_AFTER, 8), [0; 8]);
        assert_eq!(at(ZTP_DECISION_AT_STRINGS, 4), 4u32.to_le_bytes());
        assert_eq!(at(ZTP_DECISION_AT_STRINGS + 4, 4), b"nope");
    }

    /// The reservations are the string before the last, "limit=tokens" lines, of the
    /// length the encoder computed first; the store's outcome is a byte, its change of
    /// state the last string.
    #[test]
    fn reservations_then_the_store_event_end_the_decision() {
        let mut d = Decision::bad_request("x");
        d.lease = Some(7);
        d.reserved = vec![("a", 0), ("bb", u64::MAX), ("c", 10)];
        let mut out = vec![0; decision_len(&d)];
        assert_eq!(decision_into(&d, &mut out), out.len());
        let want = format!("a=0\nbb={}\nc=10", u64::MAX);
        assert!(out.ends_with(&[want.as_bytes(), &[0; 4]].concat()));
        let at = out.len() - 4 - want.len() - 4;
        assert_eq!(out[at..at + 4], (want.len() as u32).to_le_bytes());
        assert_eq!(out[crate::ZTP_DECISION_AT_LEASE..][..8], 7u64.to_le_bytes());
        assert_eq!(out[crate::ZTP_DECISION_AT_STORE], 0);

        d.store = Some(StoreOutcome::Local);
        d.store_event = Some(StoreEvent::Unavailable("no answer within 50ms".into()));
        let mut out = vec![0; decision_len(&d)];
        assert_eq!(decision_into(&d, &mut out), out.len());
        assert_eq!(
            out[crate::ZTP_DECISION_AT_STORE],
            ztp_store_outcome::ZTP_STORE_LOCAL as u8
        );
        let event = b"unavailable: no answer within 50ms";
        assert!(out.ends_with(&[&(event.len() as u32).to_le_bytes()[..], event].concat()));
        d.store_event = Some(StoreEvent::Available);
        let mut out = vec![0; decision_len(&d)];
        assert_eq!(decision_into(&d, &mut out), out.len());
        assert!(out.ends_with(b"\x09\0\0\0available"));
    }
}
