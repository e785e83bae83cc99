//! Runs many warm decisions of the example policy, for a profiler (callgrind, perf).
use zt_policy_core::{Engine, EngineClock, Request};

fn main() {
    let root = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../examples/policy");
    let policy_path = std::env::var("POLICY")
        .map(std::path::PathBuf::from)
        .unwrap_or(root.join("policy.toml"));
    let policy = std::fs::read_to_string(policy_path)
        .unwrap()
        .replace("rate = \"120/m\"", "rate = \"1000000000/s\"")
        .replace("burst = 20", "burst = 1000000")
        .replace("rate = \"100000/h\"", "rate = \"1000000000/s\"")
        .replace("burst = 16384", "burst = 100000000");
    let e = Engine::from_toml(&policy, "policy.toml", EngineClock::system()).unwrap();
    let pem = std::fs::read_to_string(root.join("certs/alice.pem")).unwrap();
    use base64::Engine as _;
    let b64: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
    let der = base64::engine::general_purpose::STANDARD
        .decode(b64)
        .unwrap();
    let body = br#"{"model":"llama-3.1-8b-instruct","max_tokens":256,"stream":true,"messages":[{"role":"user","content":"hi"}]}"#;
    let headers = [("content-type", "application/json"), ("user-agent", "x")];
    let req = Request {
        method: "POST",
        scheme: "https",
        host: "ai.example.internal",
        path: "/v1/chat/completions",
        query: "",
        remote_ip: "127.0.0.1",
        headers: &headers,
        client_cert_der: Some(&der),
        body,
        body_size: body.len() as u64,
    };
    let n: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(20000);
    let mut allowed = 0;
    for _ in 0..n {
        allowed += usize::from(e.decide(&req).allowed);
    }
    println!("{allowed}/{n} allowed");
}
