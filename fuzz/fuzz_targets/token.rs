//! Token verification and JWKS loading: the first byte picks which; any bytes are a
//! verified token, a refusal, a loaded key set or a refused one, never a panic.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use zt_policy_core::{TokenSettings, Verifier};

const NOW: u64 = 1_767_225_600;

fn verifier() -> &'static Verifier {
    static V: OnceLock<Verifier> = OnceLock::new();
    V.get_or_init(|| {
        let v = Verifier::new(TokenSettings {
            issuer: "https://idp.example.internal".into(),
            audiences: vec!["local-ai".into()],
            leeway_secs: 30,
            max_bytes: 8192,
            cache_size: 64,
            max_claims_depth: 32,
        });
        v.set_jwks(include_bytes!("../../rust/core/tests/fixtures/jwks.json"))
            .expect("the fixture JWKS loads");
        v
    })
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    if mode % 4 == 0 {
        // A fresh verifier: set_jwks replaces the keys the other inputs use.
        let v = Verifier::new(verifier().settings().clone());
        if v.set_jwks(rest).is_ok() {
            let _ = v.verify("eyJhbGciOiJSUzI1NiJ9.e30.c2ln", NOW);
        }
        return;
    }
    let token = String::from_utf8_lossy(rest);
    let _ = verifier().verify(&token, NOW);
});
