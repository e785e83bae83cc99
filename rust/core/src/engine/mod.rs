//! The engine: a compiled policy with its caches and buckets, and what callers do with
//! it. The decision itself is `pipeline` (repeated headers → identity → size → body →
//! rules → limits, each step failing closed); what its expressions read is
//! `activation`.

mod activation;
mod pipeline;
mod settle;
mod shared;

pub use settle::{Ending, SettleRule, Settled, Usage};
pub use shared::{OnFailure, StoreClient};

use std::sync::{Arc, OnceLock};

use cel::Env;

use crate::body::LazyBody;
use crate::cert::{CertCache, CertEntry, CertInfo};
use crate::clock::EngineClock;
use crate::decision::{Decision, Reason};
use crate::eval::expr::{EvalError, Expression};
use crate::eval::native::Scope;
use crate::inflight::InFlightState;
use crate::limits::LimitState;
use crate::plain::Value;
use crate::policy::{self, Policy, PolicyError};
use crate::request::Request;
use crate::token::{JwksError, JwksSummary, VerifiedToken, Verifier};
use crate::values::Indexed;

use activation::Activation;

pub struct Engine {
    policy: Policy,
    env: Arc<Env>,
    clock: EngineClock,
    certs: CertCache,
    verifier: Option<Verifier>,
    limits: Vec<Arc<LimitState>>,
    caps: Vec<Arc<InFlightState>>,
    leases: settle::Leases,
    /// The limits store of cluster-scoped limits and caps (none: they are judged here).
    shared: Option<shared::Shared>,
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
        let caps = policy
            .concurrency
            .iter()
            .map(|c| Arc::new(InFlightState::new(c)))
            .collect();
        let verifier = policy
            .token
            .as_ref()
            .map(|t| Verifier::new(t.settings.clone()));
        let reads_body = |e: &Expression| e.reads("body") || e.reads("llm");
        // A settled limit reads the body too: whether vLLM will stream without usage.
        let needs_body = policy.rules.iter().any(|r| reads_body(&r.when))
            || policy.identity.as_ref().is_some_and(reads_body)
            || policy.limits.iter().any(|l| {
                l.settle.is_some()
                    || reads_body(&l.key)
                    || l.cost.as_ref().is_some_and(reads_body)
                    || l.when.as_ref().is_some_and(reads_body)
            })
            || policy
                .concurrency
                .iter()
                .any(|c| reads_body(&c.key) || c.when.as_ref().is_some_and(reads_body));
        let allow_messages = policy
            .rules
            .iter()
            .map(|r| format!("allowed by rule {:?}", r.name))
            .collect();
        Engine {
            allow_messages,
            certs: CertCache::new(policy.certificate.cache_size),
            policy,
            env: crate::eval::expr::env(),
            clock,
            verifier,
            limits,
            caps,
            leases: settle::Leases::default(),
            shared: None,
            absent_cert: CertInfo::absent_value(),
            empty_claims: Indexed::from_json(&serde_json::json!({}), 1).expect("empty map"),
            needs_body,
        }
    }

    /// Loads and compiles a TOML policy; `file` names it in errors.
    pub fn from_toml(source: &str, file: &str, clock: EngineClock) -> Result<Engine, PolicyError> {
        Ok(Engine::new(policy::load(source, file)?, clock))
    }

    /// Hands cluster-scoped limits and caps to a store; without one (policy tests)
    /// they are judged by this engine's own buckets, like local ones.
    pub fn set_store(&mut self, client: Arc<dyn StoreClient>, on_failure: OnFailure) {
        self.shared = Some(shared::Shared::new(client, on_failure, &self.policy));
    }

    /// The names of the limits and caps whose scope is "cluster".
    pub fn cluster_scoped(&self) -> Vec<&str> {
        let limits = (self.policy.limits.iter()).filter(|l| l.scope == policy::Scope::Cluster);
        let caps = (self.policy.concurrency.iter()).filter(|c| c.scope == policy::Scope::Cluster);
        limits
            .map(|l| l.name.as_str())
            .chain(caps.map(|c| c.name.as_str()))
            .collect()
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

    /// Takes over the buckets of `previous` for every limit, and the open slots for
    /// every in-flight cap, whose definition is unchanged, so a config reload resets
    /// neither. Returns how many it kept.
    pub fn inherit_state(&mut self, previous: &Engine) -> usize {
        inherit(&mut self.limits, &previous.limits, LimitState::fingerprint)
            + inherit(&mut self.caps, &previous.caps, InFlightState::fingerprint)
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
        // Limits, then caps: both have a key and a `when`; limits also a cost.
        let keyed = (self.policy.limits.iter())
            .map(|l| ("limit", &l.name, &l.key, l.cost.as_ref(), l.when.as_ref()))
            .chain(
                (self.policy.concurrency.iter())
                    .map(|c| ("concurrency", &c.name, &c.key, None, c.when.as_ref())),
            );
        for (kind, name, key, cost, when) in keyed {
            probe(
                format!("{kind} {name:?} key"),
                key.eval_string(ctx).map(drop),
            );
            if let Some(c) = cost {
                probe(format!("{kind} {name:?} cost"), c.eval_u64(ctx).map(drop));
            }
            if let Some(w) = when {
                probe(format!("{kind} {name:?} when"), w.eval_bool(ctx).map(drop));
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
                    flattened: r.when.eval(ctx).map(|v| Value::of_cel(&v)),
                    as_written: r.when.eval_as_written(ctx).map(|v| Value::of_cel(&v)),
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
}

/// Replaces each state of `new` by the one of `old` with the same fingerprint.
fn inherit<T>(new: &mut [Arc<T>], old: &[Arc<T>], fingerprint: fn(&T) -> &str) -> usize {
    let mut kept = 0;
    for state in new {
        if let Some(o) = old.iter().find(|o| fingerprint(o) == fingerprint(state)) {
            *state = o.clone();
            kept += 1;
        }
    }
    kept
}

/// One rule's `when` evaluated every way the engine can (for the differential tests).
#[derive(Debug)]
pub struct Evaluations {
    pub rule: String,
    pub flattened: Result<Value, EvalError>,
    pub as_written: Result<Value, EvalError>,
    pub native_bool: Option<bool>,
    pub native_u64: Option<u64>,
}
