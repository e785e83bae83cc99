//! Every number a policy can set is bounded: loading never panics, whatever the value,
//! and a value out of range is a problem naming its line. A policy that loads decides
//! requests through its limits without panicking either (the buckets keep time in u64
//! nanoseconds, so a rate × burst that does not fit must be refused at load).

mod common;
use std::time::Duration;

use common::*;
use proptest::prelude::*;
use zt_policy_core::{load_policy, Engine, EngineClock};

/// Integers a user might write: edges of every type and random ones.
fn integer() -> impl Strategy<Value = i64> {
    prop_oneof![
        Just(0i64),
        Just(1),
        Just(-1),
        Just(i64::MAX),
        Just(i64::MIN),
        Just(u32::MAX as i64),
        Just(u32::MAX as i64 + 1),
        Just(1_000_000_000),
        Just(1_000_000_001),
        0i64..1000,
        any::<i64>(),
    ]
}

fn digits() -> impl Strategy<Value = String> {
    prop_oneof![
        integer().prop_map(|n| n.unsigned_abs().to_string()),
        "[0-9]{1,30}",
        Just("18446744073709551616".to_owned()),
    ]
}

/// A rate as text: a count, a slash, a unit or a count of units.
fn rate() -> impl Strategy<Value = String> {
    let unit = prop_oneof![
        Just("s"),
        Just("m"),
        Just("h"),
        Just("d"),
        Just("sec"),
        Just("x")
    ];
    (digits(), prop::option::of(digits()), unit).prop_map(|(count, n, unit)| match n {
        Some(n) => format!("{count}/{n}{unit}"),
        None => format!("{count}/{unit}"),
    })
}

/// A size or a duration: a TOML integer or text with a unit.
fn amount(units: &'static [&'static str]) -> impl Strategy<Value = String> {
    prop_oneof![
        integer().prop_map(|n| n.to_string()),
        (digits(), prop::sample::select(units)).prop_map(|(n, u)| format!("\"{n}{u}\"")),
    ]
}

#[derive(Debug, Clone)]
struct Numbers {
    max_body: String,
    max_json_depth: i64,
    deny_status: i64,
    cert_cache: i64,
    leeway: String,
    token_max: String,
    token_cache: i64,
    status: i64,
    rate: String,
    burst: Option<i64>,
    max_keys: i64,
}

/// Mostly a valid value, sometimes any: so some policies load and get decided on,
/// and every field is out of range in some.
fn or_valid<T: Clone + std::fmt::Debug + 'static>(
    valid: T,
    any: impl Strategy<Value = T> + 'static,
) -> BoxedStrategy<T> {
    prop_oneof![3 => Just(valid), 1 => any].boxed()
}

fn numbers() -> impl Strategy<Value = Numbers> {
    let sizes = &["B", "KiB", "MiB", "GiB", "GB", "kB"];
    (
        (
            or_valid("\"1MiB\"".to_owned(), amount(sizes)),
            or_valid(32, integer()),
            or_valid(403, integer()),
            or_valid(100, integer()),
            or_valid("30".to_owned(), amount(&["s", "m", "h", "d"])),
            or_valid("\"8KiB\"".to_owned(), amount(&["B", "KiB", "MiB"])),
        ),
        (
            or_valid(100, integer()),
            or_valid(429, integer()),
            or_valid("10/s".to_owned(), rate()),
            or_valid(Some(20), prop::option::of(integer())),
            or_valid(1000, integer()),
        ),
    )
        .prop_map(
            |(
                (max_body, max_json_depth, deny_status, cert_cache, leeway, token_max),
                (token_cache, status, rate, burst, max_keys),
            )| Numbers {
                max_body,
                max_json_depth,
                deny_status,
                cert_cache,
                leeway,
                token_max,
                token_cache,
                status,
                rate,
                burst,
                max_keys,
            },
        )
}

fn policy(n: &Numbers, with_token: bool) -> String {
    let token = if with_token {
        format!(
            "[token]\nissuer = \"https://idp\"\nleeway = {}\nmax_size = {}\ncache_size = {}\n",
            n.leeway, n.token_max, n.token_cache
        )
    } else {
        String::new()
    };
    let burst = n
        .burst
        .map(|b| format!("burst = {b}\n"))
        .unwrap_or_default();
    format!(
        r#"[settings]
require_identity = false
max_body = {}
max_json_depth = {}
deny_status = {}
[certificate]
cache_size = {}
{token}[[rule]]
name = "all"
effect = "allow"
when = 'true'
[[rule]]
name = "no"
effect = "deny"
status = {}
when = 'request.path == "/never"'
[[limit]]
name = "l"
key = 'request.path'
rate = "{}"
{burst}cost = 'request.size'
max_keys = {}
"#,
        n.max_body, n.max_json_depth, n.deny_status, n.cert_cache, n.status, n.rate, n.max_keys
    )
}

/// Loads, and where that works, decides requests whose cost runs up to the burst and
/// beyond, at the start of time and a year on.
fn load_and_decide(text: &str) -> Result<(), TestCaseError> {
    match load_policy(text, "p.toml") {
        Err(e) => {
            for p in &e.problems {
                prop_assert!(p.line.is_some(), "a problem without a line: {p}\n{text}");
            }
        }
        Ok(_) => {
            let engine = Engine::from_toml(text, "p.toml", EngineClock::manual(T0))
                .map_err(|e| TestCaseError::fail(e.to_string()))?;
            for size in [0u64, 1, 1000, u32::MAX as u64, u64::MAX] {
                let mut r = Req::new("POST", "/v1/x");
                r.body_size = Some(size);
                let _ = r.decide(&engine);
            }
            engine.clock().advance(Duration::from_secs(365 * 86400));
            let _ = Req::new("POST", "/v1/x").decide(&engine);
            engine.sweep_limits();
        }
    }
    Ok(())
}

#[test]
fn no_number_makes_loading_or_deciding_panic() {
    use proptest::test_runner::{Config, TestRunner};
    let (loaded, refused) = (std::cell::Cell::new(0usize), std::cell::Cell::new(0usize));
    let mut runner = TestRunner::new(Config {
        cases: 4000,
        failure_persistence: None,
        ..Config::default()
    });
    runner
        .run(&(numbers(), any::<bool>()), |(n, with_token)| {
            let text = policy(&n, with_token);
            match load_policy(&text, "p.toml") {
                Ok(_) => loaded.set(loaded.get() + 1),
                Err(_) => refused.set(refused.get() + 1),
            }
            load_and_decide(&text)
        })
        .unwrap();
    // Both sides are exercised: policies that load and get decided on, and refusals.
    assert!(
        loaded.get() > 100 && refused.get() > 1000,
        "{} loaded, {} refused",
        loaded.get(),
        refused.get()
    );
}

#[test]
fn a_rate_the_buckets_cannot_hold_is_refused_with_its_line() {
    let mut n = Numbers {
        max_body: "1024".into(),
        max_json_depth: 32,
        deny_status: 403,
        cert_cache: 10,
        leeway: "30".into(),
        token_max: "8192".into(),
        token_cache: 10,
        status: 403,
        rate: "1/99999999999d".into(),
        burst: Some(1_000_000_000),
        max_keys: 10,
    };
    let e = load_policy(&policy(&n, false), "p.toml").unwrap_err();
    assert_eq!(e.problems.len(), 1, "{e}");
    assert_eq!(e.problems[0].line, Some(20), "{e}");
    assert!(e.to_string().contains("longer than 365 days"), "{e}");

    n.rate = "1/365d".into();
    let e = load_policy(&policy(&n, false), "p.toml").unwrap_err();
    assert_eq!(e.problems[0].line, Some(21), "the burst's line: {e}");
    assert!(e.to_string().contains("longer than 10 years"), "{e}");

    n.burst = Some(10);
    load_and_decide(&policy(&n, false)).unwrap();

    // A duration whose seconds overflow u64.
    n.rate = "1/999999999999999999d".into();
    assert!(load_policy(&policy(&n, false), "p.toml").is_err());
}

#[test]
fn each_bound_names_its_field_and_line() {
    let base = Numbers {
        max_body: "1024".into(),
        max_json_depth: 0,
        deny_status: 99,
        cert_cache: -1,
        leeway: "\"7d\"".into(),
        token_max: "0".into(),
        token_cache: 2_000_000,
        status: 700,
        rate: "10/s".into(),
        burst: Some(0),
        max_keys: i64::MAX,
    };
    let e = load_policy(&policy(&base, true), "p.toml").unwrap_err();
    let text = e.to_string();
    for want in [
        "p.toml:4: settings.max_json_depth = 0 is outside 1..=128",
        "p.toml:5: settings.deny_status = 99 is outside 400..=599",
        "p.toml:7: certificate.cache_size = -1 is outside 1..=1000000",
        "p.toml:10: token.leeway: 604800s is outside 0..=600s",
        "p.toml:11: token.max_size: must be larger than 0",
        "p.toml:12: token.cache_size = 2000000 is outside 1..=1000000",
        "p.toml:20: rule \"no\": status = 700 is outside 400..=599",
        "p.toml:26: limit \"l\": burst = 0 is outside 1..=1000000000",
        "p.toml:28: limit \"l\": max_keys = 9223372036854775807 is outside 1..=10000000",
    ] {
        assert!(text.contains(want), "want {want:?} in:\n{text}");
    }
    assert_eq!(e.problems.len(), 9, "{text}");
}
