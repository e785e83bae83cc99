//! The C ABI of the zt_policy engine, in the manner of rustls-ffi: opaque handles cast
//! only through `castable`, one result enum with stable numbers and a description
//! ([`ztp_result_message`]), one panic boundary for every export (`panic`),
//! out-parameters written only on success, null-safe `_free`, one symbol prefix
//! (`ztp_`). Inputs are (pointer, length) pairs borrowed for the call only.
//!
//! An engine is made by a builder ([`ztp_engine_builder_new`]: the policy; then the
//! token issuer and the buckets of a previous engine), which [`ztp_engine_builder_build`]
//! turns into an immutable engine shared by reference count: nothing changes an engine
//! once it is shared but its runtime state (caches, buckets, the JWKS it is handed).
//!
//! A decision crosses back as one encoded buffer the caller provides (see
//! [`ztp_engine_decide`]), so a request costs a single call across the boundary.

#![allow(non_camel_case_types)]
#![allow(clippy::missing_safety_doc)]

mod castable;
mod decode;
mod encode;
mod panic;

use castable::{
    arc_clone, arc_free, arc_into_ptr, arc_ref, box_free, box_into_ptr, box_mut, box_ref, box_take,
    ArcCastable, BoxCastable, Castable,
};
use panic::ffi_panic_boundary;
use zt_policy_core::{Decision, Ending, Engine, EngineClock, OnFailure, Usage};
use zt_policy_store::{Store, StoreConfig};

/// The version of this ABI. A caller built against one header must refuse a library
/// of another: `ztp_abi_version() != ZTP_ABI_VERSION` (the Caddy module checks it at
/// Provision). Raised whenever a function, a result, a reason or an encoding changes.
pub const ZTP_ABI_VERSION: u32 = 6;

/// The ABI version this library speaks: [`ZTP_ABI_VERSION`] of the header it was
/// built with.
#[no_mangle]
pub extern "C" fn ztp_abi_version() -> u32 {
    ZTP_ABI_VERSION
}

/// A SHA-256 (hex, NUL-terminated, static) of the Rust sources this library was built
/// from (see build.rs): the Go tests compare it with the sources on disk to find a
/// stale library.
#[no_mangle]
pub extern "C" fn ztp_source_hash() -> *const std::ffi::c_char {
    concat!(env!("ZTP_SOURCE_HASH"), "\0").as_ptr().cast()
}

// ---- The wire format: one definition, in the header, for every reader and writer ----
//
// A request crosses as one buffer (little-endian): u8 ZTP_REQUEST_VERSION, u64 body
// size, six strings (method, scheme, host, path, query, remote IP), u32 header count,
// then a name and a value string per header; a string is a u32 length and its bytes.
// A decision comes back as: u8 ZTP_DECISION_VERSION at 0, u8 flags at
// ZTP_DECISION_AT_FLAGS, u16 status at ZTP_DECISION_AT_STATUS, u8 reason
// (`ztp_reason`) at ZTP_DECISION_AT_REASON, u32 remaining cells of the reported limit
// at ZTP_DECISION_AT_REMAINING, u64 retry-after seconds at ZTP_DECISION_AT_RETRY_AFTER,
// u64 lease at ZTP_DECISION_AT_LEASE (0: none), u8 how cluster-scoped limits were judged
// (`ztp_store_outcome`) at ZTP_DECISION_AT_STORE, then from ZTP_DECISION_AT_STRINGS the
// ZTP_DECISION_STRINGS strings: message, rule, identity, limit name, RateLimit value,
// RateLimit-Policy value, matched rules and rule errors ("rule: error"), both
// "\n"-separated, the detail for the log only, the reservations ("limit=tokens",
// "\n"-separated), and a change of the limits store's state ("" none, "available", or
// "unavailable: <why>").
// A settlement (`ztp_engine_settle`) comes back as: u32 count, then per settled limit
// a string (its name), u8 rule (`ztp_settle_rule`), u64 reserved, u64 used
// (ZTP_USAGE_ABSENT: not given), u64 charged, u64 unbilled.

/// The version byte that starts an encoded request.
pub const ZTP_REQUEST_VERSION: u8 = 1;
/// The version byte that starts an encoded decision.
pub const ZTP_DECISION_VERSION: u8 = 4;
/// Decision flag: the request goes on (also in audit mode).
pub const ZTP_DECISION_ALLOWED: u8 = 1;
/// Decision flag: audit mode; effect and status are what enforcement would do.
pub const ZTP_DECISION_AUDIT: u8 = 2;
/// Decision flag: the policy's effect is deny.
pub const ZTP_DECISION_DENY: u8 = 4;
/// Decision flag: a limit is reported (RateLimit headers).
pub const ZTP_DECISION_HAS_LIMIT: u8 = 8;
/// Decision flag: the retry-after field is set.
pub const ZTP_DECISION_HAS_RETRY_AFTER: u8 = 16;
/// Decision flag: the token names a key the JWKS lacks (refetch, then decide again).
pub const ZTP_DECISION_JWKS_MISS: u8 = 32;
/// Decision flag: the request holds a lease (reservations, in-flight slots): the
/// caller must end it with [`ztp_engine_settle`] when the response is done, whatever
/// happened to it.
pub const ZTP_DECISION_HAS_LEASE: u8 = 64;
/// Decision flag: add `"stream_options":{"include_usage":true}` before the body's last
/// `}` and remove the usage-only chunk from what the client receives.
pub const ZTP_DECISION_ADD_STREAM_USAGE: u8 = 128;
pub const ZTP_DECISION_AT_FLAGS: usize = 1;
pub const ZTP_DECISION_AT_STATUS: usize = 2;
pub const ZTP_DECISION_AT_REASON: usize = 4;
pub const ZTP_DECISION_AT_REMAINING: usize = 5;
pub const ZTP_DECISION_AT_RETRY_AFTER: usize = 9;
pub const ZTP_DECISION_AT_LEASE: usize = 17;
pub const ZTP_DECISION_AT_STORE: usize = 25;
pub const ZTP_DECISION_AT_STRINGS: usize = 26;
/// How many strings follow the fixed part of a decision.
pub const ZTP_DECISION_STRINGS: usize = 11;
/// A usage count the response did not give (`ztp_engine_settle`).
pub const ZTP_USAGE_ABSENT: u64 = u64::MAX;

/// The outcome of every fallible call. Numbers are stable.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ztp_result {
    ZTP_OK = 0,
    /// A required pointer was NULL.
    ZTP_NULL_PARAMETER = 1,
    /// The policy did not load; the message buffer says why, naming rules and lines.
    ZTP_INVALID_POLICY = 2,
    /// The JWKS was refused; the message buffer says why. The previous keys stay.
    ZTP_INVALID_JWKS = 3,
    /// An encoded request was malformed (truncated, bad lengths).
    ZTP_INVALID_INPUT = 4,
    /// The output buffer is too small for the decision; call again with a larger one.
    ZTP_BUFFER_TOO_SMALL = 5,
    /// The engine panicked. The call had no effect the caller can see; never pass the
    /// request.
    ZTP_PANIC = 6,
    // 7 was ZTP_ENGINE_SHARED: engines are no longer changed after they are built.
    /// The lease is not open: never given by this engine, or ended already.
    ZTP_UNKNOWN_LEASE = 8,
    /// A setting was refused (the limits store's URL, CA file, timeout); the message
    /// buffer says why.
    ZTP_INVALID_CONFIG = 9,
}

impl ztp_result {
    fn message(self) -> &'static str {
        match self {
            ztp_result::ZTP_OK => "ok\0",
            ztp_result::ZTP_NULL_PARAMETER => "a required pointer was NULL\0",
            ztp_result::ZTP_INVALID_POLICY => {
                "the policy did not load (the message buffer names the rule and line)\0"
            }
            ztp_result::ZTP_INVALID_JWKS => "the JWKS was refused; the previous keys stay\0",
            ztp_result::ZTP_INVALID_INPUT => {
                "the encoded request was malformed (truncated, bad lengths) or not UTF-8\0"
            }
            ztp_result::ZTP_BUFFER_TOO_SMALL => "the output buffer is too small for the decision\0",
            ztp_result::ZTP_PANIC => "the engine panicked; never pass the request\0",
            ztp_result::ZTP_UNKNOWN_LEASE => {
                "the lease is not open (never given by this engine, or ended already)\0"
            }
            ztp_result::ZTP_INVALID_CONFIG => {
                "a setting was refused (the message buffer says why)\0"
            }
        }
    }
}

/// A description of a result, NUL-terminated, static; `"unknown result"` for a number
/// this library does not define.
#[no_mangle]
pub extern "C" fn ztp_result_message(result: u32) -> *const std::ffi::c_char {
    ffi_panic_boundary! {
        let all = [
            ztp_result::ZTP_OK,
            ztp_result::ZTP_NULL_PARAMETER,
            ztp_result::ZTP_INVALID_POLICY,
            ztp_result::ZTP_INVALID_JWKS,
            ztp_result::ZTP_INVALID_INPUT,
            ztp_result::ZTP_BUFFER_TOO_SMALL,
            ztp_result::ZTP_PANIC,
            ztp_result::ZTP_UNKNOWN_LEASE,
            ztp_result::ZTP_INVALID_CONFIG,
        ];
        let text = all
            .into_iter()
            .find(|r| *r as u32 == result)
            .map_or("unknown result\0", ztp_result::message);
        text.as_ptr().cast()
    }
}

/// Why a decision came out as it did (the `reason` byte of an encoded decision).
#[repr(u8)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ztp_reason {
    ZTP_REASON_ALLOWED = 0,
    ZTP_REASON_NO_IDENTITY = 1,
    ZTP_REASON_INVALID_CERTIFICATE = 2,
    ZTP_REASON_INVALID_TOKEN = 3,
    ZTP_REASON_BODY_TOO_LARGE = 4,
    ZTP_REASON_DENIED_BY_RULE = 5,
    ZTP_REASON_NO_ALLOW_RULE = 6,
    ZTP_REASON_RATE_LIMITED = 7,
    ZTP_REASON_COST_EXCEEDS_BURST = 8,
    ZTP_REASON_LIMIT_TABLE_FULL = 9,
    ZTP_REASON_LIMIT_ERROR = 10,
    ZTP_REASON_ENGINE_ERROR = 11,
    ZTP_REASON_BAD_REQUEST = 12,
    ZTP_REASON_MALFORMED_BODY = 13,
    ZTP_REASON_CONCURRENCY_LIMIT = 14,
    ZTP_REASON_STORE_UNAVAILABLE = 15,
}

/// How a decision's cluster-scoped limits and caps were judged (the byte at
/// `ZTP_DECISION_AT_STORE`).
#[repr(u8)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ztp_store_outcome {
    /// The request met none.
    ZTP_STORE_NONE = 0,
    /// By the store.
    ZTP_STORE_SHARED = 1,
    /// The store did not answer: by this process's buckets (`on_failure` local).
    ZTP_STORE_LOCAL = 2,
    /// The store did not answer: refused with 503 (`on_failure` deny).
    ZTP_STORE_DENIED = 3,
    /// The store did not answer: not limited (`on_failure` allow).
    ZTP_STORE_ALLOWED = 4,
}

/// What requests get when the limits store does not answer
/// ([`ztp_engine_builder_set_store`]).
#[repr(u8)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ztp_on_failure {
    ZTP_ON_FAILURE_LOCAL = 0,
    ZTP_ON_FAILURE_DENY = 1,
    ZTP_ON_FAILURE_ALLOW = 2,
}

/// How a response ended, for [`ztp_engine_settle`].
#[repr(u8)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ztp_ending {
    /// The response reported `usage` (the counts given to the call).
    ZTP_ENDING_USAGE = 0,
    /// The upstream refused before generating: every reservation comes back.
    ZTP_ENDING_REFUND = 1,
    /// No usage for any other reason: reservations stay spent.
    ZTP_ENDING_KEEP = 2,
}

/// Which rule settled a limit (the rule byte of an encoded settlement).
#[repr(u8)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ztp_settle_rule {
    ZTP_SETTLE_USAGE = 0,
    ZTP_SETTLE_REFUNDED = 1,
    ZTP_SETTLE_KEPT = 2,
    ZTP_SETTLE_KEPT_USAGE_INCOMPLETE = 3,
    ZTP_SETTLE_KEPT_STORE_UNAVAILABLE = 4,
}

/// A compiled policy with its caches and rate-limit buckets, immutable once built
/// (its caches, buckets and JWKS are runtime state). Thread-safe: any number of
/// threads may decide with one engine at once. Reference-counted: see
/// [`ztp_engine_clone`].
pub struct ztp_engine {
    _private: [u8; 0],
}

impl Castable for ztp_engine {
    type RustType = Engine;
}
impl ArcCastable for ztp_engine {}

/// An engine being set up: owned by one caller, changed by the `ztp_engine_builder_*`
/// calls, then built ([`ztp_engine_builder_build`]) or freed.
pub struct ztp_engine_builder {
    _private: [u8; 0],
}

impl Castable for ztp_engine_builder {
    type RustType = Engine;
}
impl BoxCastable for ztp_engine_builder {}

/// Bytes owned by the library (a message, a description). Read with
/// [`ztp_buffer_data`], release with [`ztp_buffer_free`].
pub struct ztp_buffer {
    _private: [u8; 0],
}

impl Castable for ztp_buffer {
    type RustType = Vec<u8>;
}
impl BoxCastable for ztp_buffer {}

unsafe fn bytes<'a>(ptr: *const u8, len: usize) -> Option<&'a [u8]> {
    if len == 0 {
        Some(&[])
    } else if ptr.is_null() {
        None
    } else {
        Some(std::slice::from_raw_parts(ptr, len))
    }
}

fn new_buffer(bytes: Vec<u8>) -> *mut ztp_buffer {
    box_into_ptr(bytes)
}

/// Compiles a policy (TOML) into a builder. `name` (may be empty) labels it in error
/// messages, e.g. its file path. On success writes the builder to `*builder_out`; on
/// `ZTP_INVALID_POLICY` writes the message to `*message_out` if that is not NULL.
#[no_mangle]
pub unsafe extern "C" fn ztp_engine_builder_new(
    policy: *const u8,
    policy_len: usize,
    name: *const u8,
    name_len: usize,
    builder_out: *mut *mut ztp_engine_builder,
    message_out: *mut *mut ztp_buffer,
) -> ztp_result {
    ffi_panic_boundary! {
        let (Some(policy), Some(name)) = (bytes(policy, policy_len), bytes(name, name_len)) else {
            return ztp_result::ZTP_NULL_PARAMETER;
        };
        if builder_out.is_null() {
            return ztp_result::ZTP_NULL_PARAMETER;
        }
        let name = String::from_utf8_lossy(name);
        let name = if name.is_empty() {
            "policy".into()
        } else {
            name
        };
        let fail = |msg: String| {
            if !message_out.is_null() {
                *message_out = new_buffer(msg.into_bytes());
            }
            ztp_result::ZTP_INVALID_POLICY
        };
        let Ok(text) = std::str::from_utf8(policy) else {
            return fail(format!("{name}: the policy is not UTF-8"));
        };
        match Engine::from_toml(text, &name, EngineClock::system()) {
            Ok(engine) => {
                *builder_out = box_into_ptr(engine);
                ztp_result::ZTP_OK
            }
            Err(e) => fail(e.to_string()),
        }
    }
}

/// Sets the issuer and the accepted audiences (newline-separated; empty keeps the
/// policy's) of bearer tokens, adding token verification to a policy that has no
/// `[token]` table.
#[no_mangle]
pub unsafe extern "C" fn ztp_engine_builder_set_token(
    builder: *mut ztp_engine_builder,
    issuer: *const u8,
    issuer_len: usize,
    audiences: *const u8,
    audiences_len: usize,
) -> ztp_result {
    ffi_panic_boundary! {
        let (Some(e), Some(issuer), Some(audiences)) = (
            box_mut(builder),
            bytes(issuer, issuer_len),
            bytes(audiences, audiences_len),
        ) else {
            return ztp_result::ZTP_NULL_PARAMETER;
        };
        let (Ok(issuer), Ok(audiences)) =
            (std::str::from_utf8(issuer), std::str::from_utf8(audiences))
        else {
            return ztp_result::ZTP_INVALID_INPUT;
        };
        let audiences = audiences
            .lines()
            .map(str::trim)
            .filter(|a| !a.is_empty())
            .map(str::to_owned)
            .collect();
        e.configure_token(issuer.to_owned(), audiences);
        ztp_result::ZTP_OK
    }
}

/// Hands the policy's cluster-scoped limits and caps to a limits store: `url`
/// (`redis://`, `rediss://`, `valkey://`, `valkeys://`, `unix://`), `ca_file` (may be
/// empty: the system's roots; only for TLS), `timeout_ms` (1–10000: the longest a
/// request waits for the store) and `on_failure` (`ztp_on_failure`). The process keeps
/// one pool per configuration, so builders with the same one share it. Nothing is
/// connected here. On `ZTP_INVALID_CONFIG` writes the message to `*message_out` (if not
/// NULL); it never contains the URL's password.
#[no_mangle]
pub unsafe extern "C" fn ztp_engine_builder_set_store(
    builder: *mut ztp_engine_builder,
    url: *const u8,
    url_len: usize,
    ca_file: *const u8,
    ca_file_len: usize,
    timeout_ms: u32,
    on_failure: u8,
    message_out: *mut *mut ztp_buffer,
) -> ztp_result {
    ffi_panic_boundary! {
        let (Some(e), Some(url), Some(ca_file)) =
            (box_mut(builder), bytes(url, url_len), bytes(ca_file, ca_file_len))
        else {
            return ztp_result::ZTP_NULL_PARAMETER;
        };
        let fail = |msg: String| {
            if !message_out.is_null() {
                *message_out = new_buffer(msg.into_bytes());
            }
            ztp_result::ZTP_INVALID_CONFIG
        };
        let (Ok(url), Ok(ca_file)) = (std::str::from_utf8(url), std::str::from_utf8(ca_file)) else {
            return fail("the limits store's URL and CA file must be UTF-8".into());
        };
        let on_failure = match on_failure {
            f if f == ztp_on_failure::ZTP_ON_FAILURE_LOCAL as u8 => OnFailure::Local,
            f if f == ztp_on_failure::ZTP_ON_FAILURE_DENY as u8 => OnFailure::Deny,
            f if f == ztp_on_failure::ZTP_ON_FAILURE_ALLOW as u8 => OnFailure::Allow,
            f => return fail(format!("on_failure {f} is not a ztp_on_failure")),
        };
        let config = StoreConfig {
            url: url.to_owned(),
            ca_file: (!ca_file.is_empty()).then(|| ca_file.to_owned()),
            timeout: std::time::Duration::from_millis(timeout_ms.into()),
        };
        match Store::shared(config) {
            Ok(store) => {
                e.set_store(store, on_failure);
                ztp_result::ZTP_OK
            }
            Err(msg) => fail(msg),
        }
    }
}

/// Takes over the buckets of every limit of `previous` whose definition is unchanged
/// (a config reload). Writes the number of limits kept to `*kept_out` (if not NULL).
#[no_mangle]
pub unsafe extern "C" fn ztp_engine_builder_inherit(
    builder: *mut ztp_engine_builder,
    previous: *const ztp_engine,
    kept_out: *mut usize,
) -> ztp_result {
    ffi_panic_boundary! {
        let (Some(e), Some(prev)) = (box_mut(builder), arc_ref(previous)) else {
            return ztp_result::ZTP_NULL_PARAMETER;
        };
        let kept = e.inherit_state(prev);
        if !kept_out.is_null() {
            *kept_out = kept;
        }
        ztp_result::ZTP_OK
    }
}

/// Builds the engine, which is immutable from now on, and consumes the builder
/// (whatever the result, once `builder` is not NULL): writes the engine to
/// `*engine_out`, released with [`ztp_engine_free`].
#[no_mangle]
pub unsafe extern "C" fn ztp_engine_builder_build(
    builder: *mut ztp_engine_builder,
    engine_out: *mut *const ztp_engine,
) -> ztp_result {
    ffi_panic_boundary! {
        let Some(engine) = box_take(builder) else {
            return ztp_result::ZTP_NULL_PARAMETER;
        };
        if engine_out.is_null() {
            return ztp_result::ZTP_NULL_PARAMETER;
        }
        *engine_out = arc_into_ptr(*engine);
        ztp_result::ZTP_OK
    }
}

/// Frees a builder that was not built. NULL is ignored.
#[no_mangle]
pub unsafe extern "C" fn ztp_engine_builder_free(builder: *mut ztp_engine_builder) {
    ffi_panic_boundary! { box_free(builder) }
}

/// Another reference to the same engine (same caches and buckets). Each reference is
/// released with [`ztp_engine_free`]. Returns NULL for NULL.
#[no_mangle]
pub unsafe extern "C" fn ztp_engine_clone(engine: *const ztp_engine) -> *const ztp_engine {
    ffi_panic_boundary! { arc_clone(engine) }
}

/// Releases one reference; the engine is freed with the last one. NULL is ignored.
#[no_mangle]
pub unsafe extern "C" fn ztp_engine_free(engine: *const ztp_engine) {
    ffi_panic_boundary! { arc_free(engine) }
}

/// Hands in the JWKS (JSON) that bearer tokens are verified against, replacing the
/// previous one (runtime state, as keys rotate). On success `*message_out` (if not
/// NULL) says how many keys loaded and which were skipped; on `ZTP_INVALID_JWKS` why
/// the set was refused.
#[no_mangle]
pub unsafe extern "C" fn ztp_engine_set_jwks(
    engine: *const ztp_engine,
    jwks: *const u8,
    jwks_len: usize,
    message_out: *mut *mut ztp_buffer,
) -> ztp_result {
    ffi_panic_boundary! {
        let (Some(engine), Some(jwks)) = (arc_ref(engine), bytes(jwks, jwks_len)) else {
            return ztp_result::ZTP_NULL_PARAMETER;
        };
        let (result, msg) = match engine.set_jwks(jwks) {
            Ok(s) => (
                ztp_result::ZTP_OK,
                if s.skipped.is_empty() {
                    format!("loaded {} keys", s.loaded)
                } else {
                    format!("loaded {} keys; skipped {}", s.loaded, s.skipped.join("; "))
                },
            ),
            Err(e) => (ztp_result::ZTP_INVALID_JWKS, e.to_string()),
        };
        if !message_out.is_null() {
            *message_out = new_buffer(msg.into_bytes());
        }
        result
    }
}

/// Describes the engine as JSON for the caller's setup: `needs_body`, `max_body`,
/// `mode`, `limits`, `rules` and the `token` settings (`header`, `jwks_file`,
/// `issuer`, `audiences`, `discovery`).
#[no_mangle]
pub unsafe extern "C" fn ztp_engine_describe(
    engine: *const ztp_engine,
    json_out: *mut *mut ztp_buffer,
) -> ztp_result {
    ffi_panic_boundary! {
        let Some(engine) = arc_ref(engine) else {
            return ztp_result::ZTP_NULL_PARAMETER;
        };
        if json_out.is_null() {
            return ztp_result::ZTP_NULL_PARAMETER;
        }
        *json_out = new_buffer(encode::describe(engine).into_bytes());
        ztp_result::ZTP_OK
    }
}

/// Decides one request given in the flat encoding:
///
/// ```text
/// u8  version (1)
/// u64 body_size (little-endian)
/// 6 × string: method, scheme, host, path, query, remote_ip
/// u32 header count, then per header: string name, string value
/// string = u32 length (little-endian) + bytes
/// ```
///
/// `cert_der` (NULL: none presented) and `body` are passed apart so neither is
/// copied. On success writes the decision to `out` and its length to `*out_len`:
///
/// ```text
/// u8  version (1)
/// u8  flags: 1 allowed, 2 audit, 4 effect is deny, 8 a limit is reported,
///            16 retry-after is set, 32 the token names a key the JWKS lacks
///            (refetch the JWKS and decide again)
/// u16 status
/// u8  reason (ztp_reason)
/// u32 remaining cells of the reported limit
/// u64 retry-after seconds
/// u64 lease (0: none; flag 64 says there is one)
/// 10 × string: message, rule, identity, limit name, RateLimit value,
///     RateLimit-Policy value, matched rules ("\n"-separated),
///     rule errors ("rule: error", "\n"-separated), detail (for the log only),
///     reservations ("limit=tokens", "\n"-separated)
/// ```
/// (flags 64: the request holds a lease, end it with [`ztp_engine_settle`];
/// 128: add `include_usage` to the streamed request, see `ZTP_DECISION_ADD_STREAM_USAGE`)
///
/// A request that is not UTF-8 where text is expected gets a 400 decision
/// (`ZTP_REASON_BAD_REQUEST`); a broken encoding gets `ZTP_INVALID_INPUT`.
#[no_mangle]
pub unsafe extern "C" fn ztp_engine_decide(
    engine: *const ztp_engine,
    request: *const u8,
    request_len: usize,
    cert_der: *const u8,
    cert_len: usize,
    body: *const u8,
    body_len: usize,
    out: *mut u8,
    out_cap: usize,
    out_len: *mut usize,
) -> ztp_result {
    ffi_panic_boundary! {
        let Some(engine) = arc_ref(engine) else {
            return ztp_result::ZTP_NULL_PARAMETER;
        };
        let (Some(request), Some(body)) = (bytes(request, request_len), bytes(body, body_len))
        else {
            return ztp_result::ZTP_NULL_PARAMETER;
        };
        let cert = if cert_der.is_null() {
            None
        } else {
            Some(std::slice::from_raw_parts(cert_der, cert_len))
        };
        if out.is_null() || out_len.is_null() {
            return ztp_result::ZTP_NULL_PARAMETER;
        }
        let mut headers = Vec::new();
        let decision = match decode::request(request, &mut headers) {
            Err(decode::Malformed) => return ztp_result::ZTP_INVALID_INPUT,
            Ok(Err(bad)) => Decision::bad_request(bad),
            Ok(Ok(mut req)) => {
                req.client_cert_der = cert;
                req.body = body;
                req.headers = &headers;
                engine.decide(&req)
            }
        };
        write_decision(&decision, out, out_cap, out_len)
    }
}

unsafe fn write_decision(
    d: &Decision,
    out: *mut u8,
    out_cap: usize,
    out_len: *mut usize,
) -> ztp_result {
    let len = encode::decision_len(d);
    if len > out_cap {
        return ztp_result::ZTP_BUFFER_TOO_SMALL;
    }
    // The caller owns `out_cap` writable bytes at `out` (the ABI's contract).
    let out = std::slice::from_raw_parts_mut(out, len);
    let written = encode::decision_into(d, out);
    debug_assert_eq!(written, len, "decision_len and decision_into disagree");
    *out_len = written;
    ztp_result::ZTP_OK
}

/// Ends a lease of a decision made by this engine: settles its limits by how the
/// response ended (`ending`, a `ztp_ending`; the usage counts only for
/// `ZTP_ENDING_USAGE`, each `ZTP_USAGE_ABSENT` when the response did not give it) and
/// gives back its in-flight slots. Writes the settlement to `out` (see the wire format
/// above) and its length to `*out_len`. Each lease ends once: `ZTP_UNKNOWN_LEASE`
/// after that. On `ZTP_BUFFER_TOO_SMALL` the lease has ended anyway; only the report
/// is lost, so give room for every settled limit (their names plus 37 bytes each).
#[no_mangle]
pub unsafe extern "C" fn ztp_engine_settle(
    engine: *const ztp_engine,
    lease: u64,
    ending: u8,
    prompt_tokens: u64,
    completion_tokens: u64,
    total_tokens: u64,
    out: *mut u8,
    out_cap: usize,
    out_len: *mut usize,
) -> ztp_result {
    ffi_panic_boundary! {
        let Some(engine) = arc_ref(engine) else {
            return ztp_result::ZTP_NULL_PARAMETER;
        };
        if out.is_null() || out_len.is_null() {
            return ztp_result::ZTP_NULL_PARAMETER;
        }
        let given = |n: u64| (n != ZTP_USAGE_ABSENT).then_some(n);
        let ending = match ending {
            e if e == ztp_ending::ZTP_ENDING_USAGE as u8 => Ending::Usage(Usage {
                prompt_tokens: given(prompt_tokens),
                completion_tokens: given(completion_tokens),
                total_tokens: given(total_tokens),
            }),
            e if e == ztp_ending::ZTP_ENDING_REFUND as u8 => Ending::Refund,
            e if e == ztp_ending::ZTP_ENDING_KEEP as u8 => Ending::Keep,
            _ => return ztp_result::ZTP_INVALID_INPUT,
        };
        let Some(settled) = engine.settle(lease, ending) else {
            return ztp_result::ZTP_UNKNOWN_LEASE;
        };
        let len = encode::settlement_len(&settled);
        if len > out_cap {
            return ztp_result::ZTP_BUFFER_TOO_SMALL;
        }
        let out = std::slice::from_raw_parts_mut(out, len);
        *out_len = encode::settlement_into(&settled, out);
        ztp_result::ZTP_OK
    }
}

/// The bytes of a buffer; `*len_out` gets their length. NULL for NULL.
#[no_mangle]
pub unsafe extern "C" fn ztp_buffer_data(
    buffer: *const ztp_buffer,
    len_out: *mut usize,
) -> *const u8 {
    ffi_panic_boundary! {
        let Some(v) = box_ref(buffer) else {
            return std::ptr::null();
        };
        if !len_out.is_null() {
            *len_out = v.len();
        }
        v.as_ptr()
    }
}

/// Frees a buffer. NULL is ignored.
#[no_mangle]
pub unsafe extern "C" fn ztp_buffer_free(buffer: *mut ztp_buffer) {
    ffi_panic_boundary! { box_free(buffer) }
}

/// Panics inside the panic boundary and returns what the boundary made of it
/// (`ZTP_PANIC`): lets callers and tests check that a panic never crosses into them.
#[no_mangle]
pub extern "C" fn ztp_selftest_panic() -> ztp_result {
    ffi_panic_boundary! { panic!("ztp_selftest_panic: deliberate panic to test the boundary") }
}

/// The library version, NUL-terminated, static.
#[no_mangle]
pub extern "C" fn ztp_version() -> *const std::ffi::c_char {
    concat!(env!("CARGO_PKG_VERSION"), "\0").as_ptr().cast()
}
