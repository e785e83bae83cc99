//! The decision procedure (DESIGN.md "Decision semantics"):
//! identity (401) → body size (413) → rules (deny overrides allow, default deny: 403)
//! → limits (429). Every step fails closed.

use std::borrow::Cow;
use std::sync::{Arc, OnceLock};

use cel::common::value::CowVal;
use cel::context::VariableResolver;
use cel::Env;

use crate::body::{self, LazyBody};
use crate::cert::{CertCache, CertEntry, CertInfo};
use crate::clock::EngineClock;
use crate::decision::{Decision, LimitReport, Reason, RuleError};
use crate::expr::EvalError;
use crate::json::Malformed;
use crate::limits::{LimitState, Outcome};
use crate::llm::Llm;
use crate::native::{self, Scope};
use crate::policy::{self, Effect, MalformedBody, Mode, Policy, PolicyError};
use crate::request::{Request, Scalars};
use crate::token::{JwksError, JwksSummary, TokenError, VerifiedToken, Verifier};
use crate::values::{self, BoxVal, Indexed};
use cel::common::types::CelString;
use cel::common::value::Val;

pub struct Engine {
    policy: Policy,
    env: Arc<Env>,
    clock: EngineClock,
    certs: CertCache,
    verifier: Option<Verifier>,
    limits: Vec<Arc<LimitState>>,
    absent_cert: Indexed,
    empty_claims: Indexed,
    needs_body: bool,
    /// Each rule's "allowed by rule …" message, formatted once rather than per request.
    allow_messages: Vec<String>,
}

/// Identity handed in directly instead of parsed from the request: policy test cases
/// give certificate fields and claims this way. The Caddy module never uses it.
#[derive(Default)]
pub struct GivenIdentity {
    pub cert: Option<CertInfo>,
    pub claims: Option<serde_json::Value>,
}

impl Engine {
    pub fn new(policy: Policy, clock: EngineClock) -> Engine {
        let limits = policy
            .limits
            .iter()
            .map(|l| Arc::new(LimitState::new(l, clock.clone())))
            .collect();
        let verifier = policy
            .token
            .as_ref()
            .map(|t| Verifier::new(t.settings.clone()));
        let reads_body = |e: &crate::expr::Expression| e.reads("body") || e.reads("llm");
        let needs_body = policy.rules.iter().any(|r| reads_body(&r.when))
            || policy.identity.as_ref().is_some_and(reads_body)
            || policy.limits.iter().any(|l| {
                reads_body(&l.key)
                    || l.cost.as_ref().is_some_and(reads_body)
                    || l.when.as_ref().is_some_and(reads_body)
            });
        let allow_messages = policy
            .rules
            .iter()
            .map(|r| format!("allowed by rule {:?}", r.name))
            .collect();
        Engine {
            allow_messages,
            certs: CertCache::new(policy.certificate.cache_size),
            policy,
            env: crate::expr::env(),
            clock,
            verifier,
            limits,
            absent_cert: CertInfo::absent_value(),
            empty_claims: Indexed::from_json(&serde_json::json!({}), 1).expect("empty map"),
            needs_body,
        }
    }

    /// Loads and compiles a TOML policy; `file` names it in errors.
    pub fn from_toml(source: &str, file: &str, clock: EngineClock) -> Result<Engine, PolicyError> {
        Ok(Engine::new(policy::load(source, file)?, clock))
    }

    pub fn policy(&self) -> &Policy {
        &self.policy
    }

    pub fn clock(&self) -> &EngineClock {
        &self.clock
    }

    /// Whether any rule or limit reads `body` or `llm`: when not, the caller need not
    /// buffer the body.
    pub fn needs_body(&self) -> bool {
        self.needs_body
    }

    /// Hands in the JWKS that bearer tokens are verified against.
    pub fn set_jwks(&self, jwks_json: &[u8]) -> Result<JwksSummary, JwksError> {
        match &self.verifier {
            Some(v) => v.set_jwks(jwks_json),
            None => Err(JwksError::NoUsableKeys(
                "the policy has no [token] table, so it takes no JWKS".into(),
            )),
        }
    }

    pub fn verifier(&self) -> Option<&Verifier> {
        self.verifier.as_ref()
    }

    pub fn cached_certificates(&self) -> usize {
        self.certs.len()
    }

    /// Live keys of each limit, by name.
    pub fn limit_keys(&self) -> Vec<(String, usize)> {
        self.policy
            .limits
            .iter()
            .zip(&self.limits)
            .map(|(c, s)| (c.name.clone(), s.live_keys()))
            .collect()
    }

    /// Sweeps stale buckets of every limit now (the engine also does it as it goes).
    pub fn sweep_limits(&self) {
        for l in &self.limits {
            l.sweep();
        }
    }

    /// Takes over the buckets of `previous` for every limit whose definition is
    /// unchanged, so a config reload does not reset them. Returns how many it kept.
    pub fn inherit_state(&mut self, previous: &Engine) -> usize {
        let mut kept = 0;
        for state in &mut self.limits {
            if let Some(old) = previous
                .limits
                .iter()
                .find(|o| o.fingerprint() == state.fingerprint())
            {
                *state = old.clone();
                kept += 1;
            }
        }
        kept
    }

    pub fn decide(&self, req: &Request<'_>) -> Decision<'_> {
        self.finish(self.evaluate(req, None, None))
    }

    /// `decide` with identity given directly (policy tests).
    pub fn decide_given(&self, req: &Request<'_>, given: &GivenIdentity) -> Decision<'_> {
        let cert = given.cert.clone().map(|c| Arc::new(CertEntry::new(c)));
        let claims = match &given.claims {
            None => None,
            Some(json) => match Indexed::from_json(json, self.policy.max_json_depth) {
                Ok(value) => Some(Arc::new(VerifiedToken::new(
                    json.clone(),
                    value,
                    u64::MAX,
                    None,
                ))),
                Err(_) => {
                    return self.finish(Decision::deny(
                        401,
                        Reason::InvalidToken,
                        "claims are nested too deeply",
                    ))
                }
            },
        };
        self.finish(self.evaluate(req, cert, claims))
    }

    /// Evaluates every expression of the policy against one request and returns the
    /// ones that fail, as (where, error). `cel` has no type checker, so this is how a
    /// misspelt field (`cert.subject.nme`) is found before it denies a real request.
    pub fn lint(&self, req: &Request<'_>, given: &GivenIdentity) -> Vec<(String, String)> {
        self.with_given(req, given, "sample-identity", |ctx| self.lint_in(ctx))
    }

    /// Runs `f` in a context of `req` with the identity given directly.
    fn with_given<T>(
        &self,
        req: &Request<'_>,
        given: &GivenIdentity,
        identity: &str,
        f: impl FnOnce(&Scope<'_, '_>) -> T,
    ) -> T {
        let cert = given.cert.clone().map(|c| Arc::new(CertEntry::new(c)));
        let claims = given
            .claims
            .as_ref()
            .and_then(|j| Indexed::from_json(j, self.policy.max_json_depth).ok());
        let act = self.activation(req, cert.as_deref(), claims.as_ref());
        let _ = act.identity.set(identity.to_owned());
        let scope = Scope::new(&self.env, Some(&act), &act);
        f(&scope)
    }

    fn lint_in(&self, ctx: &Scope<'_, '_>) -> Vec<(String, String)> {
        let mut found = Vec::new();
        let mut probe = |place: String, result: Result<(), EvalError>| {
            if let Err(e) = result {
                found.push((place, e.to_string()));
            }
        };
        if let Some(e) = &self.policy.identity {
            probe("settings.identity".into(), e.eval_string(ctx).map(drop));
        }
        for r in &self.policy.rules {
            probe(
                format!("rule {:?} when", r.name),
                r.when.eval_bool(ctx).map(drop),
            );
        }
        for l in &self.policy.limits {
            probe(
                format!("limit {:?} key", l.name),
                l.key.eval_string(ctx).map(drop),
            );
            if let Some(c) = &l.cost {
                probe(
                    format!("limit {:?} cost", l.name),
                    c.eval_u64(ctx).map(drop),
                );
            }
            if let Some(w) = &l.when {
                probe(
                    format!("limit {:?} when", l.name),
                    w.eval_bool(ctx).map(drop),
                );
            }
        }
        found
    }

    /// Every rule's condition evaluated both as flattened for speed and as written, for
    /// tests that the two always agree: (rule, fast result, as-written result).
    #[doc(hidden)]
    #[allow(clippy::type_complexity)]
    pub fn compare_evaluations(
        &self,
        req: &Request<'_>,
        given: &GivenIdentity,
    ) -> Vec<Evaluations> {
        self.with_given(req, given, "id", |ctx| {
            self.policy
                .rules
                .iter()
                .map(|r| Evaluations {
                    rule: r.name.clone(),
                    flattened: r.when.eval(ctx),
                    as_written: r.when.eval_as_written(ctx),
                    native_bool: r.when.eval_native_bool(ctx),
                    native_u64: r.when.eval_native_u64(ctx),
                })
                .collect()
        })
    }

    fn activation<'a>(
        &'a self,
        req: &'a Request<'a>,
        cert: Option<&'a CertEntry>,
        claims: Option<&'a Indexed>,
    ) -> Activation<'a> {
        Activation {
            cert: cert.map_or(&self.absent_cert, |c| &c.value),
            claims: claims.unwrap_or(&self.empty_claims),
            req,
            scalars: req.scalars(),
            request: OnceLock::new(),
            body: OnceLock::new(),
            empty_body: LazyBody::empty(),
            llm: OnceLock::new(),
            identity: OnceLock::new(),
            max_depth: self.policy.max_json_depth,
            malformed_body: self.policy.malformed_body,
        }
    }

    /// RFC 8705: a token bound to a certificate (`cnf.x5t#S256`) is only good with
    /// that certificate; with `certificate_bound`, every token must be bound.
    fn check_binding(
        &self,
        token: &VerifiedToken,
        cert: Option<&CertEntry>,
    ) -> Result<(), TokenError> {
        let required = self
            .policy
            .token
            .as_ref()
            .is_some_and(|t| t.certificate_bound);
        match (&token.cnf_x5t_s256, cert) {
            (Some(want), Some(c)) if *want == c.x5t_s256 => Ok(()),
            (Some(_), _) => Err(TokenError::WrongCertificate),
            (None, _) if required => Err(TokenError::NotBound),
            (None, _) => Ok(()),
        }
    }

    /// Sets the token issuer and audiences the caller configured (the Caddyfile's
    /// `issuer`), adding token verification to a policy without a `[token]` table.
    /// Only before the engine is shared.
    pub fn configure_token(&mut self, issuer: String, audiences: Vec<String>) {
        let depth = self.policy.max_json_depth;
        let cfg = self
            .policy
            .token
            .get_or_insert_with(|| policy::TokenConfig::with_defaults(depth));
        if !audiences.is_empty() || cfg.settings.audiences.is_empty() {
            cfg.settings.audiences = audiences;
        }
        cfg.settings.issuer = issuer;
        match &mut self.verifier {
            Some(v) => {
                let aud = cfg.settings.audiences.clone();
                v.set_issuer(cfg.settings.issuer.clone(), aud)
            }
            None => self.verifier = Some(Verifier::new(cfg.settings.clone())),
        }
    }

    fn finish<'e>(&self, mut d: Decision<'e>) -> Decision<'e> {
        if self.policy.mode == Mode::Audit && d.reason != Reason::EngineError {
            // (bad_request decisions are made by the caller, outside `finish`.)
            d.audit = true;
            d.allowed = true;
        }
        d
    }

    fn evaluate<'e>(
        &'e self,
        req: &Request<'_>,
        given_cert: Option<Arc<CertEntry>>,
        given_claims: Option<Arc<VerifiedToken>>,
    ) -> Decision<'e> {
        // 0. Headers the decision reads must be read alike by everyone after us: given
        //    twice, the engine and the upstream could each take another copy.
        for name in ["authorization", "content-type"]
            .into_iter()
            .chain(self.policy.token.as_ref().map(|t| t.header.as_str()))
        {
            if req.header_count(name) > 1 {
                return Decision::bad_request(format!("more than one {name} header"));
            }
        }

        // 1. Who is calling: certificate, then token, then the identity key.
        let cert = match (given_cert, req.client_cert_der) {
            (Some(c), _) => Some(c),
            (None, Some(der)) => match self.certs.get_or_parse(der) {
                Ok(c) => Some(c),
                Err(e) => return Decision::deny(401, Reason::InvalidCertificate, e.to_string()),
            },
            (None, None) => None,
        };
        if cert.is_none() && self.policy.certificate.required {
            return Decision::deny(401, Reason::NoIdentity, "a client certificate is required");
        }
        let token = match (given_claims, &self.verifier, &self.policy.token) {
            (Some(t), _, _) => Some(t),
            (None, Some(verifier), Some(cfg)) => match req.bearer(&cfg.header) {
                Some(raw) => match verifier.verify(raw, self.clock.unix_now()) {
                    Ok(t) => Some(t),
                    Err(e) => {
                        let mut d = Decision::deny(401, Reason::InvalidToken, e.to_string());
                        d.jwks_miss = e.is_key_miss();
                        return d;
                    }
                },
                None if cfg.required => {
                    return Decision::deny(401, Reason::NoIdentity, "a bearer token is required")
                }
                None => None,
            },
            _ => None,
        };
        if let Some(t) = &token {
            if let Err(e) = self.check_binding(t, cert.as_deref()) {
                return Decision::deny(401, Reason::InvalidToken, e.to_string());
            }
        }
        let act = self.activation(req, cert.as_deref(), token.as_ref().map(|t| &t.value));
        let ctx = Scope::new(&self.env, Some(&act), &act);

        let identity = match &self.policy.identity {
            Some(expr) => match expr.eval_string(&ctx) {
                Ok(s) => Some(s),
                Err(e) if self.policy.require_identity => {
                    return Decision::deny(
                        401,
                        Reason::NoIdentity,
                        format!("the identity expression failed: {e}"),
                    )
                }
                Err(_) => None,
            },
            None => default_identity(cert.as_deref(), token.as_deref()),
        }
        .filter(|s| !s.is_empty());
        if let Some(id) = identity.as_deref().filter(|id| !header_value_safe(id)) {
            // Sent upstream as a header: it must arrive exactly as the decision named it.
            return Decision::deny(
                401,
                Reason::NoIdentity,
                format!("the identity {id:?} cannot be sent as a header value (control characters or surrounding spaces)"),
            );
        }
        let _ = act.identity.set(identity.clone().unwrap_or_default());
        if identity.is_none() && self.policy.require_identity {
            return Decision::deny(
                401,
                Reason::NoIdentity,
                "no identity: present a client certificate or a bearer token",
            );
        }
        let with_identity = |mut d: Decision<'e>| -> Decision<'e> {
            d.identity = identity.clone();
            d
        };

        // 2. Body size, decided on the declared size before anything reads the body.
        let max = self.policy.max_body_bytes;
        if req.body_size > max || req.body.len() as u64 > max {
            return with_identity(Decision::deny(
                413,
                Reason::BodyTooLarge,
                format!(
                    "request body of {} bytes is over the limit of {max} bytes",
                    req.body_size.max(req.body.len() as u64)
                ),
            ));
        }

        // 3. The body, read as vLLM reads it, or refused before any rule sees it.
        if self.needs_body {
            if let Err(e) = act.read_body() {
                return with_identity(Decision::deny(400, Reason::MalformedBody, e.to_string()));
            }
        }

        // 4. Rules: all are evaluated so the decision can name every match.
        let mut matched = Vec::new();
        let mut errors = Vec::new();
        let mut deciding_deny: Option<(&policy::Rule, Option<String>)> = None;
        let mut first_allow: Option<(usize, &policy::Rule)> = None;
        for (i, rule) in self.policy.rules.iter().enumerate() {
            match rule.when.eval_bool(&ctx) {
                Ok(true) => {
                    matched.push(rule.name.as_str());
                    match rule.effect {
                        Effect::Deny if deciding_deny.is_none() => {
                            deciding_deny = Some((rule, None))
                        }
                        Effect::Allow if first_allow.is_none() => first_allow = Some((i, rule)),
                        _ => {}
                    }
                }
                Ok(false) => {}
                Err(e) => {
                    // Fail closed: an error in a deny rule denies; in an allow rule it
                    // simply does not allow.
                    if rule.effect == Effect::Deny && deciding_deny.is_none() {
                        deciding_deny = Some((rule, Some(e.to_string())));
                    }
                    errors.push(RuleError {
                        rule: rule.name.clone(),
                        error: e.to_string(),
                    });
                }
            }
        }
        let explain = Explain {
            identity,
            matched,
            errors,
        };
        if let Some((rule, error)) = deciding_deny {
            let status = rule.status.unwrap_or(self.policy.deny_status);
            let message = match (&error, &rule.message) {
                (Some(e), _) => {
                    format!("denied: rule {:?} could not be evaluated ({e})", rule.name)
                }
                (None, Some(m)) => m.clone(),
                (None, None) => format!("denied by rule {:?}", rule.name),
            };
            return explain.into(
                Decision::deny(status, Reason::DeniedByRule, message),
                Some(&rule.name),
            );
        }
        let Some((allow_index, allow)) = first_allow else {
            return explain.into(
                Decision::deny(
                    self.policy.deny_status,
                    Reason::NoAllowRule,
                    "denied: no allow rule matched",
                ),
                None,
            );
        };

        // 5. Limits, only for requests the rules allow.
        // (limit, remaining, reset) of the limit with the fewest cells left.
        let mut tightest: Option<(&policy::LimitConfig, &LimitState, u32, u64)> = None;
        for (cfg, state) in self.policy.limits.iter().zip(&self.limits) {
            let limit_error = |explain: Explain<'e>, what: &str, e: String| -> Decision<'e> {
                explain.into(
                    Decision::deny(
                        self.policy.deny_status,
                        Reason::LimitError,
                        format!("limit {:?} {what} failed: {e}", cfg.name),
                    ),
                    Some(&allow.name),
                )
            };
            if let Some(when) = &cfg.when {
                match when.eval_bool(&ctx) {
                    Ok(true) => {}
                    Ok(false) => continue,
                    Err(e) => return limit_error(explain, "when", e.to_string()),
                }
            }
            // The default key is the identity itself: no need to run CEL for it.
            let key: Result<Cow<'_, String>, String> = if cfg.key.source == "identity" {
                act.identity
                    .get()
                    .map(Cow::Borrowed)
                    .ok_or_else(|| "no identity".to_owned())
            } else {
                cfg.key
                    .eval_string(&ctx)
                    .map(Cow::Owned)
                    .map_err(|e| e.to_string())
            };
            let key = match key {
                Ok(k) if !k.is_empty() => k,
                Ok(_) => return limit_error(explain, "key", "it is empty".into()),
                Err(e) => return limit_error(explain, "key", e),
            };
            let cost = match &cfg.cost {
                None => 1,
                Some(c) => match c.eval_u64(&ctx) {
                    Ok(n) => n,
                    Err(e) => return limit_error(explain, "cost", e.to_string()),
                },
            };
            let (status, reason, message, retry_after) = match state.check(cfg, &key, cost) {
                Outcome::Allowed {
                    remaining,
                    reset_secs,
                } => {
                    // Tightest = the smallest share of its burst left (limits count
                    // different things: requests, LLM tokens).
                    if tightest.is_none_or(|(c, _, r, _)| {
                        u64::from(remaining) * u64::from(c.burst) < u64::from(r) * u64::from(cfg.burst)
                    }) {
                        tightest = Some((cfg, state, remaining, reset_secs));
                    }
                    continue;
                }
                Outcome::Limited { retry_after_secs } => (
                    429,
                    Reason::RateLimited,
                    format!(
                        "rate limit {:?} exceeded; retry in {retry_after_secs}s",
                        cfg.name
                    ),
                    retry_after_secs,
                ),
                Outcome::CostExceedsBurst { cost, burst } => {
                    return explain.into(
                        Decision::deny(
                            self.policy.deny_status,
                            Reason::CostExceedsBurst,
                            format!(
                                "request costs {cost}, more than limit {:?} allows at once ({burst})",
                                cfg.name
                            ),
                        ),
                        Some(&allow.name),
                    )
                }
                Outcome::TableFull { live_keys } => (
                    429,
                    Reason::LimitTableFull,
                    format!(
                        "limit {:?} already tracks {live_keys} identities (its max_keys); retry later",
                        cfg.name
                    ),
                    1,
                ),
            };
            let mut d = explain.into(Decision::deny(status, reason, message), Some(&allow.name));
            d.limit = Some(LimitReport {
                name: &cfg.name,
                remaining: 0,
                retry_after_secs: Some(retry_after),
                headers: state.headers(cfg, 0, retry_after),
            });
            return d;
        }

        let mut d = explain.into(
            Decision {
                allowed: true,
                effect: Effect::Allow,
                status: 200,
                reason: Reason::Allowed,
                message: Cow::Borrowed(""),
                rule: None,
                matched: Vec::new(),
                errors: Vec::new(),
                identity: None,
                limit: None,
                audit: false,
                jwks_miss: false,
            },
            Some(&allow.name),
        );
        d.message = Cow::Borrowed(&self.allow_messages[allow_index]);
        d.limit = tightest.map(|(cfg, state, remaining, reset)| LimitReport {
            name: &cfg.name,
            remaining,
            retry_after_secs: None,
            headers: state.headers(cfg, remaining, reset),
        });
        d
    }
}

/// What every decision past the identity step carries to explain itself.
struct Explain<'e> {
    identity: Option<String>,
    matched: Vec<&'e str>,
    errors: Vec<RuleError>,
}

impl<'e> Explain<'e> {
    fn into(self, mut d: Decision<'e>, rule: Option<&'e str>) -> Decision<'e> {
        d.identity = self.identity;
        d.rule = rule;
        d.matched = self.matched;
        d.errors = self.errors;
        d
    }
}

/// The token's `sub`, else the certificate's first SAN email, else its CN.
/// One rule's `when` evaluated every way the engine can (for the differential tests).
#[derive(Debug)]
pub struct Evaluations {
    pub rule: String,
    pub flattened: Result<cel::Value, EvalError>,
    pub as_written: Result<cel::Value, EvalError>,
    pub native_bool: Option<bool>,
    pub native_u64: Option<u64>,
}

fn default_identity(cert: Option<&CertEntry>, token: Option<&VerifiedToken>) -> Option<String> {
    if let Some(sub) = token.and_then(|t| t.subject()).filter(|s| !s.is_empty()) {
        return Some(sub.to_owned());
    }
    let cert = cert?;
    cert.info
        .san_email
        .first()
        .cloned()
        .or_else(|| Some(cert.info.subject.cn.clone()))
}

/// The variables of one request, resolved when an expression first reads them.
struct Activation<'a> {
    cert: &'a Indexed,
    claims: &'a Indexed,
    req: &'a Request<'a>,
    scalars: Scalars<'a>,
    request: OnceLock<BoxVal<'a>>,
    body: OnceLock<Result<LazyBody<'a>, Malformed>>,
    /// What `body` is when the body was refused (only an identity expression that
    /// reads the body sees it: the refusal comes right after the identity).
    empty_body: LazyBody<'static>,
    llm: OnceLock<Indexed>,
    identity: OnceLock<String>,
    max_depth: usize,
    malformed_body: MalformedBody,
}

impl<'a> Activation<'a> {
    /// The body as vLLM reads it: a JSON object (see `json`), empty when the request
    /// has no JSON body, or why it was refused.
    fn read_body(&self) -> Result<&LazyBody<'a>, &Malformed> {
        self.body
            .get_or_init(|| body::read_request(self.req, self.max_depth, self.malformed_body))
            .as_ref()
    }

    fn body(&self) -> &LazyBody<'a> {
        self.read_body().unwrap_or(&self.empty_body)
    }

    fn llm(&self) -> &Indexed {
        self.llm.get_or_init(|| {
            let view = Llm::read(self.req.path, self.body()).to_json();
            Indexed::from_json(&view, 2).expect("a flat object is within two levels")
        })
    }

    fn request(&self) -> &(dyn Val + 'a) {
        self.request.get_or_init(|| self.req.to_value()).as_ref()
    }

    /// The value at a variable or field path, borrowed where it can be.
    fn lookup<'b>(&'b self, root: &str, path: Option<&str>) -> Option<CowVal<'b, 'b>> {
        match (root, path) {
            ("cert", None) => Some(CowVal::Borrowed(self.cert.root())),
            ("cert", Some(p)) => self.cert.get(p).map(CowVal::Borrowed),
            ("claims", None) => Some(CowVal::Borrowed(self.claims.root())),
            ("claims", Some(p)) => self.claims.get(p).map(CowVal::Borrowed),
            ("body", None) => Some(CowVal::Borrowed(self.body().whole())),
            ("body", Some(p)) => {
                let (first, rest) = match p.split_once('.') {
                    Some((first, rest)) => (first, Some(rest)),
                    None => (p, None),
                };
                let top = self.body().get(first)?;
                match rest {
                    None => Some(CowVal::Borrowed(top)),
                    Some(rest) => walk(top, rest),
                }
            }
            ("request", None) => Some(CowVal::Borrowed(self.request())),
            ("request", Some(p)) => match self.scalars.get(p) {
                Some(v) => Some(CowVal::Borrowed(v)),
                None => walk(self.request(), p),
            },
            ("llm", None) => Some(CowVal::Borrowed(self.llm().root())),
            ("llm", Some(p)) => self.llm().get(p).map(CowVal::Borrowed),
            ("identity", None) => {
                Some(CowVal::Owned(values::string(self.identity.get()?.as_str())))
            }
            _ => None,
        }
    }

    /// `has(root.path.field)`: `None` when cel itself would fail (the parent is
    /// missing or not a map), so the program as written reports the error.
    fn has(&self, root: &str, path: Option<&str>, field: &str) -> Option<bool> {
        if root == "body" && path.is_none() {
            return Some(self.body().has(field));
        }
        let value = self.lookup(root, path)?;
        let key = CelString::from(field);
        let result = match &value {
            CowVal::Borrowed(v) => v.as_indexer()?.get(&key).map(|_| ()),
            CowVal::Owned(v) => v.as_indexer()?.get(&key).map(|_| ()),
        };
        match result {
            Ok(()) => Some(true),
            Err(cel::ExecutionError::NoSuchKey(_)) => Some(false),
            Err(_) => None,
        }
    }
}

/// Walks `path` below `root` through map lookups.
fn walk<'b>(root: &'b (dyn Val + 'b), path: &str) -> Option<CowVal<'b, 'b>> {
    let mut current = root;
    for segment in path.split('.') {
        let key = CelString::from(segment);
        match current.as_indexer()?.get(&key).ok()? {
            CowVal::Borrowed(v) => current = v,
            CowVal::Owned(_) => return None,
        }
    }
    Some(CowVal::Borrowed(current))
}

impl VariableResolver for Activation<'_> {
    /// Answers a variable, a whole field path (`cert.subject.cn`) or a presence test
    /// (`has(body.model)`; see `expr::flatten`) in one call. What it cannot answer
    /// exactly it leaves to cel (`None`), which then reports the missing key.
    fn resolve<'b>(&'b self, variable: &str) -> Option<CowVal<'b, 'b>> {
        if let Some(test) = native::presence_test(variable) {
            let (parent, field) = test?;
            let (root, path) = native::split_path(parent);
            return self.has(root, path, field).map(native::bool_val);
        }
        let (root, path) = native::split_path(variable);
        self.lookup(root, path)
    }
}

/// The native evaluator's reads: the same lookups `resolve` makes, on names split
/// when the policy loaded.
impl native::Vars for Activation<'_> {
    fn path<'b>(&'b self, root: &str, path: Option<&str>) -> Option<CowVal<'b, 'b>> {
        self.lookup(root, path)
    }
    fn has(&self, root: &str, path: Option<&str>, field: &str) -> Option<bool> {
        Activation::has(self, root, path, field)
    }
}

/// Whether a value reaches the upstream as the same header value: no control
/// characters (HTTP refuses them) and no surrounding spaces (HTTP trims them).
fn header_value_safe(v: &str) -> bool {
    !v.bytes().any(|b| b < 0x20 || b == 0x7f) && v.trim_matches([' ', '\t']) == v
}
