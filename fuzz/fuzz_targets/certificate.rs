//! Certificate parsing: any DER is a certificate's fields or an error, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(info) = zt_policy_core::parse_der(data) {
        let entry = zt_policy_core::CertEntry::new(info);
        assert_eq!(entry.info.fingerprint_sha256.len(), 64);
    }
});
