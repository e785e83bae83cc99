//! Budgets that settle from usage and in-flight caps: a reservation at admission, a
//! settlement when the response ends (refund, excess, refund on refusal, kept), slots
//! given back exactly once, nothing held by a request a later step refused, state kept
//! across a reload, and a model of the bucket under generated sequences.

mod common;
use std::time::Duration;

use common::*;
use proptest::prelude::*;
use zt_policy_core::{Ending, Engine, EngineClock, Reason, SettleRule, Usage};

const BUDGET: &str = r#"
[settings]
require_identity = false
identity = 'request.headers["x-user"]'
[[rule]]
name = "allow-all"
effect = "allow"
when = 'true'
[[limit]]
name = "tokens"
rate = "1000/h"
burst = 1000
cost = 'llm.max_output_tokens + llm.estimated_prompt_tokens'
settle = "usage"
"#;

fn chat(user: &str, max_tokens: u64) -> Req {
    // 16 bytes of prompt text ("user" and the content): an estimate of 4 tokens.
    Req::new("POST", "/v1/chat/completions")
        .header("X-User", user)
        .json(&format!(
            r#"{{"model":"m","max_tokens":{max_tokens},"messages":[{{"role":"user","content":"0123456789ab"}}]}}"#
        ))
}

fn usage(prompt: u64, completion: u64) -> Ending {
    Ending::Usage(Usage {
        prompt_tokens: Some(prompt),
        completion_tokens: Some(completion),
        total_tokens: Some(prompt + completion),
    })
}

fn remaining(e: &Engine, user: &str) -> u32 {
    e.limit_remaining("tokens", user).unwrap()
}

#[test]
fn reserve_then_refund_what_was_not_used() {
    let e = engine(BUDGET);
    let d = chat("alice", 96).decide(&e);
    assert!(d.allowed, "{d:?}");
    assert_eq!(d.reserved, vec![("tokens", 100)]);
    assert_eq!(remaining(&e, "alice"), 900);
    let lease = d.lease.expect("a settled limit gives a lease");
    let s = e.settle(lease, usage(4, 26)).unwrap();
    assert_eq!(s.len(), 1);
    assert_eq!(
        (
            s[0].rule,
            s[0].reserved,
            s[0].used,
            s[0].charged,
            s[0].unbilled
        ),
        (SettleRule::Usage, 100, Some(30), 30, 0)
    );
    assert_eq!(
        remaining(&e, "alice"),
        970,
        "the bucket moved by exactly the usage"
    );
    assert!(e.settle(lease, usage(1, 1)).is_none(), "a lease ends once");
    assert_eq!(remaining(&e, "alice"), 970);
    assert_eq!(e.open_leases(), 0);
}

#[test]
fn excess_is_charged_but_never_past_empty_and_never_refused() {
    let e = engine(BUDGET);
    let d = chat("alice", 96).decide(&e);
    let s = e.settle(d.lease.unwrap(), usage(4, 296)).unwrap();
    assert_eq!((s[0].charged, s[0].unbilled), (300, 0));
    assert_eq!(remaining(&e, "alice"), 700);
    let d = chat("alice", 596).decide(&e);
    assert!(d.allowed);
    assert_eq!(remaining(&e, "alice"), 100);
    let s = e.settle(d.lease.unwrap(), usage(4, 996)).unwrap();
    assert_eq!(
        (s[0].rule, s[0].charged, s[0].unbilled),
        (SettleRule::Usage, 700, 300),
        "only what was left is taken"
    );
    assert_eq!(remaining(&e, "alice"), 0);
    let d = chat("alice", 1).decide(&e);
    assert_eq!((d.status, d.reason), (429, Reason::RateLimited));
}

#[test]
fn refusal_refunds_everything_keep_keeps_the_reservation() {
    let e = engine(BUDGET);
    let d = chat("alice", 196).decide(&e);
    let s = e.settle(d.lease.unwrap(), Ending::Refund).unwrap();
    assert_eq!((s[0].rule, s[0].charged), (SettleRule::Refunded, 0));
    assert_eq!(remaining(&e, "alice"), 1000);
    let d = chat("alice", 196).decide(&e);
    let s = e.settle(d.lease.unwrap(), Ending::Keep).unwrap();
    assert_eq!((s[0].rule, s[0].charged), (SettleRule::Kept, 200));
    assert_eq!(remaining(&e, "alice"), 800);
    // A usage object without the count the limit settles on keeps the reservation.
    let d = chat("alice", 196).decide(&e);
    let partial = Ending::Usage(Usage {
        prompt_tokens: Some(4),
        ..Usage::default()
    });
    let s = e.settle(d.lease.unwrap(), partial).unwrap();
    assert_eq!(
        (s[0].rule, s[0].charged),
        (SettleRule::KeptUsageIncomplete, 200)
    );
    assert_eq!(remaining(&e, "alice"), 600);
}

#[test]
fn settle_on_completion_tokens_and_total_as_the_sum() {
    let e = engine(&BUDGET.replace(r#"settle = "usage""#, r#"settle = "completion_tokens""#));
    let d = chat("alice", 96).decide(&e);
    let s = e.settle(d.lease.unwrap(), usage(40, 10)).unwrap();
    assert_eq!(s[0].charged, 10);
    let e = engine(BUDGET);
    let d = chat("alice", 96).decide(&e);
    let no_total = Ending::Usage(Usage {
        prompt_tokens: Some(5),
        completion_tokens: Some(7),
        total_tokens: None,
    });
    assert_eq!(e.settle(d.lease.unwrap(), no_total).unwrap()[0].charged, 12);
}

#[test]
fn a_bad_settle_value_is_a_load_error_with_its_line() {
    let err = Engine::from_toml(
        &BUDGET.replace(r#"settle = "usage""#, r#"settle = "tokens""#),
        "p.toml",
        EngineClock::manual(0),
    )
    .err()
    .unwrap()
    .to_string();
    assert!(err.contains("p.toml:14"), "{err}");
    assert!(err.contains(r#"settle = "tokens" is not one of"#), "{err}");
}

const CAPPED: &str = r#"
[settings]
require_identity = false
identity = 'request.headers["x-user"]'
[[rule]]
name = "allow-all"
effect = "allow"
when = 'true'
[[concurrency]]
name = "streams"
max = 2
when = 'request.path.startsWith("/v1/")'
[[limit]]
name = "requests"
rate = "3/h"
"#;

#[test]
fn a_full_cap_is_a_429_and_a_slot_comes_back_when_its_lease_ends() {
    let e = engine(CAPPED);
    let a = chat("alice", 1).decide(&e);
    let b = chat("alice", 1).decide(&e);
    assert!(a.allowed && b.allowed);
    assert_eq!(e.in_flight(), vec![("streams".to_owned(), 2)]);
    let c = chat("alice", 1).decide(&e);
    assert_eq!((c.status, c.reason), (429, Reason::ConcurrencyLimit));
    assert!(c.lease.is_none());
    let l = c.limit.unwrap();
    assert_eq!(l.name, "streams");
    assert_eq!(l.retry_after_secs, Some(1));
    assert_eq!(l.headers.ratelimit, "\"streams\";r=0;t=1");
    assert_eq!(l.headers.ratelimit_policy, "\"streams\";q=2");
    // Another identity has its own slots.
    let other = chat("bob", 1).decide(&e);
    assert!(other.allowed);
    // A slot comes back with its lease, whatever the ending; a refused request spent
    // none of "requests" (3/h: a, b and bob's took three cells, alice has one left).
    let s = e.settle(a.lease.unwrap(), Ending::Keep).unwrap();
    assert!(s.is_empty(), "no settled limits here");
    let d = chat("alice", 1).decide(&e);
    assert!(d.allowed, "{d:?}");
    e.settle(d.lease.unwrap(), Ending::Keep);
    e.settle(b.lease.unwrap(), Ending::Refund);
    e.settle(other.lease.unwrap(), Ending::Keep);
    assert_eq!(e.in_flight(), vec![("streams".to_owned(), 0)]);
    assert_eq!(e.open_leases(), 0);
    // Outside the cap's `when`, no slot and no lease.
    let d = Req::new("GET", "/health")
        .header("X-User", "alice")
        .decide(&e);
    assert!(d.lease.is_none());
}

#[test]
fn a_later_refusal_gives_back_the_slot_and_the_reservation() {
    let policy = format!(
        "{CAPPED}\n[[limit]]\nname = \"tokens\"\nrate = \"1000/h\"\nburst = 1000\ncost = 'llm.max_output_tokens'\nsettle = \"usage\"\n"
    );
    let e = engine(&policy);
    for _ in 0..3 {
        let d = chat("alice", 10).decide(&e);
        e.settle(d.lease.unwrap(), Ending::Keep);
    }
    // "requests" is empty now: the 429 must not keep a slot nor the 10 tokens.
    let d = chat("alice", 10).decide(&e);
    assert_eq!((d.status, d.reason), (429, Reason::RateLimited));
    assert_eq!(e.in_flight(), vec![("streams".to_owned(), 0)]);
    assert_eq!(e.limit_remaining("tokens", "alice"), Some(970));
}

#[test]
fn a_concurrency_name_may_not_repeat_a_limit_name() {
    let err = Engine::from_toml(
        &CAPPED.replace("name = \"requests\"", "name = \"streams\""),
        "p.toml",
        EngineClock::manual(0),
    )
    .err()
    .unwrap()
    .to_string();
    assert!(err.contains("the name is used twice"), "{err}");
}

#[test]
fn reload_keeps_open_slots_and_budgets() {
    let clock = EngineClock::manual(0);
    let policy = format!(
        "{CAPPED}\n[[limit]]\nname = \"tokens\"\nrate = \"1000/h\"\nburst = 1000\ncost = 'llm.max_output_tokens'\nsettle = \"usage\"\n"
    );
    let old = Engine::from_toml(&policy, "p", clock.clone()).unwrap();
    let a = chat("alice", 100).decide(&old);
    let b = chat("alice", 100).decide(&old);
    let mut new = Engine::from_toml(&policy, "p", clock.clone()).unwrap();
    assert_eq!(new.inherit_state(&old), 3);
    assert_eq!(
        chat("alice", 1).decide(&new).reason,
        Reason::ConcurrencyLimit
    );
    // The old engine's leases settle into the shared state.
    old.settle(a.lease.unwrap(), usage(0, 10));
    assert_eq!(new.limit_remaining("tokens", "alice"), Some(890));
    let d = chat("alice", 1).decide(&new);
    assert!(d.allowed);
    new.settle(d.lease.unwrap(), Ending::Keep);
    old.settle(b.lease.unwrap(), Ending::Refund);
    assert_eq!(new.in_flight(), vec![("streams".to_owned(), 0)]);
    assert_eq!(new.limit_remaining("tokens", "alice"), Some(989));
}

#[test]
fn a_stream_without_usage_is_flagged_only_where_adding_it_is_safe() {
    let e = engine(BUDGET);
    let flag = |body: &str, path: &str| {
        let d = Req::new("POST", path)
            .header("X-User", "u")
            .json(body)
            .decide(&e);
        assert!(d.allowed, "{d:?}");
        e.settle(d.lease.unwrap(), Ending::Refund);
        d.add_stream_usage
    };
    let chat_path = "/v1/chat/completions";
    assert!(flag(
        r#"{"max_tokens":5,"messages":[],"stream":true}"#,
        chat_path
    ));
    assert!(flag(
        "{\"max_tokens\":5,\"prompt\":\"x\",\"stream\":\"yes\"}\n\t ",
        "/v1/completions"
    ));
    assert!(!flag(
        r#"{"max_tokens":5,"messages":[],"stream":false}"#,
        chat_path
    ));
    assert!(!flag(r#"{"max_tokens":5,"messages":[]}"#, chat_path));
    assert!(!flag(
        r#"{"max_tokens":5,"messages":[],"stream":true,"stream_options":{"include_usage":true}}"#,
        chat_path
    ));
    assert!(!flag(
        r#"{"max_tokens":5,"messages":[],"stream":true,"stream_options":null}"#,
        chat_path
    ));
    assert!(!flag(
        r#"{"max_tokens":5,"prompt":"x","stream":true}"#,
        "/v1/embeddings"
    ));
}

#[derive(Debug, Clone)]
enum Step {
    Admit { max_tokens: u64 },
    Settle { which: usize, ending: u8, used: u64 },
    Wait { secs: u64 },
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        (1u64..400).prop_map(|max_tokens| Step::Admit { max_tokens }),
        (0usize..8, 0u8..3, 0u64..700).prop_map(|(which, ending, used)| Step::Settle {
            which,
            ending,
            used
        }),
        (0u64..30).prop_map(|secs| Step::Wait { secs }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    /// Against a plain model in whole tokens (1000/h: one back every 3.6 s, so the
    /// model counts time in 3.6 s ticks): the bucket never leaves 0..=1000, a
    /// settlement moves it by exactly used − reserved (within full and empty), and
    /// every lease ends once.
    #[test]
    fn the_bucket_follows_the_model(steps in proptest::collection::vec(step(), 1..60)) {
        let e = engine(BUDGET);
        let mut open: Vec<(u64, u64)> = Vec::new();
        let mut level: i64 = 1000;
        for s in steps {
            match s {
                Step::Admit { max_tokens } => {
                    let d = chat("alice", max_tokens).decide(&e);
                    let cost = (max_tokens + 4) as i64;
                    prop_assert_eq!(d.allowed, cost <= level, "{:?}", d);
                    if d.allowed {
                        level -= cost;
                        open.push((d.lease.unwrap(), cost as u64));
                    }
                }
                Step::Settle { which, ending, used } if !open.is_empty() => {
                    let (lease, reserved) = open.remove(which % open.len());
                    let ending = match ending {
                        0 => Ending::Keep,
                        1 => Ending::Refund,
                        _ => usage(0, used),
                    };
                    let settled = e.settle(lease, ending).unwrap();
                    let target = match ending {
                        Ending::Keep => reserved,
                        Ending::Refund => 0,
                        Ending::Usage(_) => used,
                    } as i64;
                    level = (level + reserved as i64 - target).clamp(0, 1000);
                    if let Ending::Usage(_) = ending {
                        prop_assert_eq!(settled[0].charged + settled[0].unbilled, used);
                    }
                }
                Step::Settle { .. } => {}
                Step::Wait { secs } => {
                    // Whole ticks only, so the model stays in whole tokens.
                    e.clock().advance(Duration::from_millis(3600 * secs));
                    level = (level + secs as i64).min(1000);
                }
            }
            prop_assert_eq!(i64::from(remaining(&e, "alice")), level);
        }
        for (lease, _) in open {
            prop_assert!(e.settle(lease, Ending::Keep).is_some());
        }
        prop_assert_eq!(e.open_leases(), 0);
    }
}

#[test]
fn ratelimit_lists_the_token_budget_after_the_tightest_limit() {
    let policy = format!(
        "{CAPPED}\n[[limit]]\nname = \"tokens\"\nrate = \"1000/h\"\nburst = 1000\ncost = 'llm.max_output_tokens'\nsettle = \"usage\"\n"
    );
    let e = engine(&policy);
    let d = chat("alice", 100).decide(&e);
    let l = d.limit.unwrap();
    assert_eq!(
        l.name, "requests",
        "2 of 3 left is tighter than 900 of 1000"
    );
    assert_eq!(
        l.headers.ratelimit,
        "\"requests\";r=2;t=1200, \"tokens\";r=900;t=360"
    );
    assert_eq!(
        l.headers.ratelimit_policy,
        "\"requests\";q=3;w=3600, \"tokens\";q=1000;w=3600"
    );
    // Only the budget: reported once.
    let e = engine(BUDGET);
    let d = chat("alice", 96).decide(&e);
    assert_eq!(d.limit.unwrap().headers.ratelimit, "\"tokens\";r=900;t=360");
}
