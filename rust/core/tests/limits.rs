//! Per-identity token buckets: 429 with retry-after and RateLimit headers, costs,
//! `when`, bounded memory, and buckets that survive a reload. Tests move the clock.

mod common;
use std::time::Duration;

use common::*;
use zt_policy_core::{Engine, EngineClock, Reason};

fn limited(limits: &str) -> String {
    format!(
        r#"
[settings]
require_identity = false
identity = 'request.headers["x-user"]'
[[rule]]
name = "allow-all"
effect = "allow"
when = 'true'
{limits}"#
    )
}

fn as_user(user: &str) -> Req {
    Req::new("POST", "/v1/chat/completions").header("X-User", user)
}

#[test]
fn burst_then_429_with_retry_after_and_headers_then_refill() {
    let e = engine(&limited(
        r#"
[[limit]]
name = "requests"
rate = "6/m"
burst = 3
"#,
    ));
    for i in 0..3 {
        let d = as_user("alice").decide(&e);
        assert!(d.allowed, "request {i}: {d:?}");
        let l = d.limit.unwrap();
        assert_eq!(l.remaining, 2 - i);
        assert_eq!(l.headers.ratelimit_policy, "\"requests\";q=3;w=30");
    }
    let d = as_user("alice").decide(&e);
    assert_eq!((d.status, d.reason), (429, Reason::RateLimited));
    let l = d.limit.unwrap();
    assert_eq!(l.retry_after_secs, Some(10), "one cell per 10s");
    assert_eq!(l.headers.ratelimit, "\"requests\";r=0;t=10");
    // Another identity has its own bucket.
    assert!(as_user("bob").decide(&e).allowed);
    e.clock().advance(Duration::from_secs(9));
    assert_eq!(as_user("alice").decide(&e).status, 429);
    e.clock().advance(Duration::from_secs(1));
    assert!(as_user("alice").decide(&e).allowed);
}

#[test]
fn cost_from_body_max_tokens_and_cost_over_burst_is_a_clear_deny() {
    let e = engine(&limited(
        r#"
[[limit]]
name = "llm-tokens"
rate = "1000/m"
burst = 1000
cost = 'has(body.max_tokens) ? body.max_tokens : 100'
"#,
    ));
    let d = as_user("alice").json(r#"{"max_tokens": 600}"#).decide(&e);
    assert!(d.allowed);
    assert_eq!(d.limit.as_ref().unwrap().remaining, 400);
    let d = as_user("alice").json(r#"{"max_tokens": 600}"#).decide(&e);
    assert_eq!(d.status, 429);
    assert_eq!(
        d.limit.unwrap().retry_after_secs,
        Some(12),
        "200 more tokens at 1000/m"
    );
    let d = as_user("alice").json(r#"{}"#).decide(&e);
    assert!(d.allowed, "default cost 100 fits in the 400 left");
    let d = as_user("bob").json(r#"{"max_tokens": 5000}"#).decide(&e);
    assert_eq!((d.status, d.reason), (403, Reason::CostExceedsBurst));
    assert!(
        d.message.contains("costs 5000") && d.message.contains("(1000)"),
        "{}",
        d.message
    );
    let d = as_user("bob").json(r#"{"max_tokens": "many"}"#).decide(&e);
    assert_eq!((d.status, d.reason), (403, Reason::LimitError));
    assert!(d.message.contains("cost"), "{}", d.message);
}

#[test]
fn when_selects_the_requests_a_limit_counts() {
    let e = engine(&limited(
        r#"
[[limit]]
name = "chat-only"
rate = "1/h"
burst = 1
when = 'request.path == "/v1/chat/completions"'
"#,
    ));
    assert!(as_user("a").decide(&e).allowed);
    assert_eq!(as_user("a").decide(&e).status, 429);
    let mut models = as_user("a");
    models.path = "/v1/models".into();
    for _ in 0..5 {
        assert!(models.decide(&e).allowed);
    }
}

#[test]
fn empty_key_fails_closed() {
    let e = engine(&limited(
        r#"
[[limit]]
name = "requests"
rate = "10/s"
"#,
    ));
    let d = Req::new("GET", "/").header("X-User", "").decide(&e);
    assert_eq!((d.status, d.reason), (403, Reason::LimitError));
}

#[test]
fn denied_requests_take_nothing_from_the_bucket() {
    let e = engine(&limited(
        r#"
[[rule]]
name = "no-delete"
effect = "deny"
when = 'request.method == "DELETE"'
[[limit]]
name = "requests"
rate = "1/h"
burst = 1
"#,
    ));
    let mut del = as_user("a");
    del.method = "DELETE".into();
    for _ in 0..3 {
        assert_eq!(del.decide(&e).status, 403);
    }
    assert!(as_user("a").decide(&e).allowed);
}

#[test]
fn two_hundred_thousand_identities_stay_bounded() {
    let e = engine(&limited(
        r#"
[[limit]]
name = "requests"
rate = "10/s"
burst = 10
max_keys = 20000
"#,
    ));
    let mut peak = 0;
    for i in 0..200_000u32 {
        let user = format!("user-{i}");
        let d = as_user(&user).decide(&e);
        assert!(d.allowed, "identity {i}: {d:?}");
        if i % 5_000 == 4_999 {
            // Identities come and go: those seen a second ago are full buckets again.
            e.clock().advance(Duration::from_secs(2));
        }
        peak = peak.max(e.limit_keys()[0].1);
    }
    assert!(peak <= 20_000, "live keys peaked at {peak}");
    e.clock().advance(Duration::from_secs(2));
    e.sweep_limits();
    assert_eq!(
        e.limit_keys()[0].1,
        0,
        "every bucket is full again and swept"
    );
}

#[test]
fn a_full_table_refuses_new_identities_not_known_ones() {
    let e = engine(&limited(
        r#"
[[limit]]
name = "requests"
rate = "1/m"
burst = 5
max_keys = 100
"#,
    ));
    for i in 0..100 {
        assert!(as_user(&format!("u{i}")).decide(&e).allowed);
    }
    let d = as_user("newcomer").decide(&e);
    assert_eq!((d.status, d.reason), (429, Reason::LimitTableFull));
    assert_eq!(d.limit.unwrap().retry_after_secs, Some(1));
    assert!(
        as_user("u7").decide(&e).allowed,
        "a known identity keeps its bucket"
    );
    // Once the old buckets are full again (a key is kept until its bucket is full,
    // its theoretical arrival time), the sweep makes room.
    e.clock().advance(Duration::from_secs(121));
    assert!(as_user("newcomer").decide(&e).allowed);
}

#[test]
fn reload_keeps_buckets_of_unchanged_limits_only() {
    let clock = EngineClock::manual(T0);
    let v1 = limited(
        r#"
[[limit]]
name = "requests"
rate = "1/h"
burst = 1
[[limit]]
name = "other"
rate = "1/h"
burst = 1
when = 'request.method == "GET"'
"#,
    );
    let old = Engine::from_toml(&v1, "v1.toml", clock.clone()).unwrap();
    assert!(as_user("a").decide(&old).allowed);
    assert_eq!(as_user("a").decide(&old).status, 429);
    let mut same = Engine::from_toml(&v1, "v1.toml", clock.clone()).unwrap();
    assert_eq!(same.inherit_state(&old), 2);
    assert_eq!(
        as_user("a").decide(&same).status,
        429,
        "bucket survived the reload"
    );
    let v2 = v1.replace("burst = 1\n[[limit]]", "burst = 2\n[[limit]]");
    let mut changed = Engine::from_toml(&v2, "v2.toml", clock).unwrap();
    assert_eq!(
        changed.inherit_state(&old),
        1,
        "only the unchanged limit is kept"
    );
    assert!(
        as_user("a").decide(&changed).allowed,
        "changed limit starts fresh"
    );
}
