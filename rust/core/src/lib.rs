//! zt-policy-core: the pure decision core of `zt_policy`.
//!
//! No I/O and no clock reads outside [`EngineClock`]: the caller hands in the policy
//! text, the JWKS and each request, and gets a [`Decision`] back.
//!
//! The modules are the crate's own; what the CLI, the FFI and the tests use is
//! re-exported here, and no `cel` type is part of it (values come out as [`Value`]).
//!
//! Read top-down: `engine` (the engine and the decision pipeline, identify → size →
//! rules → limits) uses `eval` (compiling and evaluating expressions), which reads the
//! request through `request`, `body`/`json`/`llm`, `cert`, `token` and `values`;
//! `limits` (GCRA buckets), `inflight` (concurrency caps), `cache`, `clock`, `decision`
//! and `policy` are leaves; `engine::settle` ends a request's lease on them.

mod body;
mod cache;
mod cert;
mod clock;
mod decision;
mod engine;
mod eval;
mod inflight;
mod json;
mod limits;
mod llm;
mod plain;
mod policy;
mod request;
mod token;
mod values;

pub use body::{read_request as read_body, LazyBody};
pub use cert::{hex, parse_der, CertCache, CertEntry, CertInfo, NameInfo};
pub use clock::EngineClock;
pub use decision::{Decision, LimitReport, Reason, RuleError, StoreEvent, StoreOutcome};
pub use engine::{
    Ending, Engine, Evaluations, GivenIdentity, OnFailure, SettleRule, Settled, StoreClient, Usage,
};
pub use eval::expr::EvalError;
pub use json::Malformed;
pub use llm::Llm;
pub use plain::{Key, Value};
pub use policy::{
    load as load_policy, parse_duration, parse_rate, parse_size, Effect, MalformedBody, Mode,
    Policy, PolicyError, Problem, Rate, Scope, Settle,
};
pub use request::Request;
pub use token::{JwksError, JwksSummary, TokenError, TokenSettings, VerifiedToken, Verifier};
