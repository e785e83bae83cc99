//! The policy file: TOML that both Caddy and the CLI load. Loading checks everything a
//! user can get wrong (unknown keys, CEL errors, rates, sizes, statuses) and reports
//! every problem at once, each naming the rule or field and where it is.

use std::collections::HashSet;
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

use crate::eval::expr::{CompileError, Expression, VARIABLES};

/// A loaded, compiled policy.
#[derive(Debug)]
pub struct Policy {
    pub mode: Mode,
    pub identity: Option<Expression>,
    pub require_identity: bool,
    pub max_body_bytes: u64,
    pub max_json_depth: usize,
    pub malformed_body: MalformedBody,
    pub deny_status: u16,
    pub certificate: CertificateSettings,
    pub token: Option<TokenConfig>,
    pub rules: Vec<Rule>,
    pub limits: Vec<LimitConfig>,
    pub concurrency: Vec<ConcurrencyConfig>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Decisions are enforced.
    Enforce,
    /// Decisions are computed and reported, and every request passes.
    Audit,
}

/// What happens to a JSON body (by its Content-Type) that not every reader reads alike.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum MalformedBody {
    /// 400 `malformed_body` before any rule runs (the default).
    Refuse,
    /// The rules see `body` as `{}`: only for routes whose bodies are not JSON, since
    /// the upstream may still read such a body in a way no rule judged.
    Empty,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Effect {
    Allow,
    Deny,
}

#[derive(Debug, Clone)]
pub struct CertificateSettings {
    pub required: bool,
    pub cache_size: usize,
    /// The default identity may fall back to the subject CN (after the token's `sub`
    /// and the first SAN email). Off where a CA issues CNs users choose.
    pub cn_identity: bool,
}

#[derive(Debug, Clone)]
pub struct TokenConfig {
    pub settings: crate::token::TokenSettings,
    pub required: bool,
    /// Header the bearer token is read from (lower-case).
    pub header: String,
    /// A JWKS file for air-gapped setups, relative to the policy file. The core does no
    /// I/O: the CLI and the Caddy module read it and call `Engine::set_jwks`.
    pub jwks_file: Option<String>,
    /// OIDC issuer whose discovery document the Caddy module fetches the JWKS from.
    pub discovery: bool,
    /// Every token must be bound to the presented client certificate (RFC 8705
    /// `cnf.x5t#S256`). A token that carries a binding is checked either way.
    pub certificate_bound: bool,
}

impl TokenConfig {
    /// The settings of a policy without a `[token]` table, for an issuer given by the
    /// caller (the Caddyfile's `issuer`).
    pub fn with_defaults(max_json_depth: usize) -> TokenConfig {
        TokenConfig {
            settings: crate::token::TokenSettings {
                issuer: String::new(),
                audiences: Vec::new(),
                leeway_secs: TOKEN_LEEWAY_SECS.default as u64,
                max_bytes: TOKEN_MAX_SIZE.default as usize,
                cache_size: TOKEN_CACHE.default as usize,
                max_claims_depth: max_json_depth,
            },
            required: false,
            header: default_token_header(),
            jwks_file: None,
            discovery: true,
            certificate_bound: false,
        }
    }
}

#[derive(Debug)]
pub struct Rule {
    pub name: String,
    pub effect: Effect,
    pub when: Expression,
    pub status: Option<u16>,
    pub message: Option<String>,
}

#[derive(Debug)]
pub struct LimitConfig {
    pub name: String,
    pub key: Expression,
    pub rate: Rate,
    pub burst: u32,
    pub cost: Option<Expression>,
    pub when: Option<Expression>,
    pub max_keys: usize,
    /// The limit reserves its cost at admission and settles to the response's usage.
    pub settle: Option<Settle>,
    /// Where the buckets live: this process, or the limits store every replica shares.
    pub scope: Scope,
    /// The definition in one string: a reload keeps a limit's buckets when this is equal.
    pub fingerprint: String,
}

/// Where a limit's buckets or a cap's slots live (`scope`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Scope {
    /// In this Caddy process (the default).
    #[default]
    Local,
    /// In the limits store (Redis, Valkey) that every replica shares.
    Cluster,
}

impl Scope {
    fn parse(text: &str) -> Option<Scope> {
        match text {
            "local" => Some(Scope::Local),
            "cluster" => Some(Scope::Cluster),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Local => "local",
            Scope::Cluster => "cluster",
        }
    }
}

/// Which count of the response's OpenAI `usage` object a settled limit charges.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Settle {
    /// `total_tokens` (`settle = "usage"` or `"total_tokens"`).
    TotalTokens,
    CompletionTokens,
    PromptTokens,
}

impl Settle {
    fn parse(text: &str) -> Option<Settle> {
        match text {
            "usage" | "total_tokens" => Some(Settle::TotalTokens),
            "completion_tokens" => Some(Settle::CompletionTokens),
            "prompt_tokens" => Some(Settle::PromptTokens),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Settle::TotalTokens => "total_tokens",
            Settle::CompletionTokens => "completion_tokens",
            Settle::PromptTokens => "prompt_tokens",
        }
    }
}

/// `[[concurrency]]`: at most `max` requests of a key in flight at once.
#[derive(Debug)]
pub struct ConcurrencyConfig {
    pub name: String,
    pub key: Expression,
    pub max: u32,
    pub when: Option<Expression>,
    pub scope: Scope,
    /// A cluster-scoped cap's lease on a slot ends by itself after this long, so the
    /// slots of a replica that crashed come back (`lease_ttl`).
    pub lease_ttl: Duration,
    /// A reload keeps the cap's open slots when this is equal.
    pub fingerprint: String,
}

/// `count` cells per `per`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    pub count: u32,
    pub per: Duration,
}

impl Rate {
    /// Time for one cell to replenish.
    pub fn period(&self) -> Duration {
        self.per / self.count
    }
}

impl std::fmt::Display for Rate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let unit = match self.per.as_secs() {
            1 => "s",
            60 => "m",
            3600 => "h",
            86400 => "d",
            _ => return write!(f, "{}/{}s", self.count, self.per.as_secs()),
        };
        write!(f, "{}/{}", self.count, unit)
    }
}

/// Every problem found in a policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyError {
    pub problems: Vec<Problem>,
}

/// One problem: the file, the line when it is known, and what is wrong (naming the
/// rule, limit or setting, and for an expression the line and column inside it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub file: String,
    pub line: Option<usize>,
    pub message: String,
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.line {
            Some(line) => write!(f, "{}:{line}: {}", self.file, self.message),
            None => write!(f, "{}: {}", self.file, self.message),
        }
    }
}

impl std::fmt::Display for PolicyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (i, p) in self.problems.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{p}")?;
        }
        Ok(())
    }
}

impl std::error::Error for PolicyError {}

// ---- the file as written ----

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    #[serde(default)]
    settings: SettingsDef,
    #[serde(default)]
    certificate: CertificateDef,
    token: Option<TokenDef>,
    #[serde(default, rename = "rule")]
    rules: Vec<RuleDef>,
    #[serde(default, rename = "limit")]
    limits: Vec<LimitDef>,
    #[serde(default)]
    concurrency: Vec<ConcurrencyDef>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SettingsDef {
    #[serde(default = "default_mode")]
    mode: Mode,
    identity: Option<Spanned<String>>,
    #[serde(default = "yes")]
    require_identity: bool,
    max_body: Option<Spanned<Size>>,
    max_json_depth: Option<Spanned<i64>>,
    #[serde(default = "default_malformed_body")]
    malformed_body: MalformedBody,
    #[serde(default = "yes")]
    native_eval: bool,
    deny_status: Option<Spanned<i64>>,
}

impl Default for SettingsDef {
    fn default() -> Self {
        SettingsDef {
            mode: default_mode(),
            identity: None,
            require_identity: true,
            max_body: None,
            max_json_depth: None,
            malformed_body: default_malformed_body(),
            native_eval: true,
            deny_status: None,
        }
    }
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct CertificateDef {
    #[serde(default)]
    required: bool,
    cn_identity: Option<bool>,
    cache_size: Option<Spanned<i64>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TokenDef {
    #[serde(default)]
    issuer: String,
    #[serde(default)]
    audience: OneOrMany,
    leeway: Option<Spanned<DurationDef>>,
    #[serde(default)]
    required: bool,
    max_size: Option<Spanned<Size>>,
    #[serde(default = "default_token_header")]
    header: String,
    jwks_file: Option<String>,
    #[serde(default = "yes")]
    discovery: bool,
    cache_size: Option<Spanned<i64>>,
    #[serde(default)]
    certificate_bound: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RuleDef {
    name: String,
    effect: Effect,
    when: Spanned<String>,
    status: Option<Spanned<i64>>,
    message: Option<String>,
    #[serde(default)]
    #[allow(dead_code)]
    description: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LimitDef {
    name: String,
    key: Option<Spanned<String>>,
    rate: Spanned<String>,
    burst: Option<Spanned<i64>>,
    cost: Option<Spanned<String>>,
    when: Option<Spanned<String>>,
    max_keys: Option<Spanned<i64>>,
    settle: Option<Spanned<String>>,
    scope: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ConcurrencyDef {
    name: String,
    key: Option<Spanned<String>>,
    max: Spanned<i64>,
    when: Option<Spanned<String>>,
    scope: Option<Spanned<String>>,
    lease_ttl: Option<Spanned<String>>,
}

#[derive(Deserialize, Default)]
#[serde(untagged)]
enum OneOrMany {
    #[default]
    None,
    One(String),
    Many(Vec<String>),
}

#[derive(Deserialize, Clone)]
#[serde(untagged)]
enum Size {
    Bytes(i64),
    Text(String),
}

#[derive(Deserialize, Clone)]
#[serde(untagged)]
enum DurationDef {
    Seconds(i64),
    Text(String),
}

fn yes() -> bool {
    true
}
fn default_mode() -> Mode {
    Mode::Enforce
}
fn default_malformed_body() -> MalformedBody {
    MalformedBody::Refuse
}
fn default_token_header() -> String {
    "authorization".into()
}

/// Every number a policy can set: its default and the range it must fall in. The
/// ranges keep each value where the code that uses it cannot overflow or allocate
/// without bound (`limits` keeps time in u64 nanoseconds).
struct Bound {
    name: &'static str,
    default: i64,
    min: i64,
    max: i64,
}

/// (name, default, min, max)
const fn bound(name: &'static str, default: i64, min: i64, max: i64) -> Bound {
    Bound {
        name,
        default,
        min,
        max,
    }
}

const MAX_JSON_DEPTH: Bound = bound("settings.max_json_depth", 32, 1, 128);
const DENY_STATUS: Bound = bound("settings.deny_status", 403, 400, 599);
const CERT_CACHE: Bound = bound("certificate.cache_size", 4096, 1, 1_000_000);
// Tokens are kept whole (at most max_size each): 4096 × 8KiB bounds the cache at 32MiB.
const TOKEN_CACHE: Bound = bound("token.cache_size", 4096, 1, 1_000_000);
const TOKEN_LEEWAY_SECS: Bound = bound("token.leeway", 30, 0, 600);
const TOKEN_MAX_SIZE: Bound = bound("token.max_size", 8 << 10, 1, 64 << 10);
const MAX_BODY: Bound = bound("settings.max_body", 1 << 20, 1, 1 << 30);
const RULE_STATUS: Bound = bound("status", 403, 400, 599);
const BURST: Bound = bound("burst", 1, 1, 1_000_000_000);
const MAX_KEYS: Bound = bound("max_keys", 100_000, 1, 10_000_000);
const CONCURRENCY_MAX: Bound = bound("max", 1, 1, 1_000_000);

/// The longest period a rate may name (`1/365d`).
pub const MAX_RATE_PERIOD: Duration = Duration::from_secs(365 * 86400);
/// The longest a limit's bucket may take to refill from empty (burst × one cell's
/// period): ten years, far inside the 584 years of u64 nanoseconds the buckets count in.
pub const MAX_REFILL: Duration = Duration::from_secs(10 * 365 * 86400);

/// The longest refill of a cluster-scoped limit: the store's script computes in
/// nanoseconds held exactly by a double (2^53 ns, about 104 days).
pub const MAX_CLUSTER_REFILL: Duration = Duration::from_nanos(1 << 53);

/// A cluster-scoped cap's lease lasts this long unless `lease_ttl` says otherwise.
pub const DEFAULT_LEASE_TTL: Duration = Duration::from_secs(15 * 60);

/// Parses `"512KiB"`, `"1MiB"`, `"2MB"`, `"100B"` or a plain byte count.
pub fn parse_size(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{text:?} is not a size (examples: 512KiB, 1MiB, 2MB, 4096)"))?;
    let mult: u64 = match unit.trim() {
        "" | "B" => 1,
        "KB" | "kB" => 1_000,
        "KiB" => 1 << 10,
        "MB" => 1_000_000,
        "MiB" => 1 << 20,
        "GB" => 1_000_000_000,
        "GiB" => 1 << 30,
        other => {
            return Err(format!(
                "{text:?}: unknown size unit {other:?} (use B, KB, KiB, MB, MiB, GB, GiB)"
            ))
        }
    };
    n.checked_mul(mult)
        .ok_or_else(|| format!("{text:?} is too large"))
}

/// Parses `"30s"`, `"2m"`, `"1h"` or a plain number of seconds.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{text:?} is not a duration (examples: 30s, 2m, 1h)"))?;
    let unit_secs: u64 = match unit.trim() {
        "" | "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86400,
        other => {
            return Err(format!(
                "{text:?}: unknown duration unit {other:?} (use s, m, h, d)"
            ))
        }
    };
    n.checked_mul(unit_secs)
        .map(Duration::from_secs)
        .ok_or_else(|| format!("{text:?} is too long"))
}

/// Parses a rate: `"10/s"`, `"600/m"`, `"1000/h"`, `"20000/d"`, or `"5/10s"`.
pub fn parse_rate(text: &str) -> Result<Rate, String> {
    let bad = || format!("{text:?} is not a rate (examples: 10/s, 600/m, 1000/h, 5/10s)");
    let (count, per) = text.trim().split_once('/').ok_or_else(bad)?;
    let count: u32 = count.trim().parse().map_err(|_| bad())?;
    if count == 0 {
        return Err(format!("{text:?}: a rate must allow at least one request"));
    }
    let per = per.trim();
    let per = match per {
        "s" | "sec" | "second" => Duration::from_secs(1),
        "m" | "min" | "minute" => Duration::from_secs(60),
        "h" | "hour" => Duration::from_secs(3600),
        "d" | "day" => Duration::from_secs(86400),
        other => parse_duration(other).map_err(|_| bad())?,
    };
    if per.is_zero() {
        return Err(format!("{text:?}: the period must be longer than zero"));
    }
    if per > MAX_RATE_PERIOD {
        return Err(format!("{text:?}: the period is longer than 365 days"));
    }
    if (per / count).is_zero() {
        return Err(format!("{text:?}: more than one request per nanosecond"));
    }
    Ok(Rate { count, per })
}

struct Loader<'s> {
    source: &'s str,
    file: &'s str,
    problems: Vec<Problem>,
    /// `settings.native_eval`: expressions may run on the native evaluator.
    native: bool,
}

impl Loader<'_> {
    fn line_of(&self, offset: usize) -> usize {
        self.source[..offset.min(self.source.len())]
            .matches('\n')
            .count()
            + 1
    }

    fn problem(&mut self, msg: String) {
        self.problem_at(None, msg);
    }

    fn problem_at(&mut self, line: Option<usize>, message: String) {
        self.problems.push(Problem {
            file: self.file.to_owned(),
            line,
            message,
        });
    }

    fn expr(
        &mut self,
        what: &str,
        spanned: &Spanned<String>,
        allowed: &[&str],
    ) -> Option<Expression> {
        match Expression::compile(spanned.get_ref(), allowed) {
            Ok(e) if self.native => Some(e),
            Ok(e) => Some(e.without_native()),
            Err(errors) => {
                let line = self.line_of(spanned.span().start);
                // A multi-line literal starts with a newline that TOML drops.
                let starts_on_next = self.source[spanned.span().start..].starts_with("'''\n")
                    || self.source[spanned.span().start..].starts_with("\"\"\"\n");
                for CompileError {
                    line: l,
                    column,
                    message,
                } in errors
                {
                    let file_line = line + l - 1 + usize::from(starts_on_next);
                    self.problem_at(
                        Some(file_line),
                        format!("{what}: line {l}, column {column} of the expression: {message}"),
                    );
                }
                None
            }
        }
    }

    fn line_of_span(&self, span: std::ops::Range<usize>) -> Option<usize> {
        Some(self.line_of(span.start))
    }

    /// A number the policy may set, or its default; out of `b`'s range is a problem
    /// naming the line (and the default stands in, so loading goes on to find more).
    fn number(&mut self, what: &str, b: &Bound, v: Option<&Spanned<i64>>) -> i64 {
        let Some(v) = v else { return b.default };
        let n = *v.get_ref();
        if (b.min..=b.max).contains(&n) {
            return n;
        }
        let line = self.line_of_span(v.span());
        self.problem_at(
            line,
            format!("{what} = {n} is outside {}..={}", b.min, b.max),
        );
        b.default
    }

    /// A size (`"512KiB"` or bytes) within `b`.
    fn size(&mut self, b: &Bound, v: Option<&Spanned<Size>>) -> u64 {
        let Some(v) = v else { return b.default as u64 };
        let line = self.line_of_span(v.span());
        let message = match size_value(v.get_ref()) {
            Ok(n) if (b.min as u64..=b.max as u64).contains(&n) => return n,
            Ok(0) => "must be larger than 0".to_owned(),
            Ok(n) => format!("{n} bytes is over the {} allowed", human_size(b.max as u64)),
            Err(e) => e,
        };
        self.problem_at(line, format!("{}: {message}", b.name));
        b.default as u64
    }

    /// A duration (`"30s"` or seconds) within `b`, in seconds.
    fn seconds(&mut self, b: &Bound, v: Option<&Spanned<DurationDef>>) -> u64 {
        let Some(v) = v else { return b.default as u64 };
        let line = self.line_of_span(v.span());
        let secs = match v.get_ref() {
            DurationDef::Seconds(n) => Ok(*n),
            DurationDef::Text(text) => {
                parse_duration(text).map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
            }
        };
        match secs {
            Ok(n) if (b.min..=b.max).contains(&n) => n as u64,
            Ok(n) => {
                self.problem_at(
                    line,
                    format!("{}: {n}s is outside {}..={}s", b.name, b.min, b.max),
                );
                b.default as u64
            }
            Err(e) => {
                self.problem_at(line, format!("{}: {e}", b.name));
                b.default as u64
            }
        }
    }

    fn settings(&mut self, s: &SettingsDef, certificate: &CertificateDef) -> Settings {
        Settings {
            max_body_bytes: self.size(&MAX_BODY, s.max_body.as_ref()),
            max_json_depth: self.number(
                MAX_JSON_DEPTH.name,
                &MAX_JSON_DEPTH,
                s.max_json_depth.as_ref(),
            ) as usize,
            deny_status: self.number(DENY_STATUS.name, &DENY_STATUS, s.deny_status.as_ref()) as u16,
            cert_cache: self.number(
                CERT_CACHE.name,
                &CERT_CACHE,
                certificate.cache_size.as_ref(),
            ) as usize,
        }
    }

    fn token(&mut self, t: &TokenDef, max_json_depth: usize) -> TokenConfig {
        let leeway_secs = self.seconds(&TOKEN_LEEWAY_SECS, t.leeway.as_ref());
        let max_bytes = self.size(&TOKEN_MAX_SIZE, t.max_size.as_ref());
        let cache_size = self.number(TOKEN_CACHE.name, &TOKEN_CACHE, t.cache_size.as_ref());
        let audiences = match &t.audience {
            OneOrMany::None => Vec::new(),
            OneOrMany::One(a) => vec![a.clone()],
            OneOrMany::Many(v) => v.clone(),
        };
        if t.header.trim().is_empty() {
            self.problem("token.header: must name a header".into());
        }
        TokenConfig {
            settings: crate::token::TokenSettings {
                issuer: t.issuer.clone(),
                audiences,
                leeway_secs,
                max_bytes: max_bytes as usize,
                cache_size: cache_size as usize,
                max_claims_depth: max_json_depth,
            },
            required: t.required,
            header: t.header.trim().to_ascii_lowercase(),
            jwks_file: t.jwks_file.clone(),
            discovery: t.discovery,
            certificate_bound: t.certificate_bound,
        }
    }

    /// The label a rule or limit is named by in problems (`rule "x"`, `rule #3`),
    /// after checking its name: valid, and not used twice among its kind.
    fn named(&mut self, kind: &str, i: usize, name: &str, seen: &mut HashSet<String>) -> String {
        let label = if name.is_empty() {
            format!("{kind} #{}", i + 1)
        } else {
            format!("{kind} {name:?}")
        };
        if !valid_name(name) {
            self.problem(format!(
                "{label}: name must be 1-64 characters of A-Z a-z 0-9 _ - ."
            ));
        } else if !seen.insert(name.to_owned()) {
            self.problem(format!("{label}: the name is used twice"));
        }
        label
    }

    fn rules(&mut self, defs: &[RuleDef]) -> Vec<Rule> {
        let mut names = HashSet::new();
        let mut rules = Vec::new();
        for (i, r) in defs.iter().enumerate() {
            let label = self.named("rule", i, &r.name, &mut names);
            let status = match &r.status {
                Some(s) if r.effect == Effect::Allow => {
                    let line = self.line_of_span(s.span());
                    self.problem_at(line, format!("{label}: status is only for deny rules"));
                    None
                }
                Some(s) => {
                    Some(self.number(&format!("{label}: status"), &RULE_STATUS, Some(s)) as u16)
                }
                None => None,
            };
            if let Some(when) = self.expr(&format!("{label} when"), &r.when, &VARIABLES) {
                rules.push(Rule {
                    name: r.name.clone(),
                    effect: r.effect,
                    when,
                    status,
                    message: r.message.clone(),
                });
            }
        }
        rules
    }

    fn limits(&mut self, defs: &[LimitDef]) -> Vec<LimitConfig> {
        let mut limit_names = HashSet::new();
        let mut limits = Vec::new();
        for (i, d) in defs.iter().enumerate() {
            let label = self.named("limit", i, &d.name, &mut limit_names);
            let rate_line = self.line_of_span(d.rate.span());
            let rate = parse_rate(d.rate.get_ref())
                .map_err(|e| self.problem_at(rate_line, format!("{label}: rate {e}")))
                .ok();
            let burst = match &d.burst {
                None => rate.map(|r| r.count).unwrap_or(1),
                Some(b) => self.number(&format!("{label}: burst"), &BURST, Some(b)) as u32,
            };
            if let Some(rate) = rate {
                // the buckets keep time in u64 nanoseconds: the bucket's whole span must fit.
                if rate.period().saturating_mul(burst) > MAX_REFILL {
                    let line = d
                        .burst
                        .as_ref()
                        .map_or(rate_line, |b| self.line_of_span(b.span()));
                    self.problem_at(
                        line,
                        format!(
                            "{label}: rate {rate} with burst {burst} takes longer than 10 years to refill"
                        ),
                    );
                }
            }
            let max_keys = self.number(
                &format!("{label}: max_keys"),
                &MAX_KEYS,
                d.max_keys.as_ref(),
            ) as usize;
            let settle = d.settle.as_ref().and_then(|s| {
                let parsed = Settle::parse(s.get_ref());
                if parsed.is_none() {
                    let line = self.line_of_span(s.span());
                    self.problem_at(
                        line,
                        format!(
                            "{label}: settle = {:?} is not one of \"usage\", \"total_tokens\", \"completion_tokens\", \"prompt_tokens\"",
                            s.get_ref()
                        ),
                    );
                }
                parsed
            });
            let scope = self.scope(&label, d.scope.as_ref());
            if let (Some(rate), Scope::Cluster) = (rate, scope) {
                if rate.period().saturating_mul(burst) > MAX_CLUSTER_REFILL {
                    let line = d.scope.as_ref().map(|s| self.line_of_span(s.span()));
                    self.problem_at(
                        line.flatten(),
                        format!(
                            "{label}: rate {rate} with burst {burst} takes longer than 104 days to refill, the most a cluster-scoped limit can"
                        ),
                    );
                }
            }
            let key = self.key_expr(&label, d.key.as_ref());
            let cost = d
                .cost
                .as_ref()
                .map(|c| self.expr(&format!("{label} cost"), c, &VARIABLES));
            let when = d
                .when
                .as_ref()
                .map(|w| self.expr(&format!("{label} when"), w, &VARIABLES));
            if let (Some(rate), Some(key), Some(cost), Some(when)) =
                (rate, key, cost.transpose_ok(), when.transpose_ok())
            {
                let fingerprint = format!(
                    "{}|{}|{}|{}|{}|{}|{}|{}|{}",
                    d.name,
                    key.source,
                    rate,
                    burst,
                    cost.as_ref().map(|c| c.source.as_str()).unwrap_or("1"),
                    when.as_ref().map(|w| w.source.as_str()).unwrap_or("true"),
                    max_keys,
                    settle.map_or("", Settle::as_str),
                    scope.as_str(),
                );
                limits.push(LimitConfig {
                    name: d.name.clone(),
                    key,
                    rate,
                    burst,
                    cost,
                    when,
                    max_keys,
                    settle,
                    scope,
                    fingerprint,
                });
            }
        }
        limits
    }

    /// A limit's or cap's `scope`: "local" (the default) or "cluster".
    fn scope(&mut self, label: &str, scope: Option<&Spanned<String>>) -> Scope {
        let Some(s) = scope else {
            return Scope::Local;
        };
        Scope::parse(s.get_ref()).unwrap_or_else(|| {
            let line = self.line_of_span(s.span());
            self.problem_at(
                line,
                format!(
                    "{label}: scope = {:?} is not \"local\" or \"cluster\"",
                    s.get_ref()
                ),
            );
            Scope::Local
        })
    }

    /// A limit's or cap's `key`, the identity when it has none.
    fn key_expr(&mut self, label: &str, key: Option<&Spanned<String>>) -> Option<Expression> {
        let src = key
            .cloned()
            .unwrap_or_else(|| Spanned::new(0..0, "identity".to_owned()));
        self.expr(&format!("{label} key"), &src, &VARIABLES)
    }

    fn concurrency(
        &mut self,
        defs: &[ConcurrencyDef],
        limits: &[LimitDef],
    ) -> Vec<ConcurrencyConfig> {
        // One namespace with the limits: a 429 names either, and so do metrics.
        let mut names: HashSet<String> = limits.iter().map(|l| l.name.clone()).collect();
        let mut caps = Vec::new();
        for (i, d) in defs.iter().enumerate() {
            let label = self.named("concurrency", i, &d.name, &mut names);
            let max = self.number(&format!("{label}: max"), &CONCURRENCY_MAX, Some(&d.max)) as u32;
            let key = self.key_expr(&label, d.key.as_ref());
            let when = d
                .when
                .as_ref()
                .map(|w| self.expr(&format!("{label} when"), w, &VARIABLES));
            let scope = self.scope(&label, d.scope.as_ref());
            let lease_ttl = match &d.lease_ttl {
                None => DEFAULT_LEASE_TTL,
                Some(t) => {
                    let line = self.line_of_span(t.span());
                    match parse_duration(t.get_ref()) {
                        Ok(ttl)
                            if (Duration::from_secs(1)..=Duration::from_secs(86400))
                                .contains(&ttl) =>
                        {
                            ttl
                        }
                        Ok(_) => {
                            self.problem_at(
                                line,
                                format!(
                                    "{label}: lease_ttl = {:?} is not between 1s and 24h",
                                    t.get_ref()
                                ),
                            );
                            DEFAULT_LEASE_TTL
                        }
                        Err(e) => {
                            self.problem_at(line, format!("{label}: lease_ttl {e}"));
                            DEFAULT_LEASE_TTL
                        }
                    }
                }
            };
            if let (Some(key), Some(when)) = (key, when.transpose_ok()) {
                let fingerprint = format!(
                    "{}|{}|{}|{}|{}|{}",
                    d.name,
                    key.source,
                    max,
                    when.as_ref().map(|w| w.source.as_str()).unwrap_or("true"),
                    scope.as_str(),
                    lease_ttl.as_millis(),
                );
                caps.push(ConcurrencyConfig {
                    name: d.name.clone(),
                    key,
                    max,
                    when,
                    scope,
                    lease_ttl,
                    fingerprint,
                });
            }
        }
        caps
    }
}

/// The `[settings]` (and `[certificate]`) numbers, checked.
struct Settings {
    max_body_bytes: u64,
    max_json_depth: usize,
    deny_status: u16,
    cert_cache: usize,
}

/// `1073741824` → `1GiB`, for messages.
fn human_size(n: u64) -> String {
    match n {
        n if n >= 1 << 30 && n % (1 << 30) == 0 => format!("{}GiB", n >> 30),
        n if n >= 1 << 20 && n % (1 << 20) == 0 => format!("{}MiB", n >> 20),
        n if n >= 1 << 10 && n % (1 << 10) == 0 => format!("{}KiB", n >> 10),
        n => format!("{n} bytes"),
    }
}

fn size_value(s: &Size) -> Result<u64, String> {
    match s {
        Size::Bytes(n) if *n >= 0 => Ok(*n as u64),
        Size::Bytes(n) => Err(format!("{n} is negative")),
        Size::Text(t) => parse_size(t),
    }
}

/// Loads a policy from TOML. `file` names it in error messages.
pub fn load(source: &str, file: &str) -> Result<Policy, PolicyError> {
    let parsed: File = toml::from_str(source).map_err(|e| PolicyError {
        problems: vec![Problem {
            file: file.to_owned(),
            // toml's message shows the line itself; the line number is data too.
            line: e
                .span()
                .map(|s| source[..s.start.min(source.len())].matches('\n').count() + 1),
            message: e.to_string().trim_end().to_owned(),
        }],
    })?;
    let mut l = Loader {
        source,
        file,
        problems: Vec::new(),
        native: parsed.settings.native_eval,
    };

    let s = &parsed.settings;
    let identity = s.identity.as_ref().and_then(|e| {
        l.expr(
            "settings.identity",
            e,
            &["cert", "claims", "request", "body", "llm"],
        )
    });
    let settings = l.settings(s, &parsed.certificate);
    let token = parsed
        .token
        .as_ref()
        .map(|t| l.token(t, settings.max_json_depth));
    let rules = l.rules(&parsed.rules);
    let limits = l.limits(&parsed.limits);
    let concurrency = l.concurrency(&parsed.concurrency, &parsed.limits);

    if rules.iter().all(|r| r.effect != Effect::Allow) && l.problems.is_empty() {
        l.problem("the policy has no allow rule, so it denies every request".into());
    }

    if !l.problems.is_empty() {
        return Err(PolicyError {
            problems: l.problems,
        });
    }
    Ok(Policy {
        mode: s.mode,
        identity,
        require_identity: s.require_identity,
        max_body_bytes: settings.max_body_bytes,
        max_json_depth: settings.max_json_depth,
        malformed_body: s.malformed_body,
        deny_status: settings.deny_status,
        certificate: CertificateSettings {
            required: parsed.certificate.required,
            cn_identity: parsed.certificate.cn_identity.unwrap_or(true),
            cache_size: settings.cert_cache,
        },
        token,
        rules,
        limits,
        concurrency,
    })
}

/// `Some(None)` (no expression) and `Some(Some(e))` are fine; `None` means the
/// expression was given and failed to compile.
trait TransposeOk<T> {
    fn transpose_ok(self) -> Option<Option<T>>;
}

impl<T> TransposeOk<T> for Option<Option<T>> {
    fn transpose_ok(self) -> Option<Option<T>> {
        match self {
            None => Some(None),
            Some(Some(e)) => Some(Some(e)),
            Some(None) => None,
        }
    }
}

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
}
