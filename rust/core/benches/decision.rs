//! One decision with warm caches on the example policy (examples/policy/policy.toml).
//! The limits' rates are raised so every iteration takes the full allow path
//! (rules, then both token buckets) instead of settling into 429s.

use std::path::PathBuf;

use criterion::{criterion_group, criterion_main, Criterion};
use zt_policy_core::{Ending, Engine, EngineClock, Reason, Request};

fn example(path: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../examples/policy")
        .join(path)
}

fn der(name: &str) -> Vec<u8> {
    use base64::Engine as _;
    let pem = std::fs::read_to_string(example(&format!("certs/{name}.pem"))).unwrap();
    let b64: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
    base64::engine::general_purpose::STANDARD
        .decode(b64)
        .unwrap()
}

/// One request's whole cost in the engine: the decision, and ending its lease (the
/// token budget settles, the in-flight slot comes back) as the module does when the
/// response is done. Returns the decision's reason.
fn decide(e: &Engine, req: &Request<'_>) -> Reason {
    let d = e.decide(req);
    if let Some(lease) = d.lease {
        e.settle(lease, Ending::Keep);
    }
    d.reason
}

fn engine() -> Engine {
    let mut policy = std::fs::read_to_string(example("policy.toml")).unwrap();
    for (from, to) in [
        ("rate = \"120/m\"", "rate = \"1000000/s\""),
        ("burst = 20\n", "burst = 100000000\n"),
        ("rate = \"500000/h\"", "rate = \"1000000000/s\""),
        ("burst = 131072", "burst = 100000000"),
        ("max = 4\n", "max = 1000000\n"),
        ("max_body = \"256KiB\"", "max_body = \"2MiB\""),
        // The same expression, but a 1 MiB prompt must not run the bucket dry.
        (
            "cost = 'llm.max_output_tokens + llm.estimated_prompt_tokens'",
            "cost = 'llm.max_output_tokens + llm.estimated_prompt_tokens / 1000000'",
        ),
    ] {
        assert!(
            policy.contains(from),
            "the example policy no longer has {from}"
        );
        policy = policy.replace(from, to);
    }
    let e = Engine::from_toml(&policy, "policy.toml", EngineClock::system()).unwrap();
    e.set_jwks(&std::fs::read(example("idp/jwks.json")).unwrap())
        .unwrap();
    e
}

/// A chat request of about `size` bytes: a system prompt, then user and assistant turns
/// of prose (with some non-ASCII and escapes) until the size is reached, as long RAG
/// and agent prompts are.
fn chat_body(size: usize) -> Vec<u8> {
    let prose = "Zero trust means every hop is verified: the edge checks the device certificate, \
                 the token's signature and audience, and the request itself — “quotes”, naïve café, \
                 tabs\tand \"escapes\" included — before vLLM sees a byte. ";
    let mut messages =
        vec![r#"{"role":"system","content":"You are a careful assistant."}"#.to_owned()];
    let mut len = 200;
    let mut turn = 0;
    while len < size {
        let role = if turn % 2 == 0 { "user" } else { "assistant" };
        let n = (size - len).min(8192);
        let content: String = prose.chars().cycle().take(n).collect();
        let m = format!(
            r#"{{"role":"{role}","content":{}}}"#,
            serde_json::to_string(&content).unwrap()
        );
        len += m.len() + 1;
        messages.push(m);
        turn += 1;
    }
    format!(
        r#"{{"model":"llama-3.1-8b-instruct","max_tokens":256,"stream":true,"temperature":0.2,"messages":[{}]}}"#,
        messages.join(",")
    )
    .into_bytes()
}

const BODY: &[u8] = br#"{"model":"llama-3.1-8b-instruct","max_tokens":256,"stream":true,"temperature":0.2,"messages":[{"role":"system","content":"You are a helpful assistant."},{"role":"user","content":"Summarise the zero-trust reference architecture in three sentences."}]}"#;

fn bench(c: &mut Criterion) {
    let e = engine();
    let alice = der("alice");
    let carol = der("carol");
    let token = std::fs::read_to_string(example("idp/carol.jwt")).unwrap();
    let auth = format!("Bearer {}", token.trim());
    let json_headers = [
        ("content-type", "application/json"),
        ("user-agent", "OpenAI/Python 1.99.0"),
        ("accept", "application/json"),
        ("host", "ai.example.internal"),
    ];
    let token_headers = [
        ("content-type", "application/json"),
        ("user-agent", "OpenAI/Python 1.99.0"),
        ("authorization", auth.as_str()),
    ];
    let chat = |cert: &'static [u8], headers: &'static [(&'static str, &'static str)]| Request {
        method: "POST",
        scheme: "https",
        host: "ai.example.internal",
        path: "/v1/chat/completions",
        query: "",
        remote_ip: "127.0.0.1",
        headers,
        client_cert_der: Some(cert),
        body: BODY,
        body_size: BODY.len() as u64,
    };
    // Leak the fixtures so requests can borrow them for 'static.
    let alice: &'static [u8] = Box::leak(alice.into_boxed_slice());
    let carol: &'static [u8] = Box::leak(carol.into_boxed_slice());
    let json_headers: &'static [(&str, &str)] = Box::leak(Box::new(json_headers));
    let token_headers: &'static [(&str, &str)] = Box::leak(Box::new(
        token_headers.map(|(k, v)| (k, &*Box::leak(v.to_owned().into_boxed_str()))),
    ));

    let cert_chat = chat(alice, json_headers);
    let token_chat = chat(carol, token_headers);
    let models = Request {
        method: "GET",
        path: "/v1/models",
        body: b"",
        body_size: 0,
        ..cert_chat.clone()
    };
    let metrics = Request {
        path: "/metrics",
        ..models.clone()
    };

    // The numbers mean something only if each request takes the path its name says.
    assert_eq!(decide(&e, &cert_chat), Reason::Allowed);
    assert_eq!(decide(&e, &token_chat), Reason::Allowed);
    let d = e.decide(&token_chat);
    assert_eq!(d.identity.as_deref(), Some("carol@example.com"));
    e.settle(d.lease.expect("the chat holds a lease"), Ending::Keep);
    assert_eq!(decide(&e, &models), Reason::Allowed);
    assert_eq!(decide(&e, &metrics), Reason::NoAllowRule);

    let mut g = c.benchmark_group("decide");
    g.bench_function("chat_cert_json_body", |b| {
        b.iter(|| decide(&e, std::hint::black_box(&cert_chat)))
    });
    g.bench_function("chat_cert_token_json_body", |b| {
        b.iter(|| decide(&e, std::hint::black_box(&token_chat)))
    });
    // Realistic sizes: long prompts are the normal case (RAG, agents, long contexts).
    for (name, size) in [("1KiB", 1 << 10), ("64KiB", 64 << 10), ("1MiB", 1 << 20)] {
        let body: &'static [u8] = Box::leak(chat_body(size).into_boxed_slice());
        let req = Request {
            body,
            body_size: body.len() as u64,
            ..cert_chat.clone()
        };
        assert_eq!(decide(&e, &req), Reason::Allowed, "{name}");
        g.throughput(criterion::Throughput::Bytes(body.len() as u64));
        g.bench_function(format!("chat_body_{name}"), |b| {
            b.iter(|| decide(&e, std::hint::black_box(&req)))
        });
    }
    g.throughput(criterion::Throughput::Elements(1));
    g.bench_function("models_cert_no_body", |b| {
        b.iter(|| decide(&e, std::hint::black_box(&models)))
    });
    g.bench_function("metrics_default_deny", |b| {
        b.iter(|| decide(&e, std::hint::black_box(&metrics)))
    });

    // The cold path: what a certificate or a token costs the first time it is seen.
    g.bench_function("cold_certificate", |b| {
        b.iter(|| {
            zt_policy_core::CertEntry::new(
                zt_policy_core::parse_der(std::hint::black_box(alice)).unwrap(),
            )
        })
    });
    let verifier = zt_policy_core::Verifier::new(zt_policy_core::TokenSettings {
        issuer: "https://idp.example.internal".into(),
        audiences: vec!["local-ai".into()],
        leeway_secs: 30,
        max_bytes: 8192,
        cache_size: 1,
        max_claims_depth: 32,
    });
    verifier
        .set_jwks(&std::fs::read(example("idp/jwks.json")).unwrap())
        .unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    // Two valid tokens alternating through a cache of one entry: every verify misses.
    let key = jsonwebtoken::EncodingKey::from_rsa_pem(
        &std::fs::read(example("idp/signing-key.pem")).unwrap(),
    )
    .unwrap();
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256);
    header.kid = Some("example-1".into());
    let mint = |sub: &str| {
        let claims = serde_json::json!({"iss": "https://idp.example.internal", "aud": "local-ai",
            "sub": sub, "exp": now + 3600, "groups": ["ml-users"]});
        jsonwebtoken::encode(&header, &claims, &key).unwrap()
    };
    let pair = [mint("cold-a"), mint("cold-b")];
    let mut i = 0usize;
    g.bench_function("cold_token_rs256", |b| {
        b.iter(|| {
            i += 1;
            verifier
                .verify(std::hint::black_box(&pair[i % 2]), now)
                .unwrap()
        })
    });
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(std::time::Duration::from_secs(1))
        .measurement_time(std::time::Duration::from_secs(3));
    targets = bench
}
criterion_main!(benches);
