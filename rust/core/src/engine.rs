//! The decision procedure (DESIGN.md "Decision semantics"):
//! identity (401) → body size (413) → rules (deny overrides allow, default deny: 403)
//! → limits (429). Every step fails closed.

use std::sync::{Arc, OnceLock};

use cel::common::value::CowVal;
use cel::context::VariableResolver;
use cel::{Context, Env};

use crate::cert::{CertCache, CertEntry, CertInfo};
use crate::clock::EngineClock;
use crate::decision::{Decision, LimitReport, Reason, RuleError};
use crate::limits::{self, LimitState, Outcome};
use crate::policy::{self, Effect, Mode, Policy, PolicyError};
use crate::request::Request;
use crate::token::{JwksError, JwksSummary, VerifiedToken, Verifier};
use crate::values::{self, BoxVal};

pub struct Engine {
    policy: Policy,
    env: Arc<Env>,
    clock: EngineClock,
    certs: CertCache,
    verifier: Option<Verifier>,
    limits: Vec<Arc<LimitState>>,
    absent_cert: BoxVal<'static>,
    empty_claims: BoxVal<'static>,
    needs_body: bool,
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
        let needs_body = policy.rules.iter().any(|r| r.when.reads("body"))
            || policy.identity.as_ref().is_some_and(|e| e.reads("body"))
            || policy.limits.iter().any(|l| {
                l.key.reads("body")
                    || l.cost.as_ref().is_some_and(|e| e.reads("body"))
                    || l.when.as_ref().is_some_and(|e| e.reads("body"))
            });
        Engine {
            certs: CertCache::new(policy.certificate.cache_size),
            policy,
            env: crate::expr::env(),
            clock,
            verifier,
            limits,
            absent_cert: CertInfo::absent_value(),
            empty_claims: values::empty_map(),
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

    /// Whether any rule or limit reads `body`: when not, the caller need not buffer it.
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

    pub fn decide(&self, req: &Request<'_>) -> Decision {
        self.finish(self.evaluate(req, None, None))
    }

    /// `decide` with identity given directly (policy tests).
    pub fn decide_given(&self, req: &Request<'_>, given: &GivenIdentity) -> Decision {
        let cert = given.cert.clone().map(|c| Arc::new(CertEntry::new(c)));
        let claims = match &given.claims {
            None => None,
            Some(json) => match values::from_json(json, self.policy.max_json_depth) {
                Ok(value) => Some(Arc::new(VerifiedToken {
                    claims: json.clone(),
                    value,
                    exp: u64::MAX,
                    nbf: None,
                })),
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
        let cert = given.cert.clone().map(|c| Arc::new(CertEntry::new(c)));
        let claims = given
            .claims
            .as_ref()
            .and_then(|j| values::from_json(j, self.policy.max_json_depth).ok());
        let act = self.activation(req, cert.as_deref(), claims.as_deref());
        let _ = act.identity.set("sample-identity".into());
        let mut ctx = Context::with_env(self.env.clone());
        ctx.set_variable_resolver(&act);
        let mut found = Vec::new();
        let mut probe = |place: String, result: Result<(), String>| {
            if let Err(e) = result {
                found.push((place, e));
            }
        };
        if let Some(e) = &self.policy.identity {
            probe("settings.identity".into(), e.eval_string(&ctx).map(drop));
        }
        for r in &self.policy.rules {
            probe(
                format!("rule {:?} when", r.name),
                r.when.eval_bool(&ctx).map(drop),
            );
        }
        for l in &self.policy.limits {
            probe(
                format!("limit {:?} key", l.name),
                l.key.eval_string(&ctx).map(drop),
            );
            if let Some(c) = &l.cost {
                probe(
                    format!("limit {:?} cost", l.name),
                    c.eval_u64(&ctx).map(drop),
                );
            }
            if let Some(w) = &l.when {
                probe(
                    format!("limit {:?} when", l.name),
                    w.eval_bool(&ctx).map(drop),
                );
            }
        }
        found
    }

    fn activation<'a>(
        &'a self,
        req: &'a Request<'a>,
        cert: Option<&'a CertEntry>,
        claims: Option<&'a (dyn cel::common::value::Val + 'static)>,
    ) -> Activation<'a> {
        Activation {
            cert: cert.map_or(&*self.absent_cert, |c| &*c.value),
            claims: claims.unwrap_or(&*self.empty_claims),
            req,
            request: OnceLock::new(),
            body: OnceLock::new(),
            identity: OnceLock::new(),
            max_body: self.policy.max_body_bytes,
            max_depth: self.policy.max_json_depth,
        }
    }

    fn finish(&self, mut d: Decision) -> Decision {
        if self.policy.mode == Mode::Audit && d.reason != Reason::EngineError {
            d.audit = true;
            d.allowed = true;
        }
        d
    }

    fn evaluate(
        &self,
        req: &Request<'_>,
        given_cert: Option<Arc<CertEntry>>,
        given_claims: Option<Arc<VerifiedToken>>,
    ) -> Decision {
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
                    Err(e) => return Decision::deny(401, Reason::InvalidToken, e.to_string()),
                },
                None if cfg.required => {
                    return Decision::deny(401, Reason::NoIdentity, "a bearer token is required")
                }
                None => None,
            },
            _ => None,
        };
        let act = self.activation(req, cert.as_deref(), token.as_ref().map(|t| &*t.value));
        let mut ctx = Context::with_env(self.env.clone());
        ctx.set_variable_resolver(&act);

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
        let _ = act.identity.set(identity.clone().unwrap_or_default());
        if identity.is_none() && self.policy.require_identity {
            return Decision::deny(
                401,
                Reason::NoIdentity,
                "no identity: present a client certificate or a bearer token",
            );
        }
        let with_identity = |mut d: Decision| {
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

        // 3. Rules: all are evaluated so the decision can name every match.
        let mut matched = Vec::new();
        let mut errors = Vec::new();
        let mut deciding_deny: Option<(&policy::Rule, Option<String>)> = None;
        let mut first_allow: Option<&policy::Rule> = None;
        for rule in &self.policy.rules {
            match rule.when.eval_bool(&ctx) {
                Ok(true) => {
                    matched.push(rule.name.clone());
                    match rule.effect {
                        Effect::Deny if deciding_deny.is_none() => {
                            deciding_deny = Some((rule, None))
                        }
                        Effect::Allow if first_allow.is_none() => first_allow = Some(rule),
                        _ => {}
                    }
                }
                Ok(false) => {}
                Err(e) => {
                    // Fail closed: an error in a deny rule denies; in an allow rule it
                    // simply does not allow.
                    if rule.effect == Effect::Deny && deciding_deny.is_none() {
                        deciding_deny = Some((rule, Some(e.clone())));
                    }
                    errors.push(RuleError {
                        rule: rule.name.clone(),
                        error: e,
                    });
                }
            }
        }
        let explained = |mut d: Decision, rule: Option<&str>| {
            d.identity = identity.clone();
            d.rule = rule.map(str::to_owned);
            d.matched = matched.clone();
            d.errors = errors.clone();
            d
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
            return explained(
                Decision::deny(status, Reason::DeniedByRule, message),
                Some(&rule.name),
            );
        }
        let Some(allow) = first_allow else {
            return explained(
                Decision::deny(
                    self.policy.deny_status,
                    Reason::NoAllowRule,
                    "denied: no allow rule matched",
                ),
                None,
            );
        };

        // 4. Limits, only for requests the rules allow.
        let mut tightest: Option<LimitReport> = None;
        for (cfg, state) in self.policy.limits.iter().zip(&self.limits) {
            let limit_error = |what: &str, e: String| {
                explained(
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
                    Err(e) => return limit_error("when", e),
                }
            }
            let key = match cfg.key.eval_string(&ctx) {
                Ok(k) if !k.is_empty() => k,
                Ok(_) => return limit_error("key", "it is empty".into()),
                Err(e) => return limit_error("key", e),
            };
            let cost = match &cfg.cost {
                None => 1,
                Some(c) => match c.eval_u64(&ctx) {
                    Ok(n) => n,
                    Err(e) => return limit_error("cost", e),
                },
            };
            match state.check(cfg, &key, cost) {
                Outcome::Allowed {
                    remaining,
                    reset_secs,
                } => {
                    if tightest.as_ref().is_none_or(|t| remaining < t.remaining) {
                        tightest = Some(LimitReport {
                            name: cfg.name.clone(),
                            remaining,
                            retry_after_secs: None,
                            headers: limits::headers(cfg, remaining, reset_secs),
                        });
                    }
                }
                Outcome::Limited { retry_after_secs } => {
                    let mut d = explained(
                        Decision::deny(
                            429,
                            Reason::RateLimited,
                            format!(
                                "rate limit {:?} exceeded; retry in {retry_after_secs}s",
                                cfg.name
                            ),
                        ),
                        Some(&allow.name),
                    );
                    d.limit = Some(LimitReport {
                        name: cfg.name.clone(),
                        remaining: 0,
                        retry_after_secs: Some(retry_after_secs),
                        headers: limits::headers(cfg, 0, retry_after_secs),
                    });
                    return d;
                }
                Outcome::CostExceedsBurst { cost, burst } => return explained(
                    Decision::deny(
                        self.policy.deny_status,
                        Reason::CostExceedsBurst,
                        format!(
                            "request costs {cost}, more than limit {:?} allows at once ({burst})",
                            cfg.name
                        ),
                    ),
                    Some(&allow.name),
                ),
                Outcome::TableFull { live_keys } => {
                    let mut d = explained(
                        Decision::deny(
                            429,
                            Reason::LimitTableFull,
                            format!(
                                "limit {:?} already tracks {live_keys} identities (its max_keys); retry later",
                                cfg.name
                            ),
                        ),
                        Some(&allow.name),
                    );
                    d.limit = Some(LimitReport {
                        name: cfg.name.clone(),
                        remaining: 0,
                        retry_after_secs: Some(1),
                        headers: limits::headers(cfg, 0, 1),
                    });
                    return d;
                }
            }
        }

        let mut d = explained(
            Decision {
                allowed: true,
                effect: Effect::Allow,
                status: 200,
                reason: Reason::Allowed,
                message: format!("allowed by rule {:?}", allow.name),
                rule: None,
                matched: Vec::new(),
                errors: Vec::new(),
                identity: None,
                limit: None,
                audit: false,
            },
            Some(&allow.name),
        );
        d.limit = tightest;
        d
    }
}

/// The token's `sub`, else the certificate's first SAN email, else its CN.
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
    cert: &'a (dyn cel::common::value::Val + 'static),
    claims: &'a (dyn cel::common::value::Val + 'static),
    req: &'a Request<'a>,
    request: OnceLock<BoxVal<'a>>,
    body: OnceLock<BoxVal<'static>>,
    identity: OnceLock<String>,
    max_body: u64,
    max_depth: usize,
}

impl VariableResolver for Activation<'_> {
    fn resolve<'b>(&'b self, variable: &str) -> Option<CowVal<'b, 'b>> {
        Some(match variable {
            "cert" => CowVal::Borrowed(self.cert),
            "claims" => CowVal::Borrowed(self.claims),
            "request" => {
                CowVal::Borrowed(self.request.get_or_init(|| self.req.to_value()).as_ref())
            }
            "body" => CowVal::Borrowed(
                self.body
                    .get_or_init(|| parse_body(self.req, self.max_body, self.max_depth))
                    .as_ref(),
            ),
            "identity" => CowVal::Owned(values::string(self.identity.get()?.as_str())),
            _ => return None,
        })
    }
}

/// `body`: the JSON object of a JSON request within the size limit, else an empty map,
/// so malformed JSON leaves the decision to the rules.
fn parse_body(req: &Request<'_>, max_body: u64, max_depth: usize) -> BoxVal<'static> {
    if req.body.is_empty() || req.body.len() as u64 > max_body || !req.is_json() {
        return values::empty_map();
    }
    match serde_json::from_slice::<serde_json::Value>(req.body) {
        Ok(v @ serde_json::Value::Object(_)) => {
            values::from_json(&v, max_depth).unwrap_or_else(|_| values::empty_map())
        }
        _ => values::empty_map(),
    }
}
