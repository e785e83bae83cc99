//! The decision procedure (DESIGN.md "Decision semantics"): repeated headers (400) →
//! identity (401) → body size (413) → malformed body (400) → rules (deny overrides
//! allow, default deny: 403) → limits (429). Every step fails closed.
//!
//! Each step returns the decision that ends the pipeline as its `Err`: the normal way
//! out of a step, not an error, and boxing it would allocate on every refusal.
#![allow(clippy::result_large_err)]

use std::borrow::Cow;
use std::sync::Arc;

use super::settle::{Lease, Reservation};
use super::shared::{OnFailure, Pending, ScriptCall, Shared, SharedHeld};
use super::{Activation, Engine};
use crate::cert::CertEntry;
use crate::decision::{Decision, LimitReport, Reason, RuleError, StoreEvent, StoreOutcome};
use crate::eval::expr::Expression;
use crate::eval::native::Scope;
use crate::inflight;
use crate::limits::{LimitState, Outcome};
use crate::policy::{self, Effect, Mode};
use crate::request::Request;
use crate::token::{TokenError, VerifiedToken};

impl Engine {
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

    pub(super) fn finish<'e>(&self, mut d: Decision<'e>) -> Decision<'e> {
        if self.policy.mode == Mode::Audit && d.reason != Reason::EngineError {
            // (bad_request decisions are made by the caller, outside `finish`.)
            d.audit = true;
            d.allowed = true;
        }
        d
    }

    pub(super) fn evaluate<'e>(
        &'e self,
        req: &Request<'_>,
        given_cert: Option<Arc<CertEntry>>,
        given_claims: Option<Arc<VerifiedToken>>,
    ) -> Decision<'e> {
        if let Err(d) = self.read_alike(req) {
            return d;
        }
        let caller = match self.identify(req, given_cert, given_claims) {
            Ok(c) => c,
            Err(d) => return d,
        };
        let act = self.activation(
            req,
            caller.cert.as_deref(),
            caller.token.as_ref().map(|t| &t.value),
        );
        let ctx = Scope::new(&self.env, Some(&act), &act);
        let identity = match self.identity_key(&caller, &ctx) {
            Ok(i) => i,
            Err(d) => return d,
        };
        let _ = act.identity.set(identity.clone().unwrap_or_default());
        let with_identity = |mut d: Decision<'e>| -> Decision<'e> {
            d.identity = identity.clone();
            d
        };
        if let Err(d) = self.check_size(req) {
            return with_identity(d);
        }
        // The body, read as vLLM reads it, or refused before any rule sees it.
        if self.needs_body {
            if let Err(e) = act.read_body() {
                return with_identity(Decision::deny(400, Reason::MalformedBody, e.to_string()));
            }
        }
        let upgrade = act.scalars.upgrade();
        let verdict = self.rules(!upgrade.is_empty(), &ctx);
        if verdict.deny.is_none() && verdict.allow.is_none() && verdict.allow_ignoring_upgrade {
            let message = format!(
                "denied: a protocol upgrade ({upgrade}) needs an allow rule that names request.upgrade"
            );
            return Explain {
                identity,
                matched: verdict.matched,
                errors: verdict.errors,
            }
            .into(
                Decision::deny(self.policy.deny_status, Reason::NoAllowRule, message),
                None,
            );
        }
        let explain = Explain {
            identity,
            matched: verdict.matched,
            errors: verdict.errors,
        };
        let allow = match self.rule_decision(verdict.deny, verdict.allow, explain) {
            Ok(allowed) => allowed,
            Err(d) => return d,
        };
        self.limits(&act, &ctx, allow)
    }

    /// 0. Headers the decision reads must be read alike by everyone after us: given
    ///    twice, the engine and the upstream could each take another copy (400).
    fn read_alike<'e>(&self, req: &Request<'_>) -> Result<(), Decision<'e>> {
        for name in ["authorization", "content-type"]
            .into_iter()
            .chain(self.policy.token.as_ref().map(|t| t.header.as_str()))
        {
            if req.header_count(name) > 1 {
                return Err(Decision::bad_request(format!(
                    "more than one {name} header"
                )));
            }
        }
        Ok(())
    }

    /// 1. Who is calling: the certificate, then the token and its binding (401).
    fn identify<'e>(
        &self,
        req: &Request<'_>,
        given_cert: Option<Arc<CertEntry>>,
        given_claims: Option<Arc<VerifiedToken>>,
    ) -> Result<Caller, Decision<'e>> {
        let cert = match (given_cert, req.client_cert_der) {
            (Some(c), _) => Some(c),
            (None, Some(der)) => match self.certs.get_or_parse(der) {
                Ok(c) => Some(c),
                Err(e) => {
                    return Err(Decision::deny(
                        401,
                        Reason::InvalidCertificate,
                        e.to_string(),
                    ))
                }
            },
            (None, None) => None,
        };
        if cert.is_none() && self.policy.certificate.required {
            return Err(Decision::deny(
                401,
                Reason::NoIdentity,
                "a client certificate is required",
            ));
        }
        let token = match (given_claims, &self.verifier, &self.policy.token) {
            (Some(t), _, _) => Some(t),
            (None, Some(verifier), Some(cfg)) => match req.bearer(&cfg.header) {
                Some(raw) => match verifier.verify(raw, self.clock.unix_now()) {
                    Ok(t) => Some(t),
                    Err(e) => {
                        let mut d = token_refused(&e);
                        d.jwks_miss = e.is_key_miss();
                        return Err(d);
                    }
                },
                None if cfg.required => {
                    return Err(Decision::deny(
                        401,
                        Reason::NoIdentity,
                        "a bearer token is required",
                    ))
                }
                None => None,
            },
            _ => None,
        };
        if let Some(t) = &token {
            if let Err(e) = self.check_binding(t, cert.as_deref()) {
                return Err(token_refused(&e));
            }
        }
        Ok(Caller { cert, token })
    }

    /// The identity key: the policy's expression, or the default; it is sent upstream
    /// as a header, so it must arrive exactly as the decision names it (401).
    fn identity_key<'e>(
        &self,
        caller: &Caller,
        ctx: &Scope<'_, '_>,
    ) -> Result<Option<String>, Decision<'e>> {
        let identity = match &self.policy.identity {
            Some(expr) => match expr.eval_string(ctx) {
                Ok(s) => Some(s),
                Err(e) if self.policy.require_identity => {
                    return Err(Decision::deny(
                        401,
                        Reason::NoIdentity,
                        format!("the identity expression failed: {e}"),
                    ))
                }
                Err(_) => None,
            },
            None => default_identity(
                caller.cert.as_deref(),
                caller.token.as_deref(),
                self.policy.certificate.cn_identity,
            ),
        }
        .filter(|s| !s.is_empty());
        if let Some(id) = identity.as_deref().filter(|id| !header_value_safe(id)) {
            return Err(Decision::deny(
                401,
                Reason::NoIdentity,
                format!("the identity {id:?} cannot be sent as a header value (control characters or surrounding spaces)"),
            ));
        }
        if identity.is_none() && self.policy.require_identity {
            return Err(Decision::deny(
                401,
                Reason::NoIdentity,
                "no identity: present a client certificate or a bearer token",
            ));
        }
        Ok(identity)
    }

    /// 2. Body size, decided on the declared size before anything reads the body (413).
    fn check_size<'e>(&self, req: &Request<'_>) -> Result<(), Decision<'e>> {
        let max = self.policy.max_body_bytes;
        if req.body_size > max || req.body.len() as u64 > max {
            return Err(Decision::deny(
                413,
                Reason::BodyTooLarge,
                format!(
                    "request body of {} bytes is over the limit of {max} bytes",
                    req.body_size.max(req.body.len() as u64)
                ),
            ));
        }
        Ok(())
    }

    /// 4. Rules: all are evaluated so the decision can name every match. A protocol
    ///    upgrade (WebSocket, h2c) opens a tunnel no later decision sees, so only an
    ///    allow rule that names `request.upgrade` can allow one.
    fn rules<'e>(&'e self, upgrading: bool, ctx: &Scope<'_, '_>) -> Verdict<'e> {
        let mut v = Verdict {
            matched: Vec::new(),
            errors: Vec::new(),
            deny: None,
            allow: None,
            allow_ignoring_upgrade: false,
        };
        for (i, rule) in self.policy.rules.iter().enumerate() {
            match rule.when.eval_bool(ctx) {
                Ok(true) => {
                    v.matched.push(rule.name.as_str());
                    match rule.effect {
                        Effect::Deny if v.deny.is_none() => v.deny = Some((rule, None)),
                        Effect::Allow if upgrading && !rule.when.reads_upgrade() => {
                            v.allow_ignoring_upgrade = true
                        }
                        Effect::Allow if v.allow.is_none() => v.allow = Some((i, rule)),
                        _ => {}
                    }
                }
                Ok(false) => {}
                Err(e) => {
                    // Fail closed: an error in a deny rule denies; in an allow rule it
                    // simply does not allow.
                    if rule.effect == Effect::Deny && v.deny.is_none() {
                        v.deny = Some((rule, Some(e.to_string())));
                    }
                    v.errors.push(RuleError {
                        rule: rule.name.clone(),
                        error: e.to_string(),
                    });
                }
            }
        }
        v
    }

    /// Deny overrides allow; no allow is a deny (403, or the deny rule's status).
    fn rule_decision<'e>(
        &'e self,
        deny: Option<(&'e policy::Rule, Option<String>)>,
        allow: Option<(usize, &'e policy::Rule)>,
        explain: Explain<'e>,
    ) -> Result<Allowed<'e>, Decision<'e>> {
        if let Some((rule, error)) = deny {
            let status = rule.status.unwrap_or(self.policy.deny_status);
            let message = match (&error, &rule.message) {
                (Some(e), _) => {
                    format!("denied: rule {:?} could not be evaluated ({e})", rule.name)
                }
                (None, Some(m)) => m.clone(),
                (None, None) => format!("denied by rule {:?}", rule.name),
            };
            return Err(explain.into(
                Decision::deny(status, Reason::DeniedByRule, message),
                Some(&rule.name),
            ));
        }
        match allow {
            Some((index, rule)) => Ok(Allowed {
                index,
                rule,
                explain,
            }),
            None => Err(explain.into(
                Decision::deny(
                    self.policy.deny_status,
                    Reason::NoAllowRule,
                    "denied: no allow rule matched",
                ),
                None,
            )),
        }
    }

    /// 5. In-flight caps, then limits, only for requests the rules allow (429); then
    ///    the allow itself, reporting the limit with the fewest cells left. A request
    ///    refused here gives back every slot and cell it took on the way; an allowed one
    ///    that holds reservations or slots gets a lease (see `settle`).
    fn limits<'e>(
        &'e self,
        act: &Activation<'_>,
        ctx: &Scope<'_, '_>,
        allowed: Allowed<'e>,
    ) -> Decision<'e> {
        let Allowed {
            index: allow_index,
            rule: allow,
            explain,
        } = allowed;
        let mut held = Held::default();
        let tightest = match self.take(act, ctx, &mut held) {
            Ok(t) => t,
            Err(refusal) => {
                self.undo(held.lease, &held.taken);
                let mut d = explain.into(refusal.decision, Some(&allow.name));
                d.limit = refusal.limit;
                d.store = held.store;
                d.store_event = held.store_event;
                return d;
            }
        };
        let mut d = explain.into(
            Decision::allow(&self.allow_messages[allow_index]),
            Some(&allow.name),
        );
        d.limit = tightest.map(|(cfg, state, remaining, reset)| {
            let mut headers = state.headers(cfg, remaining, reset);
            // A token budget is reported too, after the tightest limit (the fields are
            // lists), so clients see the tokens they have left.
            for &(c, s, r, t) in &held.budgets {
                if !std::ptr::eq(c, cfg) {
                    let h = s.headers(c, r, t);
                    headers.ratelimit.push_str(", ");
                    headers.ratelimit.push_str(&h.ratelimit);
                    headers.ratelimit_policy.push_str(", ");
                    headers.ratelimit_policy.push_str(&h.ratelimit_policy);
                }
            }
            LimitReport {
                name: &cfg.name,
                remaining,
                retry_after_secs: None,
                headers,
            }
        });
        d.store = held.store;
        d.store_event = held.store_event;
        let lease = held.lease;
        let reserved = lease.reserved();
        if !reserved.is_empty() {
            d.reserved = reserved
                .into_iter()
                .map(|(limit, n)| (self.policy.limits[limit].name.as_str(), n))
                .collect();
            d.add_stream_usage = act.streams_without_usage();
        }
        if !lease.is_empty() {
            d.lease = Some(self.leases.open(lease));
        }
        d
    }

    /// Takes a slot of every cap and cells of every limit that applies, recording each
    /// in `held`: local ones here one by one, cluster-scoped ones in one call to the
    /// store after them. Returns the limit with the fewest cells left, or the refusal.
    fn take<'e, 'a>(
        &'e self,
        act: &'a Activation<'_>,
        ctx: &Scope<'_, '_>,
        held: &mut Held<'e, 'a>,
    ) -> Result<Option<Tightest<'e>>, Refusal<'e>> {
        let mut pending = Vec::new();
        for (index, cfg) in self.policy.concurrency.iter().enumerate() {
            let what = ("concurrency", cfg.name.as_str());
            if !self.applies(cfg.when.as_ref(), ctx, what)? {
                continue;
            }
            let key = self.key_of(&cfg.key, act, ctx, what)?;
            if cfg.scope == policy::Scope::Cluster && self.shared.is_some() {
                pending.push(Pending::Cap { index, key });
            } else {
                self.take_slot(index, key, held)?;
            }
        }
        let mut tightest = None;
        for (index, cfg) in self.policy.limits.iter().enumerate() {
            let what = ("limit", cfg.name.as_str());
            if !self.applies(cfg.when.as_ref(), ctx, what)? {
                continue;
            }
            let key = self.key_of(&cfg.key, act, ctx, what)?;
            let cost = match &cfg.cost {
                None => 1,
                Some(c) => c
                    .eval_u64(ctx)
                    .map_err(|e| self.limit_error(what, "cost", e.to_string()))?,
            };
            if cfg.scope == policy::Scope::Cluster && self.shared.is_some() {
                if cost > u64::from(cfg.burst) {
                    return Err(self.cost_exceeds_burst(cfg, cost));
                }
                pending.push(Pending::Limit { index, key, cost });
            } else {
                self.take_cells(index, key, cost, held, &mut tightest)?;
            }
        }
        if let Some(shared) = self.shared.as_ref().filter(|_| !pending.is_empty()) {
            self.admit_shared(shared, pending, held, &mut tightest)?;
        }
        Ok(tightest)
    }

    /// A slot of local cap `index`.
    fn take_slot<'e, 'a>(
        &'e self,
        index: usize,
        key: Cow<'a, str>,
        held: &mut Held<'e, 'a>,
    ) -> Result<(), Refusal<'e>> {
        let state = &self.caps[index];
        match state.acquire(&key) {
            Ok(_) => {
                held.lease.slots.push((state.clone(), key.into_owned()));
                Ok(())
            }
            Err(max) => Err(self.cap_full(index, max)),
        }
    }

    fn cap_full<'e>(&'e self, index: usize, max: u32) -> Refusal<'e> {
        let cfg = &self.policy.concurrency[index];
        Refusal::too_many(
            Reason::ConcurrencyLimit,
            format!(
                "concurrency limit {:?} reached: {max} requests already in flight; retry when one ends",
                cfg.name
            ),
            LimitReport {
                name: &cfg.name,
                remaining: 0,
                retry_after_secs: Some(1),
                headers: inflight::headers(&cfg.name, max),
            },
        )
    }

    /// `cost` cells of local limit `index`.
    fn take_cells<'e, 'a>(
        &'e self,
        index: usize,
        key: Cow<'a, str>,
        cost: u64,
        held: &mut Held<'e, 'a>,
        tightest: &mut Option<Tightest<'e>>,
    ) -> Result<(), Refusal<'e>> {
        let cfg = &self.policy.limits[index];
        let state = &self.limits[index];
        match state.check(&key, cost) {
            Outcome::Allowed {
                remaining,
                reset_secs,
            } => {
                self.note_allowed(index, remaining, reset_secs, cost, held, tightest);
                if let (Some(settle), true) = (cfg.settle, cost > 0) {
                    held.lease.reservations.push(Reservation {
                        limit: index,
                        state: state.clone(),
                        key: key.into_owned(),
                        reserved: cost,
                        settle,
                    });
                } else {
                    held.taken.push((state, key, cost));
                }
                Ok(())
            }
            Outcome::Limited { retry_after_secs } => Err(self.limited(index, retry_after_secs)),
            Outcome::CostExceedsBurst { cost, .. } => Err(self.cost_exceeds_burst(cfg, cost)),
            Outcome::TableFull { live_keys } => Err(Refusal::too_many(
                Reason::LimitTableFull,
                format!(
                    "limit {:?} already tracks {live_keys} identities (its max_keys); retry later",
                    cfg.name
                ),
                self.refused_report(index, 1),
            )),
        }
    }

    /// Records an allowed limit: the tightest so far (the smallest share of its burst
    /// left: limits count different things, requests and LLM tokens), and a token
    /// budget's numbers for RateLimit.
    fn note_allowed<'e>(
        &'e self,
        index: usize,
        remaining: u32,
        reset_secs: u64,
        cost: u64,
        held: &mut Held<'e, '_>,
        tightest: &mut Option<Tightest<'e>>,
    ) {
        let cfg = &self.policy.limits[index];
        let state = &*self.limits[index];
        if tightest.is_none_or(|(c, _, r, _)| {
            u64::from(remaining) * u64::from(c.burst) < u64::from(r) * u64::from(cfg.burst)
        }) {
            *tightest = Some((cfg, state, remaining, reset_secs));
        }
        if cfg.settle.is_some() && cost > 0 {
            held.budgets.push((cfg, state, remaining, reset_secs));
        }
    }

    fn limited<'e>(&'e self, index: usize, retry_after_secs: u64) -> Refusal<'e> {
        let cfg = &self.policy.limits[index];
        Refusal::too_many(
            Reason::RateLimited,
            format!(
                "rate limit {:?} exceeded; retry in {retry_after_secs}s",
                cfg.name
            ),
            self.refused_report(index, retry_after_secs),
        )
    }

    fn refused_report<'e>(&'e self, index: usize, retry_after: u64) -> LimitReport<'e> {
        let cfg = &self.policy.limits[index];
        LimitReport {
            name: &cfg.name,
            remaining: 0,
            retry_after_secs: Some(retry_after),
            headers: self.limits[index].headers(cfg, 0, retry_after),
        }
    }

    fn cost_exceeds_burst<'e>(&self, cfg: &policy::LimitConfig, cost: u64) -> Refusal<'e> {
        Refusal {
            decision: Decision::deny(
                self.policy.deny_status,
                Reason::CostExceedsBurst,
                format!(
                    "request costs {cost}, more than limit {:?} allows at once ({})",
                    cfg.name, cfg.burst
                ),
            ),
            limit: None,
        }
    }

    /// Every cluster-scoped limit and cap of the request in one atomic call to the
    /// store; when it does not answer, `on_failure` decides.
    fn admit_shared<'e, 'a>(
        &'e self,
        shared: &'e Shared,
        pending: Vec<Pending<'a>>,
        held: &mut Held<'e, 'a>,
        tightest: &mut Option<Tightest<'e>>,
    ) -> Result<(), Refusal<'e>> {
        let lease_id = if pending.iter().any(|p| matches!(p, Pending::Cap { .. })) {
            shared.lease_id()
        } else {
            "-".to_owned()
        };
        let mut call = ScriptCall::new("admit", &lease_id, pending.len());
        for p in &pending {
            let key = shared.store_key(p);
            match p {
                Pending::Limit { index, cost, .. } => {
                    let state = &self.limits[*index];
                    let numbers = [state.period(), state.tau(), *cost].map(u128::from);
                    call.push(key, "l", numbers);
                }
                Pending::Cap { index, .. } => {
                    let cfg = &self.policy.concurrency[*index];
                    call.push(key, "c", [cfg.max.into(), cfg.lease_ttl.as_millis(), 0]);
                }
            }
        }
        let ran = call.run(&*shared.client);
        held.store_event = shared.client.take_event();
        let reply = match ran.map(|r| (check_admit_reply(&r, pending.len()), r)) {
            Ok((Ok(()), r)) => r,
            Ok((Err(e), _)) => {
                held.store_event.get_or_insert(StoreEvent::Unavailable(e));
                return self.store_failed(shared.on_failure, pending, held, tightest);
            }
            Err(_) => return self.store_failed(shared.on_failure, pending, held, tightest),
        };
        held.store = Some(StoreOutcome::Shared);
        if reply[0] == 0 {
            let (i, n) = (reply[1] as usize - 1, reply[2] as u64);
            return Err(match &pending[i] {
                Pending::Limit { index, .. } => self.limited(*index, n.div_ceil(SECOND).max(1)),
                Pending::Cap { index, .. } => self.cap_full(*index, n as u32),
            });
        }
        held.lease.shared_id = lease_id;
        for (j, (p, store_key)) in pending.into_iter().zip(call.keys).enumerate() {
            match p {
                Pending::Limit { index, cost, .. } => {
                    let (remaining, ahead) = (reply[1 + 2 * j], reply[2 + 2 * j] as u64);
                    let remaining = u32::try_from(remaining).unwrap_or(u32::MAX);
                    self.note_allowed(
                        index,
                        remaining,
                        ahead.div_ceil(SECOND),
                        cost,
                        held,
                        tightest,
                    );
                    if let (Some(settle), true) = (self.policy.limits[index].settle, cost > 0) {
                        held.lease.shared.push(SharedHeld::Reservation {
                            limit: index,
                            store_key,
                            reserved: cost,
                            settle,
                        });
                    }
                }
                Pending::Cap { .. } => held.lease.shared.push(SharedHeld::Slot { store_key }),
            }
        }
        Ok(())
    }

    /// The store did not answer: this replica's buckets, a 503, or no limit.
    fn store_failed<'e, 'a>(
        &'e self,
        on_failure: OnFailure,
        pending: Vec<Pending<'a>>,
        held: &mut Held<'e, 'a>,
        tightest: &mut Option<Tightest<'e>>,
    ) -> Result<(), Refusal<'e>> {
        match on_failure {
            OnFailure::Local => {
                held.store = Some(StoreOutcome::Local);
                for p in pending {
                    match p {
                        Pending::Cap { index, key } => self.take_slot(index, key, held)?,
                        Pending::Limit { index, key, cost } => {
                            self.take_cells(index, key, cost, held, tightest)?
                        }
                    }
                }
                Ok(())
            }
            OnFailure::Allow => {
                held.store = Some(StoreOutcome::Allowed);
                Ok(())
            }
            OnFailure::Deny => {
                held.store = Some(StoreOutcome::Denied);
                Err(Refusal {
                    decision: Decision::deny(
                        503,
                        Reason::StoreUnavailable,
                        "the limits store is unavailable; retry later",
                    ),
                    limit: None,
                })
            }
        }
    }

    /// Whether a limit's or cap's `when` holds (none: always).
    fn applies<'e>(
        &self,
        when: Option<&Expression>,
        ctx: &Scope<'_, '_>,
        what: (&str, &str),
    ) -> Result<bool, Refusal<'e>> {
        match when.map(|w| w.eval_bool(ctx)) {
            None | Some(Ok(true)) => Ok(true),
            Some(Ok(false)) => Ok(false),
            Some(Err(e)) => Err(self.limit_error(what, "when", e.to_string())),
        }
    }

    /// A limit's or cap's key. The default key is the identity itself: no need to
    /// run CEL for it.
    fn key_of<'a, 'e>(
        &self,
        key: &Expression,
        act: &'a Activation<'_>,
        ctx: &Scope<'_, '_>,
        what: (&str, &str),
    ) -> Result<Cow<'a, str>, Refusal<'e>> {
        let key: Result<Cow<'a, str>, String> = if key.source == "identity" {
            act.identity
                .get()
                .map(|s| Cow::Borrowed(s.as_str()))
                .ok_or_else(|| "no identity".to_owned())
        } else {
            key.eval_string(ctx)
                .map(Cow::Owned)
                .map_err(|e| e.to_string())
        };
        match key {
            Ok(k) if !k.is_empty() => Ok(k),
            Ok(_) => Err(self.limit_error(what, "key", "it is empty".into())),
            Err(e) => Err(self.limit_error(what, "key", e)),
        }
    }

    /// `what`: ("limit" or "concurrency", its name).
    fn limit_error<'e>(&self, what: (&str, &str), part: &str, e: String) -> Refusal<'e> {
        let (kind, name) = what;
        Refusal {
            decision: Decision::deny(
                self.policy.deny_status,
                Reason::LimitError,
                format!("{kind} {name:?} {part} failed: {e}"),
            ),
            limit: None,
        }
    }
}

/// A limit, its state, its cells left and the seconds until its bucket is full.
type Tightest<'e> = (&'e policy::LimitConfig, &'e LimitState, u32, u64);

const SECOND: u64 = 1_000_000_000;

/// An admission's reply is {1, cells, ns, …} (two numbers per key) or {0, i, n}.
fn check_admit_reply(r: &[i64], keys: usize) -> Result<(), String> {
    let fine = match r.first() {
        Some(1) => r.len() == 1 + 2 * keys && r[1..].iter().all(|n| *n >= 0),
        Some(0) => r.len() == 3 && (1..=keys as i64).contains(&r[1]) && r[2] >= 0,
        _ => false,
    };
    if fine {
        Ok(())
    } else {
        Err(format!("the limits store's script answered {r:?}, not an admission of {keys} keys: is store/limits.lua of another version?"))
    }
}

/// What a request has taken from caps and limits so far.
#[derive(Default)]
struct Held<'e, 'a> {
    /// Slots and settled reservations: the lease, if the request is allowed.
    lease: Lease,
    /// Cells of limits that do not settle (given back only if the request is refused).
    taken: Vec<(&'e LimitState, Cow<'a, str>, u64)>,
    /// The settled limits' (limit, remaining, reset) at admission, for RateLimit.
    budgets: Vec<Tightest<'e>>,
    /// How the store judged cluster-scoped limits, and a change of its state.
    store: Option<StoreOutcome>,
    store_event: Option<StoreEvent>,
}

/// A refusal by a cap or a limit, with the limit to report.
struct Refusal<'e> {
    decision: Decision<'e>,
    limit: Option<LimitReport<'e>>,
}

impl<'e> Refusal<'e> {
    /// 429, reporting the limit or cap that refused.
    fn too_many(reason: Reason, message: String, limit: LimitReport<'e>) -> Self {
        Refusal {
            decision: Decision::deny(429, reason, message),
            limit: Some(limit),
        }
    }
}

/// Who is calling: the verified certificate and token, when there are.
struct Caller {
    cert: Option<Arc<CertEntry>>,
    token: Option<Arc<VerifiedToken>>,
}

/// What the rules found: every match, every rule that failed to evaluate, the deny
/// rule that decides (with its evaluation error, if that is why), the first allow.
struct Verdict<'e> {
    matched: Vec<&'e str>,
    errors: Vec<RuleError>,
    deny: Option<(&'e policy::Rule, Option<String>)>,
    allow: Option<(usize, &'e policy::Rule)>,
    /// The request asks for a protocol upgrade, and an allow rule matched that does
    /// not name `request.upgrade` (and so cannot allow it).
    allow_ignoring_upgrade: bool,
}

/// A request the rules allow, on its way through the limits.
struct Allowed<'e> {
    index: usize,
    rule: &'e policy::Rule,
    explain: Explain<'e>,
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

/// The token's `sub`, else the certificate's first SAN email, else (where `cn` allows)
/// its CN.
fn default_identity(
    cert: Option<&CertEntry>,
    token: Option<&VerifiedToken>,
    cn: bool,
) -> Option<String> {
    if let Some(sub) = token.and_then(|t| t.subject()).filter(|s| !s.is_empty()) {
        return Some(sub.to_owned());
    }
    let cert = cert?;
    cert.info
        .san_email
        .first()
        .cloned()
        .or_else(|| cn.then(|| cert.info.subject.cn.clone()))
}

/// 401 for a token: the client hears the class of problem, the log the detail.
fn token_refused(e: &TokenError) -> Decision<'static> {
    Decision::deny_detailed(401, Reason::InvalidToken, e.public_message(), e.to_string())
}

/// Whether a value reaches the upstream as the same header value: no control
/// characters (HTTP refuses them) and no surrounding spaces (HTTP trims them).
fn header_value_safe(v: &str) -> bool {
    !v.bytes().any(|b| b < 0x20 || b == 0x7f) && v.trim_matches([' ', '\t']) == v
}
