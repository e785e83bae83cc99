//! Per-identity token buckets (governor's GCRA), one keyed limiter per `[[limit]]`.
//! Memory stays bounded: stale keys are swept with `retain_recent`, and a limit holds
//! at most `max_keys` live keys; a new key past that is refused (fail closed) rather
//! than letting a flood of identities grow the table.

use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use dashmap::DashMap;
use governor::clock::Clock as _;
use governor::middleware::{NoOpMiddleware, StateInformationMiddleware, StateSnapshot};
use governor::nanos::Nanos;
use governor::state::keyed::ShrinkableKeyedStateStore;
use governor::state::{InMemoryState, StateStore};
use governor::{Quota, RateLimiter};

use crate::clock::EngineClock;
use crate::policy::LimitConfig;

/// How many checks pass between two sweeps of stale keys.
const SWEEP_EVERY: u64 = 4096;

/// Hashed with foldhash, as the token and certificate caches are, not the default
/// SipHash: its seed is random per table, and a table never holds more than the
/// limit's `max_keys` live keys, whatever a `key` expression makes of a request.
type Map = DashMap<String, InMemoryState, foldhash::fast::RandomState>;

/// The state store: governor's own DashMap store behind an `Arc`, so the limit can
/// also ask whether a key is already live.
#[derive(Clone)]
struct KeyStore(Arc<Map>);

impl StateStore for KeyStore {
    type Key = String;

    fn measure_and_replace<T, F, E>(&self, key: &String, f: F) -> Result<T, E>
    where
        F: Fn(Option<Nanos>) -> Result<(T, Nanos), E>,
    {
        <Map as StateStore>::measure_and_replace(&self.0, key, f)
    }
}

impl ShrinkableKeyedStateStore<String> for KeyStore {
    fn retain_recent(&self, drop_below: Nanos) {
        <Map as ShrinkableKeyedStateStore<String>>::retain_recent(&self.0, drop_below)
    }
    fn shrink_to_fit(&self) {
        self.0.shrink_to_fit()
    }
    fn len(&self) -> usize {
        self.0.len()
    }
    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

type Limiter = RateLimiter<String, KeyStore, EngineClock, StateInformationMiddleware>;

/// The live buckets of one limit. Shared between engines whose limit definitions are
/// equal, so a config reload keeps them.
pub struct LimitState {
    limiter: Limiter,
    store: KeyStore,
    checks: AtomicU64,
    last_full_sweep: std::sync::Mutex<Option<Instant>>,
    fingerprint: String,
    policy_header: String,
}

/// `RateLimit-Policy` never changes for a limit, so it is formatted once.
fn policy_header(config: &LimitConfig) -> String {
    format!(
        "\"{}\";q={};w={}",
        config.name,
        config.burst,
        window_secs(config)
    )
}

/// The values of the IETF `RateLimit` and `RateLimit-Policy` header fields
/// (draft-ietf-httpapi-ratelimit-headers), ready to send.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct RateLimitHeaders {
    pub ratelimit: String,
    pub ratelimit_policy: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Allowed { remaining: u32, reset_secs: u64 },
    Limited { retry_after_secs: u64 },
    CostExceedsBurst { cost: u64, burst: u32 },
    TableFull { live_keys: usize },
}

impl LimitState {
    pub fn new(config: &LimitConfig, clock: EngineClock) -> Self {
        let quota = Quota::with_period(config.rate.period())
            .expect("rate period is checked to be non-zero at load")
            .allow_burst(
                NonZeroU32::new(config.burst).expect("burst is checked to be >= 1 at load"),
            );
        let store = KeyStore(Arc::new(Map::default()));
        let limiter = RateLimiter::<String, KeyStore, EngineClock, NoOpMiddleware<Instant>>::new(
            quota,
            store.clone(),
            clock,
        )
        .with_middleware::<StateInformationMiddleware>();
        LimitState {
            limiter,
            store,
            checks: AtomicU64::new(0),
            last_full_sweep: std::sync::Mutex::new(None),
            fingerprint: config.fingerprint.clone(),
            policy_header: policy_header(config),
        }
    }

    pub fn fingerprint(&self) -> &str {
        &self.fingerprint
    }

    /// Live keys right now.
    pub fn live_keys(&self) -> usize {
        self.store.0.len()
    }

    /// Drops keys whose buckets are full again (indistinguishable from new ones).
    pub fn sweep(&self) {
        self.limiter.retain_recent();
        self.limiter.shrink_to_fit();
    }

    /// Takes `cost` cells from `key`'s bucket.
    // `&String`, not `&str`: governor's keyed store looks keys up by `&K`, and the
    // caller usually holds the identity as a String already, so nothing is copied.
    #[allow(clippy::ptr_arg)]
    pub fn check(&self, config: &LimitConfig, key: &String, cost: u64) -> Outcome {
        if cost > u64::from(config.burst) {
            return Outcome::CostExceedsBurst {
                cost,
                burst: config.burst,
            };
        }
        if cost == 0 {
            // Nothing to take: the bucket is not touched and no key is created.
            return Outcome::Allowed {
                remaining: config.burst,
                reset_secs: 0,
            };
        }
        let n = u32::try_from(cost)
            .ok()
            .and_then(NonZeroU32::new)
            .expect("0 < cost <= burst <= u32::MAX");
        if self.checks.fetch_add(1, Ordering::Relaxed) % SWEEP_EVERY == SWEEP_EVERY - 1 {
            // Only drop stale keys here: shrinking the table every few thousand requests
            // would rehash it just to grow it again. `sweep` (a full table, or the
            // caller) also gives the memory back.
            self.limiter.retain_recent();
        }
        if self.store.0.len() >= config.max_keys && !self.store.0.contains_key(key) {
            self.sweep_when_full();
            let live = self.store.0.len();
            if live >= config.max_keys {
                return Outcome::TableFull { live_keys: live };
            }
        }
        let result = self.limiter.check_key_n(key, n);
        match result {
            Ok(Ok(snapshot)) => Outcome::Allowed {
                remaining: snapshot.remaining_burst_capacity(),
                reset_secs: reset_secs(&snapshot, config),
            },
            Ok(Err(not_until)) => {
                let wait = not_until.wait_time_from(self.limiter.clock().now());
                Outcome::Limited {
                    retry_after_secs: ceil_secs(wait).max(1),
                }
            }
            Err(_) => Outcome::CostExceedsBurst {
                cost,
                burst: config.burst,
            },
        }
    }

    /// A full table is swept at most once a second, so a flood of new keys cannot make
    /// every request pay for a scan of the whole table.
    fn sweep_when_full(&self) {
        let now = self.limiter.clock().now();
        let mut last = self
            .last_full_sweep
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if last.is_none_or(|t| now.saturating_duration_since(t) >= Duration::from_secs(1)) {
            *last = Some(now);
            drop(last);
            self.sweep();
        }
    }
}

fn reset_secs(snapshot: &StateSnapshot, config: &LimitConfig) -> u64 {
    let used = config
        .burst
        .saturating_sub(snapshot.remaining_burst_capacity());
    ceil_secs(config.rate.period() * used)
}

fn ceil_secs(d: Duration) -> u64 {
    d.as_secs() + u64::from(d.subsec_nanos() > 0)
}

/// Seconds for an empty bucket to fill again: the window of `RateLimit-Policy`.
pub fn window_secs(config: &LimitConfig) -> u64 {
    ceil_secs(config.rate.period() * config.burst).max(1)
}

impl LimitState {
    pub fn headers(
        &self,
        config: &LimitConfig,
        remaining: u32,
        reset_secs: u64,
    ) -> RateLimitHeaders {
        // `"name";r=…;t=…`, written without the formatting machinery: this runs on
        // every allowed request, and the formatter's code is pages of its own.
        let mut ratelimit = String::with_capacity(config.name.len() + 48);
        ratelimit.push('"');
        ratelimit.push_str(&config.name);
        ratelimit.push_str("\";r=");
        push_decimal(&mut ratelimit, u64::from(remaining));
        ratelimit.push_str(";t=");
        push_decimal(&mut ratelimit, reset_secs);
        RateLimitHeaders {
            ratelimit,
            ratelimit_policy: self.policy_header.clone(),
        }
    }
}

fn push_decimal(s: &mut String, mut n: u64) {
    let mut digits = [0u8; 20];
    let mut at = digits.len();
    loop {
        at -= 1;
        digits[at] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    for &d in &digits[at..] {
        s.push(char::from(d));
    }
}

#[cfg(test)]
mod tests {
    use super::push_decimal;

    #[test]
    fn decimal_like_display() {
        for n in [
            0,
            7,
            9,
            10,
            99,
            100,
            4096,
            1_000_000_007,
            u64::from(u32::MAX),
            u64::MAX,
        ] {
            let mut s = String::from("x=");
            push_decimal(&mut s, n);
            assert_eq!(s, format!("x={n}"));
        }
    }
}
