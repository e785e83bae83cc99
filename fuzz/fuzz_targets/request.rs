//! The C ABI's request decoder and the whole decision behind it, as Caddy calls it:
//! `ztp_engine_decide` with the example policy, on any bytes. A panic must never cross
//! (the boundary would turn it into ZTP_PANIC: here that is a finding), and a decision
//! that comes back must be well formed.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use zt_policy_ffi::*;

struct Shared(*const ztp_engine);
// SAFETY: the engine is immutable and shared (Arc) by design; the ABI allows any thread.
unsafe impl Send for Shared {}
unsafe impl Sync for Shared {}

fn engine() -> *const ztp_engine {
    static ENGINE: OnceLock<Shared> = OnceLock::new();
    ENGINE
        .get_or_init(|| unsafe {
            let policy = include_str!("../../examples/policy/policy.toml");
            let name = "policy.toml";
            let mut builder = std::ptr::null_mut();
            let r = ztp_engine_builder_new(
                policy.as_ptr(),
                policy.len(),
                name.as_ptr(),
                name.len(),
                &mut builder,
                std::ptr::null_mut(),
            );
            assert_eq!(r, ztp_result::ZTP_OK);
            let mut engine = std::ptr::null();
            assert_eq!(
                ztp_engine_builder_build(builder, &mut engine),
                ztp_result::ZTP_OK
            );
            let jwks = include_bytes!("../../examples/policy/idp/jwks.json");
            let r = ztp_engine_set_jwks(engine, jwks.as_ptr(), jwks.len(), std::ptr::null_mut());
            assert_eq!(r, ztp_result::ZTP_OK);
            Shared(engine)
        })
        .0
}

/// Splits the input into the request encoding, a certificate and a body: two u16
/// lengths first (the cert's, the body's), the request encoding last.
fn split(data: &[u8]) -> (&[u8], Option<&[u8]>, &[u8]) {
    if data.len() < 4 {
        return (data, None, &[]);
    }
    let cert_len = u16::from_le_bytes([data[0], data[1]]) as usize;
    let body_len = u16::from_le_bytes([data[2], data[3]]) as usize;
    let rest = &data[4..];
    let cert_len = cert_len.min(rest.len());
    let (cert, rest) = rest.split_at(cert_len);
    let body_len = body_len.min(rest.len());
    let (body, request) = rest.split_at(body_len);
    (request, (!cert.is_empty()).then_some(cert), body)
}

fuzz_target!(|data: &[u8]| {
    let (request, cert, body) = split(data);
    let mut out = vec![0u8; 1 << 16];
    let mut out_len = 0usize;
    let r = unsafe {
        ztp_engine_decide(
            engine(),
            request.as_ptr(),
            request.len(),
            cert.map_or(std::ptr::null(), |c| c.as_ptr()),
            cert.map_or(0, |c| c.len()),
            body.as_ptr(),
            body.len(),
            out.as_mut_ptr(),
            out.len(),
            &mut out_len,
        )
    };
    assert_ne!(r, ztp_result::ZTP_PANIC, "the engine panicked");
    if r == ztp_result::ZTP_OK {
        assert!(out_len >= ZTP_DECISION_AT_STRINGS && out_len <= out.len());
        assert_eq!(out[0], ZTP_DECISION_VERSION);
        // Refusals are never allowed: a 4xx/5xx decision does not pass.
        let status =
            u16::from_le_bytes([out[ZTP_DECISION_AT_STATUS], out[ZTP_DECISION_AT_STATUS + 1]]);
        let flags = out[ZTP_DECISION_AT_FLAGS];
        let allowed = flags & ZTP_DECISION_ALLOWED != 0;
        assert!(!allowed || status == 200, "allowed with status {status}");
        // A lease only comes with an allowed request, and ends exactly once, whatever
        // the ending and the usage counts (taken from the input's first bytes).
        let mut lease = [0u8; 8];
        lease.copy_from_slice(&out[ZTP_DECISION_AT_LEASE..ZTP_DECISION_AT_LEASE + 8]);
        let lease = u64::from_le_bytes(lease);
        assert_eq!(flags & ZTP_DECISION_HAS_LEASE != 0, lease != 0);
        if lease != 0 {
            assert!(allowed, "a refused request holds a lease");
            let pick = |i: usize| data.get(i).copied().unwrap_or(0);
            let count = |i: usize| match pick(i) % 4 {
                0 => ZTP_USAGE_ABSENT,
                1 => 0,
                2 => u64::from(pick(i + 1)) * 1000,
                _ => u64::MAX - 1,
            };
            let mut settled = [0u8; 4096];
            let mut n = 0usize;
            let ending = pick(0) % 3;
            let (prompt, completion, total) = (count(1), count(3), count(5));
            let mut settle = || unsafe {
                ztp_engine_settle(
                    engine(),
                    lease,
                    ending,
                    prompt,
                    completion,
                    total,
                    settled.as_mut_ptr(),
                    settled.len(),
                    &mut n,
                )
            };
            assert_eq!(settle(), ztp_result::ZTP_OK);
            assert_eq!(settle(), ztp_result::ZTP_UNKNOWN_LEASE);
        }
    }
});
