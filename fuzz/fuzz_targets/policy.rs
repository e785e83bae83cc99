//! Policy loading (TOML text → engine): any text loads or is refused with problems,
//! never a panic; a policy that loads decides a request through its rules and limits.
#![no_main]

use libfuzzer_sys::fuzz_target;
use zt_policy_core::{Engine, EngineClock, Request};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match Engine::from_toml(text, "fuzz.toml", EngineClock::manual(1_767_225_600)) {
        Err(e) => assert!(!e.problems.is_empty()),
        Ok(engine) => {
            let headers = [("content-type", "application/json"), ("x-user", "fuzz")];
            let body =
                br#"{"model":"m","max_tokens":64,"messages":[{"role":"user","content":"hi"}]}"#;
            for size in [0, body.len() as u64, u64::MAX] {
                let req = Request {
                    method: "POST",
                    path: "/v1/chat/completions",
                    headers: &headers,
                    body,
                    body_size: size,
                    ..Default::default()
                };
                let _ = engine.decide(&req);
            }
            engine
                .clock()
                .advance(std::time::Duration::from_secs(400 * 86400));
            engine.sweep_limits();
        }
    }
});
