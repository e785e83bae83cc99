//! What the engine answers: the outcome, the status to send, and enough to explain it.

use std::borrow::Cow;

use serde::Serialize;

use crate::limits::RateLimitHeaders;
use crate::policy::Effect;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Reason {
    Allowed,
    NoIdentity,
    InvalidCertificate,
    InvalidToken,
    BodyTooLarge,
    DeniedByRule,
    NoAllowRule,
    RateLimited,
    CostExceedsBurst,
    LimitTableFull,
    LimitError,
    EngineError,
    /// The request could not be read (e.g. a header that is not UTF-8, or a header the
    /// decision reads given twice).
    BadRequest,
    /// The body is JSON by its Content-Type but not one every reader reads alike.
    MalformedBody,
    /// A `[[concurrency]]` cap has all its slots taken by requests in flight.
    ConcurrencyLimit,
    /// Cluster-scoped limits could not reach their store, and `on_failure` is `deny`.
    StoreUnavailable,
}

impl Reason {
    pub fn as_str(&self) -> &'static str {
        match self {
            Reason::Allowed => "allowed",
            Reason::NoIdentity => "no_identity",
            Reason::InvalidCertificate => "invalid_certificate",
            Reason::InvalidToken => "invalid_token",
            Reason::BodyTooLarge => "body_too_large",
            Reason::DeniedByRule => "denied_by_rule",
            Reason::NoAllowRule => "no_allow_rule",
            Reason::RateLimited => "rate_limited",
            Reason::CostExceedsBurst => "cost_exceeds_burst",
            Reason::LimitTableFull => "limit_table_full",
            Reason::LimitError => "limit_error",
            Reason::EngineError => "engine_error",
            Reason::BadRequest => "bad_request",
            Reason::MalformedBody => "malformed_body",
            Reason::ConcurrencyLimit => "concurrency_limit",
            Reason::StoreUnavailable => "store_unavailable",
        }
    }
}

/// A rule whose expression failed to evaluate, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RuleError {
    pub rule: String,
    pub error: String,
}

/// The limit that fired (on a 429) or the tightest one that was checked (on an allow).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LimitReport<'e> {
    /// Borrowed from the engine's policy, like the rule names below.
    pub name: &'e str,
    pub remaining: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retry_after_secs: Option<u64>,
    pub headers: RateLimitHeaders,
}

/// A decision borrows what it names (rules, limits, fixed messages) from the engine
/// that made it, so deciding does not copy them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Decision<'e> {
    /// Whether the request goes on. In audit mode always true.
    pub allowed: bool,
    /// What the policy decided.
    pub effect: Effect,
    /// The status the policy decided: 200 for allow.
    pub status: u16,
    pub reason: Reason,
    /// One sentence for the client and the log.
    pub message: Cow<'e, str>,
    /// More for the log only, where the client's sentence must not say it (a token's
    /// expected issuer, the server's clock, the key table).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    /// The rule that decided: the matching deny rule, or the first matching allow rule.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rule: Option<&'e str>,
    /// Every rule whose condition was true, in policy order.
    pub matched: Vec<&'e str>,
    /// Rules whose condition failed to evaluate.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<RuleError>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub identity: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub limit: Option<LimitReport<'e>>,
    /// Audit mode: `effect`/`status` are what enforcement would have done.
    pub audit: bool,
    /// The token names a key the JWKS lacks: a caller that fetches the JWKS should
    /// refetch it (keys rotate) and decide again.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub jwks_miss: bool,
    /// What the allowed request holds until it ends (reservations of settled limits,
    /// in-flight slots): the caller hands it back to `Engine::settle` when the response
    /// is done, whatever happened to it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lease: Option<u64>,
    /// Tokens each settled limit reserved, by limit.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub reserved: Vec<(&'e str, u64)>,
    /// The request streams without a usage chunk and a limit settles from usage: the
    /// caller adds `"stream_options":{"include_usage":true}` before the body's last `}`
    /// and removes the usage-only chunk from what the client receives.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub add_stream_usage: bool,
    /// How cluster-scoped limits were judged, when the request met any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub store: Option<StoreOutcome>,
    /// The limits store changed state with this request (to log once per change).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub store_event: Option<StoreEvent>,
}

/// How a request's cluster-scoped limits and caps were judged.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum StoreOutcome {
    /// By the store, in one atomic call.
    Shared,
    /// The store did not answer: by this replica's own buckets (`on_failure local`).
    Local,
    /// The store did not answer: refused with 503 (`on_failure deny`).
    Denied,
    /// The store did not answer: not limited (`on_failure allow`).
    Allowed,
}

impl StoreOutcome {
    pub fn as_str(self) -> &'static str {
        match self {
            StoreOutcome::Shared => "shared",
            StoreOutcome::Local => "local",
            StoreOutcome::Denied => "denied",
            StoreOutcome::Allowed => "allowed",
        }
    }
}

/// A change of the limits store's state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case", tag = "state", content = "error")]
pub enum StoreEvent {
    /// It stopped answering (the error).
    Unavailable(String),
    /// It answers again.
    Available,
}

impl<'e> Decision<'e> {
    pub(crate) fn deny(status: u16, reason: Reason, message: impl Into<Cow<'e, str>>) -> Self {
        Decision::new(Effect::Deny, status, reason, message.into())
    }

    /// The request goes on; `message` says which rule allowed it.
    pub(crate) fn allow(message: &'e str) -> Self {
        Decision::new(Effect::Allow, 200, Reason::Allowed, Cow::Borrowed(message))
    }

    fn new(effect: Effect, status: u16, reason: Reason, message: Cow<'e, str>) -> Self {
        Decision {
            allowed: effect == Effect::Allow,
            effect,
            status,
            reason,
            message,
            detail: None,
            rule: None,
            matched: Vec::new(),
            errors: Vec::new(),
            identity: None,
            limit: None,
            audit: false,
            jwks_miss: false,
            lease: None,
            reserved: Vec::new(),
            add_stream_usage: false,
            store: None,
            store_event: None,
        }
    }

    /// A refusal whose client message is a class of problem and whose detail is logged.
    pub(crate) fn deny_detailed(
        status: u16,
        reason: Reason,
        message: impl Into<Cow<'e, str>>,
        detail: String,
    ) -> Self {
        let mut d = Decision::deny(status, reason, message);
        d.detail = Some(detail);
        d
    }

    /// The answer when the engine itself failed: never a pass.
    pub fn engine_error(message: impl Into<Cow<'e, str>>) -> Self {
        Decision::deny(500, Reason::EngineError, message)
    }

    /// The answer to a request that cannot be read: never a pass, not even in audit mode.
    pub fn bad_request(message: impl Into<Cow<'e, str>>) -> Self {
        Decision::deny(400, Reason::BadRequest, message)
    }
}
