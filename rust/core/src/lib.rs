//! zt-policy-core: the pure decision core of `zt_policy`.
//!
//! No I/O and no clock reads outside [`clock::EngineClock`]: the caller hands in the
//! policy text, the JWKS and each request, and gets a [`Decision`] back.

pub mod body;
pub mod cache;
pub mod cert;
pub mod clock;
pub mod decision;
pub mod engine;
mod eval;
pub mod json;
pub mod limits;
pub mod llm;
pub mod policy;
pub mod request;
pub mod token;
pub mod values;

pub use clock::EngineClock;
pub use decision::{Decision, LimitReport, Reason, RuleError};
pub use engine::{Engine, GivenIdentity};
pub use eval::expr::{EvalError, Expression};
pub use policy::{Effect, Mode, Policy, PolicyError, Problem};
pub use request::Request;
